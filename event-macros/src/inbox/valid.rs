//! Checks of an `#[inbox]` function: its signature, and the option values.

use std::collections::BTreeSet;

use syn::{GenericParam, Pat, PatType, Type};

use super::ast::Inbox;
use crate::ctxt::Errors;
use crate::names::snake_case;

pub(crate) fn check(inbox: &Inbox<'_>, cx: &mut Errors) {
    check_signature(inbox, cx);
    check_options(inbox, cx);
}

/// `async fn name(event: &Event, cx: &Context) -> Result<(), InboxError>`, with the
/// user's own parameter names and type paths: the shape that becomes a `Handler`.
fn check_signature(inbox: &Inbox<'_>, cx: &mut Errors) {
    let sig = &inbox.item.sig;
    let name = inbox.name();

    if let Some(constness) = &sig.constness {
        cx.spanned(constness, "an inbox cannot be `const`; remove `const`");
    }
    if sig.asyncness.is_none() {
        cx.spanned(sig.fn_token, format!("an inbox must be async; write `async fn {name}`"));
    }
    if let Some(unsafety) = &sig.unsafety {
        cx.spanned(unsafety, "an inbox cannot be `unsafe`; remove `unsafe` and use an unsafe block inside");
    }
    if let Some(abi) = &sig.abi {
        cx.spanned(abi, "an inbox cannot have an ABI; remove `extern`");
    }
    if let Some(variadic) = &sig.variadic {
        cx.spanned(variadic, "an inbox cannot be variadic; it takes `event: &Event, cx: &Context`");
    }

    // Lifetimes are harmless (a handler is `for<'a> fn(&'a Event, &'a Context)`);
    // types and consts would leave nothing to register.
    for param in &sig.generics.params {
        let what = match param {
            GenericParam::Lifetime(_) => continue,
            GenericParam::Type(t) => format!("the type parameter `{}`", t.ident),
            GenericParam::Const(c) => format!("the const parameter `{}`", c.ident),
        };
        cx.spanned(
            param,
            format!("an inbox cannot be generic; remove {what} from `{name}`: it is registered as one plain fn"),
        );
    }

    if let Some(receiver) = inbox.receiver {
        cx.spanned(
            receiver,
            format!(
                "an inbox cannot take `self`; make `{name}` a free function (outside the impl block): \
                 async fn {name}(event: &Event, cx: &Context)"
            ),
        );
    }

    match inbox.params.len() {
        0 | 1 if inbox.receiver.is_none() => cx.push(syn::Error::new(
            sig.paren_token.span.join(),
            format!(
                "an inbox takes two parameters, the event and the context; write \
                 async fn {name}(event: &Event, cx: &Context)"
            ),
        )),
        _ => {
            for extra in inbox.params.iter().skip(2) {
                cx.spanned(
                    extra,
                    "an inbox takes two parameters, `event: &Event` and `cx: &Context`; remove this one \
                     (use `cx.resource::<T>()` for anything else it needs)",
                );
            }
        }
    }
    for (param, expected) in inbox.params.iter().zip(["Event", "Context"]) {
        check_param(param, expected, cx);
    }

    match inbox.output {
        None => cx.push(syn::Error::new(
            sig.paren_token.span.close(),
            format!(
                "`{name}` has no return type; an inbox returns `Result<(), InboxError>`: add it after the parameters"
            ),
        )),
        Some(ty @ Type::ImplTrait(_)) => cx.spanned(
            ty,
            "an inbox returns `Result<(), InboxError>` from an async fn, not `impl Trait`; \
             write `-> Result<(), InboxError>`",
        ),
        Some(_) => {}
    }
}

