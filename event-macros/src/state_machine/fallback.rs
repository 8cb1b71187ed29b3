//! What a failing `#[derive(StateMachine)]` still emits beside its errors: the
//! trait impl and the methods the user calls, with stub bodies, so the only errors
//! are the ones that say what to fix, not a flood of "no method `start`".

use std::collections::BTreeSet;

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{DeriveInput, Fields};

use super::ast::Machine;
use super::expand::conversions;
use crate::common::{runtime_path, wrap};

pub(crate) fn expand(input: &DeriveInput, machine: &Machine<'_>) -> TokenStream {
    if !input.generics.params.is_empty() {
        return TokenStream::new();
    }
    let krate = runtime_path(machine.options.krate.as_ref());
    let sm = quote!(#krate::state_machine);
    let ident = machine.ident;
    let vis = machine.vis;
    // Emitted only beside a `compile_error!`: the crate never builds, so this never runs.
    let never = quote!(::core::unreachable!("#[derive(StateMachine)] failed to expand"));

    // The trait impl needs a state for INITIAL and Copy + Eq + …, which only an
    // enum of unit variants may have.
    let impl_trait = machine
        .states
        .as_ref()
        .filter(|states| states.iter().all(|s| matches!(s.variant.fields, Fields::Unit)))
        .and_then(|states| states.iter().find(|s| !s.initial.is_empty()).or(states.first()))
        .map(|initial| {
            let initial = initial.ident;
            let subject = machine.options.subject.as_ref().map(syn::LitStr::value).unwrap_or_default();
            quote! {
                impl #sm::StateMachine for #ident {
                    const SUBJECT: &'static str = #subject;
                    const STORAGE: #sm::Storage = #sm::Storage::Herald;
                    const STATES: &'static [Self] = &[];
                    const TRANSITIONS: &'static [#sm::TransitionRule<Self>] = &[];
                    const INITIAL: Self = Self::#initial;

                    fn name(&self) -> &'static str {
                        #never
                    }
                }
            }
        });

    let mut taken: BTreeSet<String> =
        ["permitted_events", "initial", "states", "as_str", "diagram"].map(String::from).into();
    let events = machine.transitions.iter().filter_map(|t| {
        let event = &t.event;
        let can = format_ident!("can_{}", event);
        let fresh = taken.insert(event.to_string()) & taken.insert(can.to_string());
        fresh.then(|| {
            quote! {
                #vis fn #event(self) -> ::core::result::Result<#sm::Transition<Self>, #sm::InvalidTransition> {
                    #never
                }
                #vis fn #can(&self) -> bool {
                    #never
                }
            }
        })
    });
    let events: Vec<_> = events.collect();

    let conversions = conversions(machine, &krate);
    wrap(quote! {
        #impl_trait

        #[allow(dead_code, unused_variables)]
        impl #ident {
            #(#events)*
            #vis fn permitted_events(&self) -> ::std::vec::Vec<&'static str> {
                #never
            }
            #vis fn initial() -> Self {
                #never
            }
            #vis fn states() -> &'static [Self] {
                #never
            }
            #vis fn as_str(&self) -> &'static str {
                #never
            }
            #vis fn diagram() -> ::std::string::String {
                #never
            }
        }

        impl ::core::str::FromStr for #ident {
            type Err = #sm::UnknownState;

            fn from_str(_: &str) -> ::core::result::Result<Self, Self::Err> {
                #never
            }
        }

        #conversions
    })
}
