//! `#[derive(StateMachine)]`: parse (`attr`, `ast`) → check (`valid`) → generate
//! (`expand`, or `fallback` beside the errors).

mod ast;
mod attr;
mod expand;
mod fallback;
mod valid;

use proc_macro2::TokenStream;
use syn::DeriveInput;

use crate::ctxt::Errors;

pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let mut cx = Errors::new();
    let machine = ast::Machine::from_syn(input, &mut cx);
    valid::check(&machine, &mut cx);
    match cx.finish() {
        Ok(()) => expand::expand(&machine),
        Err(errors) => {
            let mut tokens = errors.to_compile_error();
            tokens.extend(fallback::expand(input, &machine));
            tokens
        }
    }
}
