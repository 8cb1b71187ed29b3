//! The model of a `#[derive(Action)]` input, keeping the syn nodes for spans.

use syn::{DeriveInput, Fields, Ident, LitStr, Variant, Visibility};

use super::attr::{self, Options};
use crate::common::enum_variants;
use crate::ctxt::Errors;
use crate::names::snake_case;

pub(crate) struct Actions<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) vis: &'a Visibility,
    pub(crate) options: Options,
    /// The variants, when the input is an enum.
    pub(crate) variants: Option<Vec<ActionVariant<'a>>>,
}

pub(crate) struct ActionVariant<'a> {
    pub(crate) variant: &'a Variant,
    pub(crate) ident: &'a Ident,
    /// `#[action(rename = "…")]`, if given.
    pub(crate) rename: Option<LitStr>,
    /// The stored name: the rename or the snake_case variant name.
    pub(crate) name: String,
}

const NOT_AN_ENUM: &str = "#[derive(Action)] works on enums of unit variants only; \
                           write `enum IssueAction { Created, Closed }`";

impl<'a> Actions<'a> {
    pub(crate) fn from_syn(input: &'a DeriveInput, cx: &mut Errors) -> Self {
        let options = attr::options(&input.attrs, cx);
        let variants = enum_variants(input, "an action enum", NOT_AN_ENUM, cx, ActionVariant::from_syn);
        Actions { ident: &input.ident, vis: &input.vis, options, variants }
    }

    pub(crate) fn variants(&self) -> &[ActionVariant<'a>] {
        self.variants.as_deref().unwrap_or_default()
    }
}

impl<'a> ActionVariant<'a> {
    fn from_syn(variant: &'a Variant, cx: &mut Errors) -> Self {
        let ident = &variant.ident;
        if !matches!(variant.fields, Fields::Unit) {
            cx.spanned(
                &variant.fields,
                format!("action `{ident}` carries data; actions are unit variants (put details in the event metadata): write `{ident}` alone"),
            );
        }
        let rename = attr::rename(&variant.attrs, cx);
        let name = match &rename {
            Some(lit) => lit.value(),
            None => snake_case(&syn::ext::IdentExt::unraw(ident).to_string()),
        };
        ActionVariant { variant, ident, rename, name }
    }
}
