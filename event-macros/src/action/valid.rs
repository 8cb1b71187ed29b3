//! Checks across the whole `#[derive(Action)]` input.

use std::collections::BTreeMap;

use super::ast::Actions;
use crate::ctxt::Errors;

pub(crate) fn check(actions: &Actions<'_>, cx: &mut Errors) {
    match &actions.options.subject {
        None => cx.spanned(
            actions.ident,
            format!(
                "missing subject: add #[action(subject = \"…\")] to `{}`, naming the subject type these actions \
                 happen to, e.g. subject = \"issue\"",
                actions.ident
            ),
        ),
        Some(subject) if subject.value().is_empty() => {
            cx.spanned(subject, "subject must not be empty; e.g. subject = \"issue\"");
        }
        Some(_) => {}
    }

    if actions.variants.as_ref().is_some_and(Vec::is_empty) {
        cx.spanned(actions.ident, format!("`{}` has no actions; add unit variants", actions.ident));
    }

    let mut names: BTreeMap<&str, &syn::Ident> = BTreeMap::new();
    for variant in actions.variants() {
        if let Some(rename) = &variant.rename
            && rename.value().trim().is_empty()
        {
            cx.spanned(rename, "an action name must not be empty; e.g. #[action(rename = \"closed\")]");
            continue;
        }
        if let Some(earlier) = names.insert(&variant.name, variant.ident) {
            let message = format!(
                "duplicate action `{}`: `{earlier}` and `{}` are both named `{}`; rename one with #[action(rename = \"…\")]",
                variant.name, variant.ident, variant.name
            );
            match &variant.rename {
                Some(rename) => cx.spanned(rename, message),
                None => cx.spanned(variant.ident, message),
            }
        }
    }
}
