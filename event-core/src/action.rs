//! Declared actions: which action names each subject type accepts.
//!
//! A subject type with at least one declaration only accepts its declared actions;
//! recording anything else is [`Error::UnknownAction`]. Subject types nobody declared
//! accept any non-empty action. Declarations are collected at link time through
//! [`inventory`], so the order of declarations never matters.
//!
//! `#[derive(Action)]` writes the declaration for you. By hand:
//!
//! ```
//! event_core::declare_actions!(subject = "invoice", actions = ["issued", "paid"]);
//!
//! assert!(event_core::action::declared("invoice").unwrap().contains(&"paid"));
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The action every subject with a state machine accepts: a persisted transition.
pub const STATUS_CHANGED: &str = "status_changed";

/// One declaration of actions for a subject type, submitted to [`inventory`].
///
/// Several declarations for one subject add up.
#[derive(Debug)]
pub struct ActionDeclaration {
    /// The subject type, e.g. `"issue"`.
    pub subject: &'static str,
    /// The snake_case action names this declaration adds.
    pub actions: &'static [&'static str],
}

inventory::collect!(ActionDeclaration);

/// An enum of actions for one subject type, usually derived with `#[derive(Action)]`.
pub trait Action: AsRef<str> {
    /// The subject type these actions belong to.
    const SUBJECT: &'static str;

    /// The snake_case name stored in the events table.
    fn as_str(&self) -> &'static str;
}

fn registry() -> &'static HashMap<&'static str, BTreeSet<&'static str>> {
    static REGISTRY: OnceLock<HashMap<&'static str, BTreeSet<&'static str>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut map: HashMap<&'static str, BTreeSet<&'static str>> = HashMap::new();
        for decl in inventory::iter::<ActionDeclaration> {
            map.entry(decl.subject).or_default().extend(decl.actions.iter().copied());
        }
        map
    })
}

/// The actions declared for `subject`, sorted, or `None` if nobody declared any.
pub fn declared(subject: &str) -> Option<Vec<&'static str>> {
    registry().get(subject).map(|set| set.iter().copied().collect())
}

/// Every subject type with declarations, sorted.
pub fn subjects() -> Vec<&'static str> {
    let mut v: Vec<_> = registry().keys().copied().collect();
    v.sort_unstable();
    v
}

/// Checks `action` against the declarations for `subject`.
pub(crate) fn check(subject: &str, action: &str) -> Result<()> {
    if action.is_empty() {
        return Err(Error::EmptyAction);
    }
    match registry().get(subject) {
        Some(set) if !set.contains(action) => Err(Error::UnknownAction {
            subject: subject.to_owned(),
            action: action.to_owned(),
            allowed: set.iter().copied().collect(),
        }),
        _ => Ok(()),
    }
}

/// Declares the actions a subject type accepts, without the derive.
///
/// ```
/// event_core::declare_actions!(subject = "ticket", actions = ["opened", "closed"]);
/// ```
#[macro_export]
macro_rules! declare_actions {
    (subject = $subject:literal, actions = [$($action:literal),* $(,)?] $(,)?) => {
        $crate::__private::inventory::submit! {
            $crate::action::ActionDeclaration { subject: $subject, actions: &[$($action),*] }
        }
    };
}
