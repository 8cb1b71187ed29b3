//! Names: the snake_case strings states and actions are stored as.

/// `InProgress` → `in_progress`, `HTTPError` → `http_error`, `V2Beta` → `v2_beta`.
pub(crate) fn snake_case(ident: &str) -> String {
    let chars: Vec<char> = ident.chars().collect();
    let mut out = String::with_capacity(ident.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            if let Some(&prev) = i.checked_sub(1).and_then(|p| chars.get(p)) {
                let next_is_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
                let boundary = prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_is_lower);
                if boundary && !out.ends_with('_') {
                    out.push('_');
                }
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `name` is already snake_case (what a method name should be).
pub(crate) fn is_snake_case(name: &str) -> bool {
    !name.chars().any(char::is_uppercase) && !name.contains("__")
}

/// Whether `name` is a plain SQL identifier, with a `schema.` prefix if `qualified`.
pub(crate) fn is_sql_identifier(name: &str, qualified: bool) -> bool {
    let plain = |part: &str| {
        let mut chars = part.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match name.split_once('.') {
        Some((schema, table)) if qualified => plain(schema) && plain(table),
        Some(_) => false,
        None => plain(name),
    }
}

/// `A, B, C`.
pub(crate) fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items.into_iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_matches_heck() {
        for (camel, snake) in [
            ("Open", "open"),
            ("InProgress", "in_progress"),
            ("HTTPError", "http_error"),
            ("V2Beta", "v2_beta"),
            ("ABC", "abc"),
            ("Already_Snake", "already_snake"),
            ("status_changed", "status_changed"),
            ("Created", "created"),
        ] {
            assert_eq!(snake_case(camel), snake, "{camel}");
        }
    }

    #[test]
    fn sql_identifiers() {
        assert!(is_sql_identifier("issues", true));
        assert!(is_sql_identifier("app.issues", true));
        assert!(!is_sql_identifier("app.issues", false));
        assert!(!is_sql_identifier("is sues", true));
        assert!(!is_sql_identifier("1issues", true));
        assert!(!is_sql_identifier("", true));
        assert!(!is_sql_identifier("issues; drop table x", true));
    }
}
