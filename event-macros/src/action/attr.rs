//! Parsing of `#[action(…)]` on the enum and on its variants.

use syn::{Attribute, LitStr, Path};

use crate::common::{crate_value, path_name, skip_value, string_value};
use crate::ctxt::Errors;
use crate::once::Once;

/// The options of `#[action(subject = "issue")]` on the enum.
pub(crate) struct Options {
    pub(crate) subject: Option<LitStr>,
    pub(crate) krate: Option<Path>,
}

/// Reads every `#[action(…)]` on the enum.
pub(crate) fn options(attrs: &[Attribute], cx: &mut Errors) -> Options {
    let mut subject = Once::new("action", "subject");
    let mut krate = Once::new("action", "crate");
    for attr in attrs.iter().filter(|a| a.path().is_ident("action")) {
        let result = attr.parse_nested_meta(|meta| {
            let path = &meta.path;
            if path.is_ident("subject") {
                subject.set(cx, path, string_value(&meta, "subject")?);
            } else if path.is_ident("crate") {
                krate.set(cx, path, crate_value(&meta)?);
            } else {
                let hint = if path.is_ident("rename") { " (rename goes on a variant)" } else { "" };
                cx.push(meta.error(format!(
                    "unknown option `{}` in #[action(…)] on the enum; options are subject, crate{hint}",
                    path_name(path)
                )));
                skip_value(&meta)?;
            }
            Ok(())
        });
        cx.ok(result);
    }
    Options { subject: subject.into_inner(), krate: krate.into_inner() }
}

/// Reads `#[action(rename = "…")]` on a variant.
pub(crate) fn rename(attrs: &[Attribute], cx: &mut Errors) -> Option<LitStr> {
    let mut rename = Once::new("action", "rename");
    for attr in attrs.iter().filter(|a| a.path().is_ident("action")) {
        let result = attr.parse_nested_meta(|meta| {
            let path = &meta.path;
            if path.is_ident("rename") {
                rename.set(cx, path, string_value(&meta, "rename")?);
            } else {
                cx.push(meta.error(format!(
                    "unknown option `{}` in #[action(…)] on a variant; the only option is rename = \"…\"",
                    path_name(path)
                )));
                skip_value(&meta)?;
            }
            Ok(())
        });
        cx.ok(result);
    }
    rename.into_inner()
}
