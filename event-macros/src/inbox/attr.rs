//! Parsing of `#[inbox(…)]`: each option read into its type, once. Checks of the
//! values and between options live in `valid.rs`.

use proc_macro2::TokenStream;
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::{Expr, ExprLit, Lit, LitBool, LitInt, LitStr, Path};

use crate::common::{crate_value, path_name, skip_value, string_value};
use crate::ctxt::Errors;
use crate::once::Once;

/// The options of `#[inbox(subject = "issue", actions = ["assigned"], …)]`.
pub(crate) struct Options {
    pub(crate) subject: Option<LitStr>,
    pub(crate) actions: Option<ActionList>,
    pub(crate) name: Option<LitStr>,
    pub(crate) renamed_from: Option<LitStr>,
    pub(crate) filter: Option<Path>,
    pub(crate) key: Option<Key>,
    pub(crate) spread: Option<LitBool>,
    pub(crate) max_attempts: Option<MaxAttempts>,
    pub(crate) backoff: Option<DurationValue>,
    pub(crate) backoff_max: Option<DurationValue>,
    pub(crate) timeout: Option<DurationValue>,
    pub(crate) start_from: Option<StartFrom>,
    pub(crate) krate: Option<Path>,
}

/// `actions = ["assigned", "commented"]`: the list as written, for spans.
pub(crate) struct ActionList {
    pub(crate) expr: syn::ExprArray,
    /// The elements that are string literals (the others were reported).
    pub(crate) names: Vec<LitStr>,
}

/// `max_attempts = 5`.
pub(crate) struct MaxAttempts {
    pub(crate) lit: LitInt,
    pub(crate) value: u32,
}

/// `backoff = "500ms"`, read at compile time.
pub(crate) struct DurationValue {
    pub(crate) lit: LitStr,
    pub(crate) millis: u64,
}

/// `start_from = "now" | "beginning"`.
#[derive(Clone, Copy)]
pub(crate) enum StartFrom {
    Now,
    Beginning,
}

/// `key = "subject" | "actor" | "correlation" | "none"` or `key = path::to::fn`.
pub(crate) enum Key {
    Subject,
    Actor,
    Correlation,
    None,
    /// The user's `fn(&Event) -> String`, as written (its span is where a wrong type is reported).
    Fn(Path),
}

const OPTIONS: [&str; 13] = [
    "subject",
    "actions",
    "name",
    "renamed_from",
    "filter",
    "key",
    "spread",
    "max_attempts",
    "backoff",
    "backoff_max",
    "timeout",
    "start_from",
    "crate",
];

