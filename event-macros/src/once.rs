//! An option that may be given at most once, wherever it is written.

use proc_macro2::Span;
use syn::spanned::Spanned;

use crate::ctxt::Errors;

/// The value of `name = …` in an attribute like `#[state_machine(…)]`.
pub(crate) struct Once<T> {
    attr: &'static str,
    name: &'static str,
    value: Option<(T, Span)>,
}

impl<T> Once<T> {
    /// An unset option `name` of `#[attr(…)]`.
    pub(crate) fn new(attr: &'static str, name: &'static str) -> Self {
        Once { attr, name, value: None }
    }

    /// Sets the value given at `key`, or reports a duplicate there.
    pub(crate) fn set(&mut self, cx: &mut Errors, key: &impl Spanned, value: T) {
        if self.value.is_some() {
            cx.push(syn::Error::new(
                key.span(),
                format!("duplicate option `{}` in #[{}(…)]; give it once", self.name, self.attr),
            ));
        } else {
            self.value = Some((value, key.span()));
        }
    }

    /// The value, if it was given.
    pub(crate) fn into_inner(self) -> Option<T> {
        self.value.map(|(v, _)| v)
    }
}
