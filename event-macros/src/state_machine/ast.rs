//! The model of a `#[derive(StateMachine)]` input, keeping the syn nodes for spans.
//!
//! Building it reports what is wrong with single attributes and variants, and keeps
//! going: whatever could be read is still in the model, so `valid.rs` can report
//! its own findings in the same run.

use syn::{Attribute, DeriveInput, Fields, Ident, Variant, Visibility};

use super::attr::{self, Options, Transition};
use crate::common::enum_variants;
use crate::ctxt::Errors;
use crate::names::snake_case;

pub(crate) struct Machine<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) vis: &'a Visibility,
    pub(crate) options: Options,
    pub(crate) transitions: Vec<Transition>,
    /// The variants, when the input is an enum.
    pub(crate) states: Option<Vec<State<'a>>>,
}

pub(crate) struct State<'a> {
    pub(crate) variant: &'a Variant,
    pub(crate) ident: &'a Ident,
    /// The snake_case name stored in the database.
    pub(crate) name: String,
    /// Every `#[initial]` on the variant.
    pub(crate) initial: Vec<&'a Attribute>,
}

impl<'a> Machine<'a> {
    pub(crate) fn from_syn(input: &'a DeriveInput, cx: &mut Errors) -> Self {
        let options = attr::options(&input.attrs, cx);
        let transitions = attr::transitions(&input.attrs, cx);
        attr::misplaced(&input.attrs, &["initial"], "the enum; put it on the initial variant", cx);

        let states = enum_variants(input, "a state machine", NOT_AN_ENUM, cx, State::from_syn);

        Machine { ident: &input.ident, vis: &input.vis, options, transitions, states }
    }

    /// The states, or none when the input is not an enum.
    pub(crate) fn states(&self) -> &[State<'a>] {
        self.states.as_deref().unwrap_or_default()
    }

    pub(crate) fn state(&self, ident: &Ident) -> Option<&State<'a>> {
        self.states().iter().find(|s| s.ident == ident)
    }
}

const NOT_AN_ENUM: &str = "#[derive(StateMachine)] works on enums of unit variants only; \
                           write `enum Status { #[initial] Open, Closed }`";

impl<'a> State<'a> {
    fn from_syn(variant: &'a Variant, cx: &mut Errors) -> Self {
        if !matches!(variant.fields, Fields::Unit) {
            let ident = &variant.ident;
            cx.spanned(
                &variant.fields,
                format!("state `{ident}` carries data; states are unit variants: write `{ident}` alone"),
            );
        }
        attr::misplaced(&variant.attrs, &["state_machine", "transition"], "a variant; put it on the enum", cx);
        State {
            variant,
            ident: &variant.ident,
            name: snake_case(&syn::ext::IdentExt::unraw(&variant.ident).to_string()),
            initial: attr::initial(&variant.attrs, cx),
        }
    }
}