/// Reads the arguments of `#[inbox(…)]`; what cannot be read is reported and left unset.
pub(crate) fn options(args: TokenStream, cx: &mut Errors) -> Options {
    let mut subject = Once::new("inbox", "subject");
    let mut actions = Once::new("inbox", "actions");
    let mut name = Once::new("inbox", "name");
    let mut renamed_from = Once::new("inbox", "renamed_from");
    let mut filter = Once::new("inbox", "filter");
    // Not `key`: that name is taken below by the option being read.
    let mut order_key = Once::new("inbox", "key");
    let mut spread = Once::new("inbox", "spread");
    let mut max_attempts = Once::new("inbox", "max_attempts");
    let mut backoff = Once::new("inbox", "backoff");
    let mut backoff_max = Once::new("inbox", "backoff_max");
    let mut timeout = Once::new("inbox", "timeout");
    let mut start_from = Once::new("inbox", "start_from");
    let mut krate = Once::new("inbox", "crate");

    let parser =
        syn::meta::parser(|meta| {
            let key = &meta.path;
            // A value that cannot be read is reported here and parsing goes on, so
            // every mistake in the attribute shows up in one run.
            if key.is_ident("subject") {
                if let Some(value) = cx.ok(string_value(&meta, "subject")) {
                    subject.set(cx, key, value);
                }
            } else if key.is_ident("actions") {
                if let Some(value) = action_list(&meta, cx) {
                    actions.set(cx, key, value);
                }
            } else if key.is_ident("name") {
                if let Some(value) = cx.ok(string_value(&meta, "name")) {
                    name.set(cx, key, value);
                }
            } else if key.is_ident("renamed_from") {
                if let Some(value) = cx.ok(string_value(&meta, "renamed_from")) {
                    renamed_from.set(cx, key, value);
                }
            } else if key.is_ident("filter") {
                if let Some(value) = cx.ok(fn_path(&meta)) {
                    filter.set(cx, key, value);
                }
            } else if key.is_ident("key") {
                if let Some(value) = cx.ok(key_value(&meta)) {
                    order_key.set(cx, key, value);
                }
            } else if key.is_ident("spread") {
                if let Some(value) = cx.ok(bool_value(&meta, "spread")) {
                    spread.set(cx, key, value);
                }
            } else if key.is_ident("max_attempts") {
                if let Some(value) = cx.ok(attempts(&meta)) {
                    max_attempts.set(cx, key, value);
                }
            } else if key.is_ident("backoff") {
                if let Some(value) = cx.ok(duration(&meta, "backoff", "500ms")) {
                    backoff.set(cx, key, value);
                }
            } else if key.is_ident("backoff_max") {
                if let Some(value) = cx.ok(duration(&meta, "backoff_max", "10m")) {
                    backoff_max.set(cx, key, value);
                }
            } else if key.is_ident("timeout") {
                if let Some(value) = cx.ok(duration(&meta, "timeout", "10s")) {
                    timeout.set(cx, key, value);
                }
            } else if key.is_ident("start_from") {
                if let Some(value) = cx.ok(start(&meta)) {
                    start_from.set(cx, key, value);
                }
            } else if key.is_ident("crate") {
                if let Some(value) = cx.ok(crate_value(&meta)) {
                    krate.set(cx, key, value);
                }
            } else {
                let unknown = path_name(key);
                let hint = closest(&unknown).map(|o| format!(" did you mean `{o}`?")).unwrap_or_default();
                cx.push(meta.error(format!(
                    "unknown option `{unknown}` in #[inbox(…)];{hint} options are {}",
                    OPTIONS.join(", ")
                )));
                skip_value(&meta)?;
            }
            Ok(())
        });
    let result = parser.parse2(args);
    cx.ok(result);

    Options {
        subject: subject.into_inner(),
        actions: actions.into_inner(),
        name: name.into_inner(),
        renamed_from: renamed_from.into_inner(),
        filter: filter.into_inner(),
        key: order_key.into_inner(),
        spread: spread.into_inner(),
        max_attempts: max_attempts.into_inner(),
        backoff: backoff.into_inner(),
        backoff_max: backoff_max.into_inner(),
        timeout: timeout.into_inner(),
        start_from: start_from.into_inner(),
        krate: krate.into_inner(),
    }
}

/// `actions = ["a", "b"]`; elements that are not strings are reported one by one.
fn action_list(meta: &ParseNestedMeta<'_>, cx: &mut Errors) -> Option<ActionList> {
    let expr: Expr = cx.ok(meta.value().and_then(|v| v.parse()))?;
    let expr = match expr {
        Expr::Array(array) => array,
        Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) => {
            let message = format!("expected a list of actions: actions = [\"{}\"]", lit.value());
            cx.spanned(lit, message);
            return None;
        }
        other => {
            cx.spanned(other, "expected a list of actions: actions = [\"assigned\", \"commented\"]");
            return None;
        }
    };
    let mut names = Vec::new();
    for element in &expr.elems {
        match element {
            Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) => names.push(lit.clone()),
            other => cx.spanned(
                other,
                format!(
                    "expected an action name as a string: \"{}\"",
                    crate::names::snake_case(&path_name_of(other).unwrap_or_else(|| "assigned".to_owned()))
                ),
            ),
        }
    }
    Some(ActionList { expr, names })
}

/// The name of a bare identifier written where a string was expected (`Assigned`).
fn path_name_of(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Path(p) if p.qself.is_none() => p.path.get_ident().map(ToString::to_string),
        _ => None,
    }
}

/// `filter = path::to::fn`.
fn fn_path(meta: &ParseNestedMeta<'_>) -> syn::Result<Path> {
    match meta.value()?.parse::<Expr>()? {
        Expr::Path(p) if p.qself.is_none() => Ok(p.path),
        other => Err(syn::Error::new_spanned(
            other,
            "expected the path of a function: filter = path::to::fn, where fn(&Event) -> bool",
        )),
    }
}

/// `max_attempts = 5`.
fn attempts(meta: &ParseNestedMeta<'_>) -> syn::Result<MaxAttempts> {
    const FORM: &str = "expected a whole number of at least 1: max_attempts = 5";
    match meta.value()?.parse::<Expr>()? {
        Expr::Lit(ExprLit { lit: Lit::Int(lit), .. }) => {
            let value = lit.base10_parse::<u32>().map_err(|_| {
                syn::Error::new(lit.span(), format!("max_attempts = {lit} does not fit in a u32; {FORM}"))
            })?;
            Ok(MaxAttempts { lit, value })
        }
        other => Err(syn::Error::new_spanned(other, FORM)),
    }
}

