//! `#[derive(Action)]`: parse (`attr`, `ast`) → check (`valid`) → generate (`expand`).

mod ast;
mod attr;
mod expand;
mod valid;

use proc_macro2::TokenStream;
use syn::DeriveInput;

use crate::ctxt::Errors;

pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let mut cx = Errors::new();
    let actions = ast::Actions::from_syn(input, &mut cx);
    valid::check(&actions, &mut cx);
    match cx.finish() {
        Ok(()) => expand::expand(&actions),
        Err(errors) => {
            let mut tokens = errors.to_compile_error();
            tokens.extend(expand::fallback(!input.generics.params.is_empty(), &actions));
            tokens
        }
    }
}