/// A parameter must be a shared reference to a named type: `event: &Event`.
fn check_param(param: &PatType, expected: &str, cx: &mut Errors) {
    let name = match &*param.pat {
        Pat::Ident(p) => p.ident.to_string(),
        Pat::Wild(_) => "_".to_owned(),
        _ => expected.to_lowercase(),
    };
    match ungroup(&param.ty) {
        Type::Reference(reference) => {
            if let Some(mutability) = &reference.mutability {
                cx.spanned(
                    mutability,
                    format!("parameter `{name}` must be a shared reference; remove `mut`: `{name}: &{expected}`"),
                );
            }
            if reference.lifetime.as_ref().is_some_and(|l| l.ident == "static") {
                cx.spanned(
                    &reference.lifetime,
                    format!(
                        "parameter `{name}` cannot be `&'static`: it is lent for one delivery; write `{name}: &{expected}`"
                    ),
                );
            }
            if let Type::ImplTrait(_) = ungroup(&reference.elem) {
                cx.spanned(
                    &reference.elem,
                    format!("`impl Trait` cannot be an inbox parameter; write `{name}: &{expected}`"),
                );
            }
        }
        ty @ Type::ImplTrait(_) => {
            cx.spanned(ty, format!("`impl Trait` cannot be an inbox parameter; write `{name}: &{expected}`"));
        }
        ty => cx.spanned(ty, format!("parameter `{name}` must be a shared reference; write `{name}: &{expected}`")),
    }
}

/// A type without the invisible groups `macro_rules!` may wrap it in.
fn ungroup(ty: &Type) -> &Type {
    match ty {
        Type::Group(group) => ungroup(&group.elem),
        Type::Paren(paren) => ungroup(&paren.elem),
        ty => ty,
    }
}

fn check_options(inbox: &Inbox<'_>, cx: &mut Errors) {
    let options = &inbox.options;

    if let Some(subject) = &options.subject
        && subject.value().trim().is_empty()
    {
        cx.spanned(
            subject,
            "subject must not be empty; write subject = \"issue\", or leave `subject` out to receive every subject",
        );
    }

    if let Some(name) = &options.name
        && name.value().trim().is_empty()
    {
        cx.spanned(
            name,
            format!(
                "an inbox name must not be empty; write name = \"{}\", or leave `name` out to use \
                 `module::path::{}`",
                inbox.name(),
                inbox.name()
            ),
        );
    }

    if let Some(old) = &options.renamed_from {
        if old.value().trim().is_empty() {
            cx.spanned(old, "renamed_from must name the inbox's former name, e.g. renamed_from = \"app::emails\"");
        } else if options.name.as_ref().is_some_and(|name| name.value() == old.value()) {
            cx.spanned(old, format!("renamed_from = \"{}\" is the inbox's own name; remove it", old.value()));
        }
    }

    if let Some(actions) = &options.actions {
        if actions.expr.elems.is_empty() {
            cx.push(syn::Error::new(
                actions.expr.bracket_token.span.join(),
                "empty actions list; name at least one, e.g. actions = [\"assigned\"], or leave `actions` out to \
                 receive every action",
            ));
        }
        let mut seen = BTreeSet::new();
        for lit in &actions.names {
            let action = lit.value();
            if action.is_empty() {
                cx.spanned(lit, "an action name must not be empty; e.g. actions = [\"assigned\"]");
            } else if !is_action_name(&action) {
                let fix = snake_case(&action.replace(['-', ' ', '.'], "_"));
                let hint = if is_action_name(&fix) { format!("; write \"{fix}\"") } else { String::new() };
                cx.spanned(
                    lit,
                    format!(
                        "action \"{action}\" is not snake_case: actions are stored as lowercase letters, digits \
                         and `_`{hint}"
                    ),
                );
            } else if !seen.insert(action.clone()) {
                cx.spanned(lit, format!("duplicate action \"{action}\" in actions = […]; list it once"));
            }
        }
    }

    if let Some(attempts) = &options.max_attempts
        && attempts.value == 0
    {
        cx.spanned(
            &attempts.lit,
            "max_attempts must be at least 1 (the first delivery is an attempt); e.g. max_attempts = 5",
        );
    }

    if let Some(timeout) = &options.timeout
        && timeout.millis == 0
    {
        cx.spanned(&timeout.lit, "timeout must be longer than zero; e.g. timeout = \"10s\"");
    }

    if let (Some(backoff), Some(max)) = (&options.backoff, &options.backoff_max)
        && max.millis < backoff.millis
    {
        cx.spanned(
            &max.lit,
            format!(
                "backoff_max = \"{}\" is shorter than backoff = \"{}\"; make backoff_max at least \"{}\"",
                max.lit.value(),
                backoff.lit.value(),
                backoff.lit.value()
            ),
        );
    }
}

/// Lowercase ASCII letters, digits and `_`: how actions are stored.
fn is_action_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}