/// `backoff = "500ms"`: the duration in milliseconds.
fn duration(meta: &ParseNestedMeta<'_>, key: &str, example: &str) -> syn::Result<DurationValue> {
    let lit = match meta.value()?.parse::<Expr>()? {
        Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) => lit,
        Expr::Lit(ExprLit { lit: Lit::Int(int), .. }) => {
            return Err(syn::Error::new(
                int.span(),
                format!("a duration needs a unit, in a string: {key} = \"{}ms\" or {key} = \"{}s\"", int, int),
            ));
        }
        other => {
            return Err(syn::Error::new_spanned(other, format!("expected a duration string: {key} = \"{example}\"")));
        }
    };
    match parse_duration(&lit.value()) {
        Ok(millis) => Ok(DurationValue { lit, millis }),
        Err(reason) => Err(syn::Error::new(
            lit.span(),
            format!(
                "invalid duration \"{}\" in {key} = \"…\": {reason}; write whole numbers with units ms, s, m or h, \
                 e.g. {key} = \"{example}\" or \"1m30s\"",
                lit.value()
            ),
        )),
    }
}

/// `"500ms"`, `"30s"`, `"10m"`, `"1h"`, `"1m30s"` in milliseconds; the error says why not.
pub(crate) fn parse_duration(text: &str) -> Result<u64, String> {
    if text.is_empty() {
        return Err("it is empty".to_owned());
    }
    let mut rest = text;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            let bad = rest.chars().next().map(String::from).unwrap_or_default();
            return Err(if bad == "." || bad == "," {
                "fractions are not supported".to_owned()
            } else if bad == "-" {
                "it cannot be negative".to_owned()
            } else {
                format!("expected a number before `{rest}`")
            });
        }
        let (number, after) = rest.split_at(digits);
        let units = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
        let (unit, after) = after.split_at(units);
        let scale: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" if after.starts_with(['.', ',']) => return Err("fractions are not supported".to_owned()),
            "" => return Err(format!("`{number}` has no unit")),
            other => return Err(format!("unknown unit `{other}`")),
        };
        let value = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(scale))
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| "it is too long".to_owned())?;
        total = value;
        rest = after;
    }
    Ok(total)
}

/// `start_from = "now" | "beginning"`.
fn start(meta: &ParseNestedMeta<'_>) -> syn::Result<StartFrom> {
    let lit = string_value(meta, "start_from")?;
    match lit.value().as_str() {
        "now" => Ok(StartFrom::Now),
        "beginning" => Ok(StartFrom::Beginning),
        other => Err(syn::Error::new(
            lit.span(),
            format!(
                "unknown start_from \"{other}\"; write start_from = \"now\" (the default: events recorded from now on) \
                 or start_from = \"beginning\" (every recorded event)"
            ),
        )),
    }
}

/// `spread = true | false`: a bool literal; a string, a number or a path is reported at it.
fn bool_value(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<LitBool> {
    match meta.value()?.parse::<Expr>()? {
        Expr::Lit(ExprLit { lit: Lit::Bool(lit), .. }) => Ok(lit),
        // `spread = "false"` means false: say so rather than suggest `true`.
        Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) if matches!(lit.value().as_str(), "true" | "false") => {
            Err(syn::Error::new(lit.span(), format!("expected a bool, not a string: {key} = {}", lit.value())))
        }
        other => Err(syn::Error::new_spanned(other, format!("expected a bool: {key} = true"))),
    }
}

/// What `key = …` accepts, for the messages.
const KEY_FORMS: &str = "key = \"subject\" (the default: one subject's events in commit order), \"actor\", \
                         \"correlation\", \"none\" (no order) or key = path::to::fn (a fn(&Event) -> String)";

/// `key = "subject" | "actor" | "correlation" | "none"` or `key = path::to::fn`.
fn key_value(meta: &ParseNestedMeta<'_>) -> syn::Result<Key> {
    match meta.value()?.parse::<Expr>()? {
        Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) => match lit.value().as_str() {
            "subject" => Ok(Key::Subject),
            "actor" => Ok(Key::Actor),
            "correlation" => Ok(Key::Correlation),
            "none" => Ok(Key::None),
            other => Err(syn::Error::new(lit.span(), format!("unknown key \"{other}\"; write {KEY_FORMS}"))),
        },
        Expr::Path(p) if p.qself.is_none() => Ok(Key::Fn(p.path)),
        closure @ Expr::Closure(_) => Err(syn::Error::new_spanned(
            closure,
            "expected the path of a function, not a closure: key = path::to::fn, where fn(&Event) -> String",
        )),
        other => Err(syn::Error::new_spanned(other, format!("expected a key: {KEY_FORMS}"))),
    }
}

