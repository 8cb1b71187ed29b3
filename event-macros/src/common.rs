//! Pieces both derives share: option values, the runtime's path, the wrapper.

use proc_macro2::TokenStream;
use quote::quote;
use syn::meta::ParseNestedMeta;
use syn::{Expr, ExprLit, Lit, LitStr, Path};

/// The value of `key = "…"`, with a message that shows the expected form.
pub(crate) fn string_value(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<LitStr> {
    let expr: Expr = meta.value()?.parse()?;
    match expr {
        Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) => Ok(lit),
        other => Err(syn::Error::new_spanned(other, format!("expected a string: {key} = \"…\""))),
    }
}

/// The value of `crate = "path"`, a path to the `herald` facade (or `event_core`).
pub(crate) fn crate_value(meta: &ParseNestedMeta<'_>) -> syn::Result<Path> {
    let lit = string_value(meta, "crate")?;
    lit.parse::<Path>().map_err(|_| {
        syn::Error::new(
            lit.span(),
            format!("`{}` is not a path; write crate = \"herald\" or crate = \"::my::herald\"", lit.value()),
        )
    })
}

/// Skips the value of an option we report as unknown, so parsing goes on.
pub(crate) fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        let _: Expr = meta.value()?.parse()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|inner| skip_value(&inner))?;
    }
    Ok(())
}

/// The name of an option as written (`crate`, `subject`, `a::b`).
pub(crate) fn path_name(path: &Path) -> String {
    quote!(#path).to_string().replace(' ', "")
}

/// The runtime's path: the `crate = "…"` override or `::herald`.
pub(crate) fn runtime_path(krate: Option<&Path>) -> TokenStream {
    match krate {
        Some(path) => quote!(#path),
        None => quote!(::herald),
    }
}

/// Wraps generated items in `const _: () = { … };` so they add no names.
pub(crate) fn wrap(items: TokenStream) -> TokenStream {
    quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals, unused_qualifications, unused_attributes)]
        const _: () = {
            #items
        };
    }
}

/// The variants of a derive's enum, each turned into `T` by `variant`; a struct or
/// union (reported at its keyword with `not_an_enum`) gives `None`. Generic enums are
/// reported too: `what` names the thing in the message ("a state machine").
pub(crate) fn enum_variants<'a, T>(
    input: &'a syn::DeriveInput,
    what: &str,
    not_an_enum: &str,
    cx: &mut crate::ctxt::Errors,
    mut variant: impl FnMut(&'a syn::Variant, &mut crate::ctxt::Errors) -> T,
) -> Option<Vec<T>> {
    let variants = match &input.data {
        syn::Data::Enum(data) => Some(data.variants.iter().map(|v| variant(v, cx)).collect()),
        syn::Data::Struct(data) => {
            cx.spanned(data.struct_token, not_an_enum);
            None
        }
        syn::Data::Union(data) => {
            cx.spanned(data.union_token, not_an_enum);
            None
        }
    };
    if !input.generics.params.is_empty() {
        let generics = &input.generics;
        cx.spanned(
            generics,
            format!("{what} cannot be generic; remove `{}` from `{}`", quote!(#generics), input.ident),
        );
    }
    variants
}
