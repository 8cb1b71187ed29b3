//! `#[inbox]`: parse (`attr`, `ast`) → check (`valid`) → generate (`expand`). On
//! error, the user's item is emitted unchanged beside the errors, so calls to the
//! function raise no follow-on "cannot find function" errors.

mod ast;
mod attr;
mod expand;
mod valid;

use proc_macro2::TokenStream;
use syn::Item;

use crate::ctxt::Errors;

const NOT_A_FN: &str = "#[inbox] goes on an async function: \
                        async fn name(event: &Event, cx: &Context) -> Result<(), InboxError>";

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut cx = Errors::new();
    let options = attr::options(args, &mut cx);
    let item = syn::parse2::<Item>(input.clone());
    let result = match &item {
        Ok(Item::Fn(function)) => {
            let inbox = ast::Inbox::from_syn(function, options);
            valid::check(&inbox, &mut cx);
            cx.finish().map(|()| expand::expand(&inbox))
        }
        Ok(other) => {
            cx.spanned(ast::item_head(other), NOT_A_FN);
            cx.finish().map(|()| TokenStream::new())
        }
        Err(error) => {
            cx.push(syn::Error::new(error.span(), NOT_A_FN));
            cx.finish().map(|()| TokenStream::new())
        }
    };
    result.unwrap_or_else(|errors| {
        let mut tokens = errors.to_compile_error();
        tokens.extend(input);
        tokens
    })
}
