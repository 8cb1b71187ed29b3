//! Code generation for a valid `#[derive(StateMachine)]` input.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::ast::Machine;
use super::attr::Transition;
use crate::common::{runtime_path, wrap};

pub(crate) fn expand(machine: &Machine<'_>) -> TokenStream {
    let krate = runtime_path(machine.options.krate.as_ref());
    let ident = machine.ident;
    let vis = machine.vis;
    let sm = quote!(#krate::state_machine);
    let states = machine.states();
    let subject = machine.options.subject.as_ref().map(syn::LitStr::value).unwrap_or_default();

    let storage = match (&machine.options.table, &machine.options.column) {
        (Some(table), Some(column)) => {
            let key = machine.options.key.as_ref().map_or_else(|| "id".to_owned(), syn::LitStr::value);
            quote!(#sm::Storage::Column { table: #table, column: #column, key: #key })
        }
        _ => quote!(#sm::Storage::Herald),
    };
    let state_idents: Vec<_> = states.iter().map(|s| s.ident).collect();
    let state_names: Vec<_> = states.iter().map(|s| &s.name).collect();
    let initial = states.iter().find(|s| !s.initial.is_empty()).map(|s| s.ident);
    let rules = machine.transitions.iter().map(|t| rule(&sm, t));
    let methods = machine.transitions.iter().map(|t| event_methods(machine, &sm, t));
    let state_list = states.iter().map(|s| format!("`{}`", s.ident)).collect::<Vec<_>>().join(", ");

    let doc_initial = format!("The initial state, `{}`.", initial.map(ToString::to_string).unwrap_or_default());
    let doc_states = format!("Every state, in declaration order: {state_list}.");

    let impl_trait = quote! {
        #[automatically_derived]
        impl #sm::StateMachine for #ident {
            const SUBJECT: &'static str = #subject;
            const STORAGE: #sm::Storage = #storage;
            const STATES: &'static [Self] = &[#(Self::#state_idents),*];
            const TRANSITIONS: &'static [#sm::TransitionRule<Self>] = &[#(#rules),*];
            const INITIAL: Self = Self::#initial;

            #[inline]
            fn name(&self) -> &'static str {
                Self::as_str(self)
            }
        }
    };

    let impl_inherent = quote! {
        #[allow(dead_code)]
        impl #ident {
            #(#methods)*

            /// The events that may fire from this state, in declaration order.
            /// Guards are not consulted: they run when a transition is persisted.
            #vis fn permitted_events(&self) -> ::std::vec::Vec<&'static str> {
                <Self as #sm::StateMachine>::events(self)
            }

            #[doc = #doc_initial]
            #vis const fn initial() -> Self {
                Self::#initial
            }

            #[doc = #doc_states]
            #vis const fn states() -> &'static [Self] {
                <Self as #sm::StateMachine>::STATES
            }

            /// The snake_case name of the state, as stored in the database, in serde
            /// and in `status_changed` metadata.
            #vis const fn as_str(&self) -> &'static str {
                match self {
                    #(Self::#state_idents => #state_names,)*
                }
            }

            /// The machine as a Mermaid `stateDiagram-v2`, for documentation.
            #vis fn diagram() -> ::std::string::String {
                <Self as #sm::StateMachine>::mermaid()
            }
        }
    };

    let impl_from_str = quote! {
        #[automatically_derived]
        impl ::core::str::FromStr for #ident {
            type Err = #sm::UnknownState;

            fn from_str(__name: &str) -> ::core::result::Result<Self, Self::Err> {
                match __name {
                    #(#state_names => ::core::result::Result::Ok(Self::#state_idents),)*
                    _ => ::core::result::Result::Err(#krate::__private::unknown_state::<Self>(__name)),
                }
            }
        }
    };

    let conversions = conversions(machine, &krate);
    wrap(quote! {
        #impl_trait
        #impl_inherent
        #impl_from_str
        #conversions

        #krate::__private::inventory::submit! {
            #krate::action::ActionDeclaration { subject: #subject, actions: &[#krate::action::STATUS_CHANGED] }
        }
    })
}

