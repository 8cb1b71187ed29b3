//! State machines: the runtime behind `#[derive(StateMachine)]`.
//!
//! The derive implements [`StateMachine`] with const tables (states, transition
//! rules); everything else — pure transitions, permitted events, the Mermaid diagram —
//! is computed here from those tables, once, for every machine.

use std::fmt;

use serde_json::{Map, Value};

use crate::model::{Actor, Subject};

/// One `#[transition(event: A | B -> C, guard = path)]` line.
#[derive(Debug)]
pub struct TransitionRule<S: 'static> {
    /// The event name, e.g. `"start"`.
    pub event: &'static str,
    /// The states it may fire from.
    pub from: &'static [S],
    /// The state it leads to.
    pub to: S,
    /// A guard checked when the transition is persisted.
    pub guard: Option<Guard<S>>,
}

/// A guard: decides, when a transition is persisted, whether it may happen.
/// Returning `Err(reason)` refuses it with [`Error::GuardRejected`](crate::Error::GuardRejected).
pub type Guard<S> = fn(&GuardInput<'_, S>) -> Result<(), String>;

/// What a guard sees.
#[derive(Debug)]
#[non_exhaustive]
pub struct GuardInput<'a, S> {
    /// The transition about to be persisted.
    pub transition: &'a Transition<S>,
    /// The subject whose state changes.
    pub subject: &'a Subject,
    /// Who asks for it.
    pub actor: &'a Actor,
    /// The caller's metadata for the `status_changed` event.
    pub metadata: &'a Map<String, Value>,
}

/// A legal move from one state to another, produced by a pure transition method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transition<S> {
    /// The event that fired.
    pub event: &'static str,
    /// The state before.
    pub from: S,
    /// The state after.
    pub to: S,
}

/// An event fired from a state it is not allowed in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid transition: `{event}` cannot fire from `{from}` on {subject}; permitted from `{from}`: {}",
    if permitted.is_empty() { "none".to_owned() } else { permitted.join(", ") }
)]
pub struct InvalidTransition {
    /// The subject type of the machine.
    pub subject: &'static str,
    /// The event that was fired.
    pub event: &'static str,
    /// The state it was fired from (snake_case).
    pub from: &'static str,
    /// The events that may fire from `from`.
    pub permitted: Vec<&'static str>,
}

/// A name that is not one of a machine's states, from `FromStr`, serde or a
/// database column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state `{name}` for {subject}; states are {}", states.join(", "))]
pub struct UnknownState {
    /// The subject type of the machine.
    pub subject: &'static str,
    /// The name that was given.
    pub name: String,
    /// Every state of the machine (snake_case), in declaration order.
    pub states: Vec<&'static str>,
}

impl UnknownState {
    /// The error for `name` against the states of `S`.
    pub fn of<S: StateMachine>(name: &str) -> Self {
        UnknownState { subject: S::SUBJECT, name: name.to_owned(), states: S::STATES.iter().map(S::name).collect() }
    }
}

/// Where a machine's current state is persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// A column of the application's own table, keyed by the subject id.
    Column {
        /// The table, e.g. `"issues"`.
        table: &'static str,
        /// The state column, e.g. `"status"`.
        column: &'static str,
        /// The key column matched against the subject id, `"id"` by default.
        key: &'static str,
    },
    /// Herald's own `herald_states` table.
    Herald,
}

/// A status enum whose values are the states of a machine.
///
/// Implemented by `#[derive(StateMachine)]`; the provided methods derive everything
/// else from the const tables.
pub trait StateMachine: Copy + Eq + fmt::Debug + Send + Sync + Sized + 'static {
    /// The subject type whose status this is, e.g. `"issue"`.
    const SUBJECT: &'static str;
    /// Where the current state is kept.
    const STORAGE: Storage;
    /// Every state, in declaration order.
    const STATES: &'static [Self];
    /// Every transition rule, in declaration order.
    const TRANSITIONS: &'static [TransitionRule<Self>];
    /// The `#[initial]` state.
    const INITIAL: Self;

    /// The snake_case name of the state.
    fn name(&self) -> &'static str;

    /// The state named `name` (snake_case), if any.
    fn from_name(name: &str) -> Option<Self> {
        Self::STATES.iter().copied().find(|s| s.name() == name)
    }

    /// The rule for `event`, if the machine has one.
    fn rule(event: &str) -> Option<&'static TransitionRule<Self>> {
        Self::TRANSITIONS.iter().find(|r| r.event == event)
    }

    /// Fires `event` from `self`, without side effects.
    fn fire_event(self, event: &'static str) -> Result<Transition<Self>, InvalidTransition> {
        match Self::rule(event) {
            Some(rule) if rule.from.contains(&self) => Ok(Transition { event: rule.event, from: self, to: rule.to }),
            _ => Err(InvalidTransition { subject: Self::SUBJECT, event, from: self.name(), permitted: self.events() }),
        }
    }

    /// The events that may fire from `self`, in declaration order.
    fn events(&self) -> Vec<&'static str> {
        Self::TRANSITIONS.iter().filter(|r| r.from.contains(self)).map(|r| r.event).collect()
    }

    /// Starts a persisted transition: `IssueStatus::fire(&mut tx, subject, IssueStatus::start, &actor)`.
    ///
    /// Awaiting it compares-and-swaps the stored state (it must still be the
    /// transition's `from`) and records one `status_changed` event with
    /// `{"from", "to", "event"}` merged into the caller's metadata, atomically, in `tx`;
    /// it returns the [`Fired`](crate::transition::Fired) transition with that event.
    fn fire<'t, 'c>(
        tx: &'t mut crate::Transaction<'c>,
        subject: impl Into<Subject>,
        event: crate::transition::EventFn<Self>,
        actor: impl Into<Actor>,
    ) -> crate::transition::Fire<'t, 'c, Self> {
        crate::transition::fire(tx, subject, event, actor)
    }

    /// Starts a persisted transition by the event's name, from a form or an API:
    /// `IssueStatus::fire_named(&mut tx, subject, "start", &actor)`. A name the
    /// machine does not have fails with [`Error::UnknownEvent`](crate::Error::UnknownEvent)
    /// (listing its events), one it has as [`fire`](Self::fire) does.
    fn fire_named<'t, 'c>(
        tx: &'t mut crate::Transaction<'c>,
        subject: impl Into<Subject>,
        event: &str,
        actor: impl Into<Actor>,
    ) -> crate::transition::Fire<'t, 'c, Self> {
        crate::transition::fire_named(tx, subject, event, actor)
    }

    /// Persists a transition computed beforehand (optimistic concurrency): fails with
    /// [`Error::StaleState`](crate::Error::StaleState) if the stored state is no longer
    /// `transition.from`. See [`transition::apply`](crate::transition::apply).
    fn apply<'t, 'c>(
        tx: &'t mut crate::Transaction<'c>,
        subject: impl Into<Subject>,
        transition: Transition<Self>,
        actor: impl Into<Actor>,
    ) -> crate::transition::Fire<'t, 'c, Self> {
        crate::transition::apply(tx, subject, transition, actor)
    }

    /// The machine as a Mermaid `stateDiagram-v2`.
    fn mermaid() -> String {
        let mut out = String::from("stateDiagram-v2\n");
        out.push_str(&format!("    [*] --> {}\n", Self::INITIAL.name()));
        for rule in Self::TRANSITIONS {
            for from in rule.from {
                out.push_str(&format!("    {} --> {}: {}\n", from.name(), rule.to.name(), rule.event));
            }
        }
        out
    }
}
