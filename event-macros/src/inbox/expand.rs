//! Code generation for a valid `#[inbox]` function: the function untouched, then a
//! `Handler` wrapper and its `InboxDef` registration, in `const _: () = { … };`.

use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::ast::Inbox;
use super::attr::{DurationValue, Key, StartFrom};
use crate::common::{runtime_path, wrap};

pub(crate) fn expand(inbox: &Inbox<'_>) -> TokenStream {
    let options = &inbox.options;
    let krate = runtime_path(options.krate.as_ref());
    let module = quote!(#krate::inbox);
    let item = inbox.item;
    let ident = inbox.ident;
    let wrapper = format_ident!("__herald_inbox_{}", inbox.name());

    // The wrapper's arguments carry the spans of the user's parameter types, and the
    // boxing that of the return type, so a wrong type is reported there and not in
    // generated code (names still resolve at the call site).
    let at = |span: Span| Span::call_site().located_at(span);
    let args = inbox.params.iter().zip(["__event", "__cx"]).map(|(param, arg)| Ident::new(arg, at(param.ty.span())));
    let call = quote!(#ident(#(#args),*));
    let output = inbox.output.map_or_else(Span::call_site, Spanned::span);
    let body = quote_spanned!(at(output)=> ::std::boxed::Box::pin(#call));

    // Where the function is, for the default name and for error messages.
    let here = ident.span();
    let name = match &options.name {
        Some(lit) => quote!(#lit),
        None => {
            let fn_name = inbox.name();
            quote_spanned!(here=> ::core::concat!(::core::module_path!(), "::", #fn_name))
        }
    };
    let file = quote_spanned!(here=> ::core::file!());
    let line = quote_spanned!(here=> ::core::line!());

    let some = |value: TokenStream| quote!(::core::option::Option::Some(#value));
    let none = quote!(::core::option::Option::None);
    let subject = options.subject.as_ref().map_or_else(|| none.clone(), |lit| some(quote!(#lit)));
    let actions = options.actions.iter().flat_map(|a| &a.names);
    let renamed_from = options.renamed_from.as_ref().map_or_else(|| none.clone(), |lit| some(quote!(#lit)));
    // Spanned at the user's path: a filter of the wrong type is reported there.
    let filter = options
        .filter
        .as_ref()
        .map_or_else(|| none.clone(), |path| quote_spanned!(path.span()=> ::core::option::Option::Some(#path)));
    // Spanned at the user's path, like the filter, `Key::Fn`'s own path included: a fn
    // of the wrong type is reported there, not at the whole attribute.
    let key = match &options.key {
        None | Some(Key::Subject) => quote!(#module::Key::Subject),
        Some(Key::Actor) => quote!(#module::Key::Actor),
        Some(Key::Correlation) => quote!(#module::Key::Correlation),
        Some(Key::None) => quote!(#module::Key::None),
        Some(Key::Fn(path)) => {
            let module = respan(module.clone(), path.span());
            quote_spanned!(path.span()=> #module::Key::Fn(#path))
        }
    };
    let spread = options.spread.as_ref().is_some_and(|lit| lit.value);
    let max_attempts = options.max_attempts.as_ref().map_or_else(
        || quote!(#module::InboxDef::DEFAULT_MAX_ATTEMPTS),
        |attempts| Literal::u32_unsuffixed(attempts.value).into_token_stream(),
    );
    let backoff = duration(options.backoff.as_ref(), quote!(#module::InboxDef::DEFAULT_BACKOFF));
    let backoff_max = duration(options.backoff_max.as_ref(), quote!(#module::InboxDef::DEFAULT_BACKOFF_MAX));
    let timeout = duration(options.timeout.as_ref(), quote!(#module::InboxDef::DEFAULT_TIMEOUT));
    let start_from = match options.start_from {
        None | Some(StartFrom::Now) => quote!(#module::StartFrom::Now),
        Some(StartFrom::Beginning) => quote!(#module::StartFrom::Beginning),
    };
    let defaults = check_against_defaults(inbox, &module);

    let registration = wrap(quote! {
        #[allow(non_snake_case)]
        fn #wrapper<'a>(
            __event: &'a #krate::Event,
            __cx: &'a #krate::Context,
        ) -> #module::HandlerFuture<'a> {
            #body
        }

        #defaults

        #krate::__private::inventory::submit! {
            #module::InboxDef {
                name: #name,
                renamed_from: #renamed_from,
                subject: #subject,
                actions: &[#(#actions),*],
                filter: #filter,
                max_attempts: #max_attempts,
                backoff: #backoff,
                backoff_max: #backoff_max,
                timeout: #timeout,
                key: #key,
                spread: #spread,
                start_from: #start_from,
                handler: #wrapper,
                file: #file,
                line: #line,
            }
        }
    });

    quote! {
        #item
        #registration
    }
}

/// `tokens` with every span set to `span` (for a path: no groups to descend into).
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            token.set_span(span);
            token
        })
        .collect()
}

fn duration(value: Option<&DurationValue>, default: TokenStream) -> TokenStream {
    match value {
        Some(value) => {
            let millis = Literal::u64_unsuffixed(value.millis);
            quote!(::core::time::Duration::from_millis(#millis))
        }
        None => default,
    }
}

/// With only one of `backoff` and `backoff_max` given, the other is the runtime's
/// default: a compile-time assertion, at the given value, that they still agree.
fn check_against_defaults(inbox: &Inbox<'_>, module: &TokenStream) -> TokenStream {
    let options = &inbox.options;
    match (&options.backoff, &options.backoff_max) {
        (Some(backoff), None) => {
            let millis = Literal::u64_unsuffixed(backoff.millis);
            let message = format!(
                "backoff = \"{}\" is longer than the default backoff_max; give backoff_max too",
                backoff.lit.value()
            );
            quote_spanned! {backoff.lit.span()=>
                const _: () = ::core::assert!(#millis <= #module::InboxDef::DEFAULT_BACKOFF_MAX.as_millis(), #message);
            }
        }
        (None, Some(max)) => {
            let millis = Literal::u64_unsuffixed(max.millis);
            let message =
                format!("backoff_max = \"{}\" is shorter than the default backoff; give backoff too", max.lit.value());
            quote_spanned! {max.lit.span()=>
                const _: () = ::core::assert!(#module::InboxDef::DEFAULT_BACKOFF.as_millis() <= #millis, #message);
            }
        }
        _ => TokenStream::new(),
    }
}
