//! Parsing of `#[state_machine(…)]`, `#[transition(…)]` and `#[initial]`, one
//! attribute at a time. Checks across attributes live in `valid.rs`.

use proc_macro2::Span;
use syn::parse::{ParseStream, Parser};
use syn::{Attribute, Ident, LitStr, Path, Token};

use crate::common::{crate_value, path_name, skip_value, string_value};
use crate::ctxt::Errors;
use crate::once::Once;

/// The options of `#[state_machine(subject = "issue", table = "issues", column = "status")]`.
pub(crate) struct Options {
    pub(crate) subject: Option<LitStr>,
    pub(crate) table: Option<LitStr>,
    pub(crate) column: Option<LitStr>,
    pub(crate) key: Option<LitStr>,
    pub(crate) krate: Option<Path>,
    /// Whether an option could not be read (then `table`/`column` may be misspelt,
    /// and checks between options would only add follow-on errors).
    pub(crate) unreadable: bool,
}

const OPTIONS: &str = "subject, table, column, key, crate";

/// Reads every `#[state_machine(…)]` on the enum.
pub(crate) fn options(attrs: &[Attribute], cx: &mut Errors) -> Options {
    let mut subject = Once::new("state_machine", "subject");
    let mut table = Once::new("state_machine", "table");
    let mut column = Once::new("state_machine", "column");
    let mut key = Once::new("state_machine", "key");
    let mut krate = Once::new("state_machine", "crate");
    let mut unreadable = false;

    for attr in attrs.iter().filter(|a| a.path().is_ident("state_machine")) {
        let result = attr.parse_nested_meta(|meta| {
            let path = &meta.path;
            if path.is_ident("subject") {
                subject.set(cx, path, string_value(&meta, "subject")?);
            } else if path.is_ident("table") {
                table.set(cx, path, string_value(&meta, "table")?);
            } else if path.is_ident("column") {
                column.set(cx, path, string_value(&meta, "column")?);
            } else if path.is_ident("key") {
                key.set(cx, path, string_value(&meta, "key")?);
            } else if path.is_ident("crate") {
                krate.set(cx, path, crate_value(&meta)?);
            } else {
                cx.push(meta.error(format!(
                    "unknown option `{}` in #[state_machine(…)]; options are {OPTIONS}",
                    path_name(path)
                )));
                unreadable = true;
                skip_value(&meta)?;
            }
            Ok(())
        });
        unreadable |= cx.ok(result).is_none();
    }

    Options {
        subject: subject.into_inner(),
        table: table.into_inner(),
        column: column.into_inner(),
        key: key.into_inner(),
        krate: krate.into_inner(),
        unreadable,
    }
}

/// One `#[transition(event: From | Other -> To, guard = path)]`.
pub(crate) struct Transition {
    pub(crate) event: Ident,
    pub(crate) from: Vec<Ident>,
    pub(crate) to: Ident,
    pub(crate) guard: Option<Path>,
}

impl Transition {
    /// The event's name as stored (`r#type` is `type`).
    pub(crate) fn name(&self) -> String {
        syn::ext::IdentExt::unraw(&self.event).to_string()
    }

    /// The attribute as the user wrote it (without the guard), for messages.
    pub(crate) fn display(&self) -> String {
        format!(
            "#[transition({}: {} -> {})]",
            self.name(),
            self.from.iter().map(ToString::to_string).collect::<Vec<_>>().join(" | "),
            self.to
        )
    }
}

/// Reads every `#[transition(…)]` on the enum; a malformed one is reported and skipped.
pub(crate) fn transitions(attrs: &[Attribute], cx: &mut Errors) -> Vec<Transition> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("transition"))
        .filter_map(|attr| {
            let parsed = match &attr.meta {
                syn::Meta::List(list) => {
                    (|input: ParseStream<'_>| parse_transition(input, cx)).parse2(list.tokens.clone())
                }
                _ => Err(syn::Error::new_spanned(
                    attr,
                    format!("malformed #[transition]: expected arguments in parentheses; {FORM}"),
                )),
            };
            cx.ok(parsed)
        })
        .collect()
}

const FORM: &str = "write #[transition(event: From -> To)], #[transition(event: A | B -> To)] \
                    or #[transition(event: From -> To, guard = path::to::fn)]";

fn malformed(span: Span, expected: &str) -> syn::Error {
    syn::Error::new(span, format!("malformed #[transition]: expected {expected}; {FORM}"))
}

fn parse_transition(input: ParseStream<'_>, cx: &mut Errors) -> syn::Result<Transition> {
    let event: Ident = input.parse().map_err(|e| malformed(e.span(), "the event name first, like `start`"))?;
    input.parse::<Token![:]>().map_err(|e| malformed(e.span(), &format!("`:` after the event name `{event}`")))?;

    let mut from = Vec::new();
    loop {
        let state: Ident = input.parse().map_err(|e| malformed(e.span(), "a state the event fires from"))?;
        from.push(state);
        if input.parse::<Option<Token![|]>>()?.is_none() {
            break;
        }
    }
    input
        .parse::<Token![->]>()
        .map_err(|e| malformed(e.span(), "`|` and another state, or `->` and the state the event leads to"))?;
    let to: Ident = input.parse().map_err(|e| malformed(e.span(), "the state the event leads to after `->`"))?;
    if input.peek(Token![|]) {
        return Err(syn::Error::new(
            input.span(),
            format!(
                "malformed #[transition]: `{event}` can lead to one state only; declare another event for the other target"
            ),
        ));
    }

    let mut guard = Once::new("transition", "guard");
    while !input.is_empty() {
        input.parse::<Token![,]>().map_err(|e| malformed(e.span(), "`,` before an option"))?;
        if input.is_empty() {
            break;
        }
        let key: Ident = input.parse().map_err(|e| malformed(e.span(), "an option: guard = path::to::fn"))?;
        if key == "guard" {
            input.parse::<Token![=]>().map_err(|e| malformed(e.span(), "`=` after `guard`"))?;
            let path: Path = input.parse().map_err(|e| malformed(e.span(), "a function path after `guard =`"))?;
            guard.set(cx, &key, path);
        } else {
            return Err(syn::Error::new(
                key.span(),
                format!("unknown option `{key}` in #[transition(…)]; the only option is guard = path::to::fn"),
            ));
        }
    }

    Ok(Transition { event, from, to, guard: guard.into_inner() })
}

/// The `#[initial]` attributes among `attrs`; arguments are reported.
pub(crate) fn initial<'a>(attrs: &'a [Attribute], cx: &mut Errors) -> Vec<&'a Attribute> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("initial"))
        .inspect(|a| {
            if !matches!(a.meta, syn::Meta::Path(_)) {
                cx.spanned(a, "#[initial] takes no arguments; write #[initial] alone");
            }
        })
        .collect()
}

/// Reports `#[name]` attributes written where they have no meaning.
pub(crate) fn misplaced(attrs: &[Attribute], names: &[&str], place: &str, cx: &mut Errors) {
    for attr in attrs {
        if let Some(name) = names.iter().find(|n| attr.path().is_ident(n)) {
            cx.spanned(attr, format!("#[{name}] has no meaning on {place}"));
        }
    }
}