/// The option closest to a misspelt one, if any is close.
fn closest(unknown: &str) -> Option<&'static str> {
    OPTIONS
        .into_iter()
        .map(|option| (distance(unknown, option), option))
        .filter(|&(d, option)| d <= 2 && d < option.len())
        .min()
        .map(|(_, option)| option)
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("10m"), Ok(600_000));
        assert_eq!(parse_duration("1h"), Ok(3_600_000));
        assert_eq!(parse_duration("1m30s"), Ok(90_000));
        assert_eq!(parse_duration("0s"), Ok(0));
        assert_eq!(parse_duration(""), Err("it is empty".to_owned()));
        assert_eq!(parse_duration("500"), Err("`500` has no unit".to_owned()));
        assert_eq!(parse_duration("5min"), Err("unknown unit `min`".to_owned()));
        assert_eq!(parse_duration("1.5s"), Err("fractions are not supported".to_owned()));
        assert_eq!(parse_duration("-1s"), Err("it cannot be negative".to_owned()));
        assert_eq!(parse_duration("5 s"), Err("`5` has no unit".to_owned()));
        assert_eq!(parse_duration("ms"), Err("expected a number before `ms`".to_owned()));
        assert_eq!(parse_duration("99999999999999999999h"), Err("it is too long".to_owned()));
    }

    #[test]
    fn suggestions() {
        assert_eq!(closest("action"), Some("actions"));
        assert_eq!(closest("backof"), Some("backoff"));
        assert_eq!(closest("keys"), Some("key"));
        assert_eq!(closest("spred"), Some("spread"));
        assert_eq!(closest("colour"), None);
        assert_eq!(closest("x"), None);
    }

    /// The options read from `#[inbox(<args>)]`, or the messages of what was reported.
    fn parse(args: TokenStream) -> Result<Options, Vec<String>> {
        let mut cx = Errors::new();
        let options = options(args, &mut cx);
        cx.finish().map(|()| options).map_err(|e| e.into_iter().map(|e| e.to_string()).collect())
    }

    fn key(args: TokenStream) -> Option<Key> {
        parse(args).unwrap_or_else(|e| panic!("{e:?}")).key
    }

    #[test]
    fn keys() {
        use quote::quote;

        assert!(key(quote!()).is_none());
        assert!(matches!(key(quote!(key = "subject")), Some(Key::Subject)));
        assert!(matches!(key(quote!(key = "actor")), Some(Key::Actor)));
        assert!(matches!(key(quote!(key = "correlation")), Some(Key::Correlation)));
        assert!(matches!(key(quote!(key = "none")), Some(Key::None)));
        match key(quote!(subject = "issue", key = crate::keys::tenant, max_attempts = 3)) {
            Some(Key::Fn(path)) => assert_eq!(path_name(&path), "crate::keys::tenant"),
            _ => panic!("expected Key::Fn"),
        }

        let errors = |args| parse(args).err().unwrap_or_default();
        assert_eq!(errors(quote!(key = "subjet")), [format!("unknown key \"subjet\"; write {KEY_FORMS}")]);
        assert_eq!(errors(quote!(key = 3)), [format!("expected a key: {KEY_FORMS}")]);
        assert_eq!(errors(quote!(key = "Actor")), [format!("unknown key \"Actor\"; write {KEY_FORMS}")]);
        assert_eq!(
            errors(quote!(key = |e: &Event| e.action.clone())),
            ["expected the path of a function, not a closure: key = path::to::fn, where fn(&Event) -> String"]
        );
        assert_eq!(
            errors(quote!(key = "actor", key = "none")),
            ["duplicate option `key` in #[inbox(…)]; give it once"]
        );
        let misspelt = errors(quote!(kye = "actor"));
        assert!(matches!(&misspelt[..], [one] if one.contains("did you mean `key`?")), "{misspelt:?}");
    }

    #[test]
    fn spreads() {
        use quote::quote;

        let spread = |args| parse(args).unwrap_or_else(|e| panic!("{e:?}")).spread.map(|lit| lit.value);
        assert_eq!(spread(quote!()), None);
        assert_eq!(spread(quote!(spread = true)), Some(true));
        assert_eq!(spread(quote!(subject = "issue", spread = false, key = "actor")), Some(false));

        let errors = |args| parse(args).err().unwrap_or_default();
        assert_eq!(errors(quote!(spread = "yes")), ["expected a bool: spread = true"]);
        assert_eq!(errors(quote!(spread = 1)), ["expected a bool: spread = true"]);
        assert_eq!(errors(quote!(spread = yes)), ["expected a bool: spread = true"]);
        assert_eq!(errors(quote!(spread = "false")), ["expected a bool, not a string: spread = false"]);
        assert_eq!(
            errors(quote!(spread = true, spread = false)),
            ["duplicate option `spread` in #[inbox(…)]; give it once"]
        );
    }
}
