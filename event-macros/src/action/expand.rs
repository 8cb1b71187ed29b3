//! Code generation for `#[derive(Action)]`, and its fallback on error.

use proc_macro2::TokenStream;
use quote::quote;
use syn::Fields;

use super::ast::Actions;
use crate::common::{runtime_path, wrap};

pub(crate) fn expand(actions: &Actions<'_>) -> TokenStream {
    let krate = runtime_path(actions.options.krate.as_ref());
    let ident = actions.ident;
    let vis = actions.vis;
    let subject = actions.options.subject.as_ref().map(syn::LitStr::value).unwrap_or_default();
    let variants: Vec<_> = actions.variants().iter().map(|v| v.ident).collect();
    let names: Vec<_> = actions.variants().iter().map(|v| &v.name).collect();
    let doc_names = names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    let doc_as_str = format!("The snake_case name stored in the events table: {doc_names}.");

    wrap(quote! {
        #[automatically_derived]
        impl #krate::action::Action for #ident {
            const SUBJECT: &'static str = #subject;

            #[inline]
            fn as_str(&self) -> &'static str {
                Self::as_str(self)
            }
        }

        #[allow(dead_code)]
        impl #ident {
            #[doc = #doc_as_str]
            #vis const fn as_str(&self) -> &'static str {
                match self {
                    #(Self::#variants => #names,)*
                }
            }
        }

        #[automatically_derived]
        impl ::core::convert::AsRef<str> for #ident {
            fn as_ref(&self) -> &str {
                Self::as_str(self)
            }
        }

        #[automatically_derived]
        impl ::core::fmt::Display for #ident {
            fn fmt(&self, __f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                __f.pad(Self::as_str(self))
            }
        }

        #[automatically_derived]
        impl ::core::str::FromStr for #ident {
            type Err = #krate::Error;

            fn from_str(__name: &str) -> ::core::result::Result<Self, Self::Err> {
                match __name {
                    #(#names => ::core::result::Result::Ok(Self::#variants),)*
                    _ => ::core::result::Result::Err(#krate::__private::unknown_action(#subject, __name, &[#(#names),*])),
                }
            }
        }

        #krate::__private::inventory::submit! {
            #krate::action::ActionDeclaration { subject: #subject, actions: &[#(#names),*] }
        }
    })
}

/// Beside the errors: the trait and the conversions with stub bodies, so uses of
/// the enum elsewhere raise no follow-on errors.
pub(crate) fn fallback(generic: bool, actions: &Actions<'_>) -> TokenStream {
    if generic {
        return TokenStream::new();
    }
    let krate = runtime_path(actions.options.krate.as_ref());
    let ident = actions.ident;
    let vis = actions.vis;
    // Emitted only beside a `compile_error!`: the crate never builds, so this never runs.
    let never = quote!(::core::unreachable!("#[derive(Action)] failed to expand"));
    let all_unit =
        actions.variants.as_ref().is_some_and(|vs| vs.iter().all(|v| matches!(v.variant.fields, Fields::Unit)));
    let impl_trait = all_unit.then(|| {
        quote! {
            impl #krate::action::Action for #ident {
                const SUBJECT: &'static str = "";
                fn as_str(&self) -> &'static str {
                    #never
                }
            }
        }
    });
    wrap(quote! {
        #impl_trait

        #[allow(dead_code)]
        impl #ident {
            #vis fn as_str(&self) -> &'static str {
                #never
            }
        }

        impl ::core::convert::AsRef<str> for #ident {
            fn as_ref(&self) -> &str {
                #never
            }
        }

        impl ::core::fmt::Display for #ident {
            fn fmt(&self, _: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                #never
            }
        }

        impl ::core::str::FromStr for #ident {
            type Err = #krate::Error;

            fn from_str(_: &str) -> ::core::result::Result<Self, Self::Err> {
                #never
            }
        }
    })
}