fn rule(sm: &TokenStream, transition: &Transition) -> TokenStream {
    let event = transition.name();
    let from = &transition.from;
    let to = &transition.to;
    // Spanned at the user's path: a guard of the wrong type is reported there.
    let guard = match &transition.guard {
        Some(path) => quote_spanned!(path.span()=> ::core::option::Option::Some(#path)),
        None => quote!(::core::option::Option::None),
    };
    quote! {
        #sm::TransitionRule { event: #event, from: &[#(Self::#from),*], to: Self::#to, guard: #guard }
    }
}

fn event_methods(machine: &Machine<'_>, sm: &TokenStream, transition: &Transition) -> TokenStream {
    let vis = machine.vis;
    let event = &transition.event;
    let name = transition.name();
    let can = format_ident!("can_{}", event);
    let from = &transition.from;
    let to = &transition.to;
    let from_list = from.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ");
    let guard = transition
        .guard
        .as_ref()
        .map(|g| {
            format!("\n\nWhen persisted, the guard `{}` must also allow it.", quote!(#g).to_string().replace(' ', ""))
        })
        .unwrap_or_default();
    let doc_fire = format!(
        "Fires `{name}`: from {from_list} to `{to}`.\n\nPure: no database and no guard. From any other \
         state it returns an `InvalidTransition` that lists the permitted events.{guard}"
    );
    let doc_can = format!("Whether `{name}` may fire from this state: {from_list}.");
    quote! {
        #[doc = #doc_fire]
        #vis fn #event(self) -> ::core::result::Result<#sm::Transition<Self>, #sm::InvalidTransition> {
            <Self as #sm::StateMachine>::fire_event(self, #name)
        }

        #[doc = #doc_can]
        #vis const fn #can(&self) -> bool {
            ::core::matches!(self, #(Self::#from)|*)
        }
    }
}

/// `Display`, serde and sqlx, all through the snake_case name (`as_str`/`FromStr`).
/// Shared with the fallback, where those are stubs.
pub(crate) fn conversions(machine: &Machine<'_>, krate: &TokenStream) -> TokenStream {
    let ident = machine.ident;
    let private = quote!(#krate::__private);
    let sqlx = quote!(#private::sqlx);
    let databases = [quote!(#sqlx::Sqlite), quote!(#sqlx::Postgres)].map(|db| {
        quote! {
            #[automatically_derived]
            impl #sqlx::Type<#db> for #ident {
                fn type_info() -> <#db as #sqlx::Database>::TypeInfo {
                    <str as #sqlx::Type<#db>>::type_info()
                }

                fn compatible(__ty: &<#db as #sqlx::Database>::TypeInfo) -> bool {
                    <str as #sqlx::Type<#db>>::compatible(__ty)
                }
            }

            #[automatically_derived]
            impl<'q> #sqlx::Encode<'q, #db> for #ident {
                fn encode_by_ref(
                    &self,
                    __buf: &mut <#db as #sqlx::Database>::ArgumentBuffer,
                ) -> ::core::result::Result<#sqlx::encode::IsNull, #sqlx::error::BoxDynError> {
                    #private::encode_name::<#db>(Self::as_str(self), __buf)
                }

                fn size_hint(&self) -> usize {
                    Self::as_str(self).len()
                }
            }

            #[automatically_derived]
            impl<'r> #sqlx::Decode<'r, #db> for #ident {
                fn decode(
                    __value: <#db as #sqlx::Database>::ValueRef<'r>,
                ) -> ::core::result::Result<Self, #sqlx::error::BoxDynError> {
                    #private::decode_from_str::<#db, Self>(__value)
                }
            }
        }
    });
    quote! {
        #[automatically_derived]
        impl ::core::fmt::Display for #ident {
            fn fmt(&self, __f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                __f.pad(Self::as_str(self))
            }
        }

        #[automatically_derived]
        impl #private::serde::Serialize for #ident {
            fn serialize<__S>(&self, __serializer: __S) -> ::core::result::Result<__S::Ok, __S::Error>
            where
                __S: #private::serde::Serializer,
            {
                __serializer.serialize_str(Self::as_str(self))
            }
        }

        #[automatically_derived]
        impl<'de> #private::serde::Deserialize<'de> for #ident {
            fn deserialize<__D>(__deserializer: __D) -> ::core::result::Result<Self, __D::Error>
            where
                __D: #private::serde::Deserializer<'de>,
            {
                #private::deserialize_from_str(__deserializer)
            }
        }

        #(#databases)*

        #[automatically_derived]
        impl #sqlx::postgres::PgHasArrayType for #ident {
            fn array_type_info() -> #sqlx::postgres::PgTypeInfo {
                <&str as #sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }
    }
}
