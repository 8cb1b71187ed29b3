//! Persisted transitions: a compare-and-swap of the subject's state and exactly one
//! `status_changed` event, in the caller's transaction, all or nothing.
//!
//! The current state is read, the pure transition computed (and its guard checked),
//! then one atomic step writes both the new state — only where the state is still
//! `from` — and the event. If another transaction moved the subject first, the swap
//! matches no row and the call fails with [`Error::StaleState`], having written nothing.

use std::future::{Future, IntoFuture};
use std::pin::Pin;

use serde::Serialize;
use serde_json::Value;

use crate::action::STATUS_CHANGED;
use crate::error::{Error, Result};
use crate::model::{Actor, Event, NewEvent, Subject};
use crate::state_machine::{GuardInput, InvalidTransition, StateMachine, Storage, Transition, UnknownState};
use crate::store::Transaction;

/// A pure transition method of a machine, such as `IssueStatus::start`.
pub type EventFn<S> = fn(S) -> std::result::Result<Transition<S>, InvalidTransition>;

/// Starts a persisted transition of `subject` by `event`; `.await` it to run it.
///
/// Usually called as `IssueStatus::fire(&mut tx, subject, IssueStatus::start, &actor)`.
pub fn fire<'t, 'c, S: StateMachine>(
    tx: &'t mut Transaction<'c>,
    subject: impl Into<Subject>,
    event: EventFn<S>,
    actor: impl Into<Actor>,
) -> Fire<'t, 'c, S> {
    Fire { tx, source: Source::Event(event), record: NewEvent::new(subject, STATUS_CHANGED, actor) }
}

/// Starts a persisted transition of `subject` by the event named `event` (from a
/// form or an API): [`Error::UnknownEvent`] if the machine has no such event.
///
/// Usually called as `IssueStatus::fire_named(&mut tx, subject, "start", &actor)`.
pub fn fire_named<'t, 'c, S: StateMachine>(
    tx: &'t mut Transaction<'c>,
    subject: impl Into<Subject>,
    event: &str,
    actor: impl Into<Actor>,
) -> Fire<'t, 'c, S> {
    Fire { tx, source: Source::Named(event.to_owned()), record: NewEvent::new(subject, STATUS_CHANGED, actor) }
}

/// Starts persisting a transition computed beforehand, e.g. from a state loaded with
/// the subject: `IssueStatus::apply(&mut tx, subject, loaded.start()?, &actor)`.
///
/// Optimistic concurrency: if the stored state is no longer `transition.from`, the
/// await fails with [`Error::StaleState`] and nothing is written.
pub fn apply<'t, 'c, S: StateMachine>(
    tx: &'t mut Transaction<'c>,
    subject: impl Into<Subject>,
    transition: Transition<S>,
    actor: impl Into<Actor>,
) -> Fire<'t, 'c, S> {
    Fire { tx, source: Source::Known(transition), record: NewEvent::new(subject, STATUS_CHANGED, actor) }
}

/// Where the transition comes from: an event fired from the stored state, or a
/// transition the caller computed.
#[derive(Debug, Clone)]
enum Source<S: 'static> {
    Event(EventFn<S>),
    Named(String),
    Known(Transition<S>),
}

/// A persisted transition: the transition, and the `status_changed` event it
/// recorded (for [`caused_by`](crate::Record::caused_by), logs, a reply).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Fired<S> {
    /// The event that fired, e.g. `"start"`.
    pub event: &'static str,
    /// The state before.
    pub from: S,
    /// The state after.
    pub to: S,
    /// The `status_changed` event recorded with it.
    pub recorded: Event,
}

impl<S: Copy> Fired<S> {
    /// The transition alone.
    pub fn transition(&self) -> Transition<S> {
        Transition { event: self.event, from: self.from, to: self.to }
    }
}

/// A pending persisted transition; see [`fire`] and [`apply`].
#[derive(Debug)]
#[must_use = "a transition does nothing until it is awaited"]
pub struct Fire<'t, 'c, S: StateMachine> {
    tx: &'t mut Transaction<'c>,
    source: Source<S>,
    record: NewEvent,
}

impl<S: StateMachine> Fire<'_, '_, S> {
    /// Metadata for the `status_changed` event. It must be a JSON object; its `from`,
    /// `to` and `event` keys are always overwritten with the transition's own.
    pub fn metadata(mut self, metadata: impl Serialize) -> Self {
        self.record = self.record.metadata(metadata);
        self
    }

    /// Marks the `status_changed` event as caused by `cause`.
    pub fn caused_by(mut self, cause: &crate::Event) -> Self {
        self.record = self.record.caused_by(cause);
        self
    }

    async fn run(self) -> Result<Fired<S>> {
        let Fire { tx, source, mut record } = self;
        if record.subject.kind != S::SUBJECT {
            return Err(Error::WrongSubject { expected: S::SUBJECT, given: record.subject.kind });
        }
        record.validate()?;
        check_storage(S::STORAGE)?;
        let transition = match source {
            Source::Event(event) => event(tx.state::<S>(&record.subject).await?)?,
            Source::Named(name) => {
                let Some(rule) = S::rule(&name) else {
                    let events = S::TRANSITIONS.iter().map(|r| r.event).collect();
                    return Err(Error::UnknownEvent { subject: S::SUBJECT, name, events });
                };
                tx.state::<S>(&record.subject).await?.fire_event(rule.event)?
            }
            Source::Known(t) => t.from.fire_event(t.event)?,
        };
        if let Some(guard) = S::rule(transition.event).and_then(|rule| rule.guard) {
            let input = GuardInput {
                transition: &transition,
                subject: &record.subject,
                actor: &record.actor,
                metadata: &record.metadata,
            };
            guard(&input).map_err(|reason| Error::GuardRejected {
                subject: record.subject.to_string(),
                event: transition.event,
                reason,
            })?;
        }
        record.metadata.insert("from".into(), Value::from(transition.from.name()));
        record.metadata.insert("to".into(), Value::from(transition.to.name()));
        record.metadata.insert("event".into(), Value::from(transition.event));
        let subject = record.subject.to_string();
        let swap = Swap {
            storage: S::STORAGE,
            from: transition.from.name(),
            to: transition.to.name(),
            initial: S::INITIAL.name(),
        };
        match tx.swap_state(swap, record).await? {
            Some(recorded) => {
                let Transition { event, from, to } = transition;
                Ok(Fired { event, from, to, recorded })
            }
            None => Err(Error::StaleState { subject, expected: transition.from.name() }),
        }
    }
}

impl<'t, 'c, S: StateMachine> IntoFuture for Fire<'t, 'c, S> {
    type Output = Result<Fired<S>>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 't>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// One compare-and-swap of a state: where it lives, what it must be, what it becomes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Swap {
    pub(crate) storage: Storage,
    pub(crate) from: &'static str,
    pub(crate) to: &'static str,
    /// The machine's initial state: a subject with no stored state is in it.
    pub(crate) initial: &'static str,
}

impl<'c> Transaction<'c> {
    /// The current state of `subject` under machine `S`, read in this transaction.
    ///
    /// For a machine kept by Herald, a subject that never transitioned is in
    /// `S::INITIAL`; for a machine kept in your table, the row must exist.
    pub async fn state<S: StateMachine>(&mut self, subject: &Subject) -> Result<S> {
        if subject.kind != S::SUBJECT {
            return Err(Error::WrongSubject { expected: S::SUBJECT, given: subject.kind.clone() });
        }
        check_storage(S::STORAGE)?;
        match self.read_state(S::STORAGE, subject).await? {
            Some(name) => S::from_name(&name).ok_or_else(|| UnknownState::of::<S>(&name).into()),
            None => match S::STORAGE {
                Storage::Herald => Ok(S::INITIAL),
                Storage::Column { table, key, .. } => Err(Error::MissingRow { table, key, id: subject.id.clone() }),
            },
        }
    }
}

/// Table and column names are spliced into SQL: only plain identifiers are allowed.
pub(crate) fn check_storage(storage: Storage) -> Result<()> {
    if let Storage::Column { table, column, key } = storage {
        for name in [table, column, key] {
            let plain = |part: &str| {
                part.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            };
            if !name.split('.').all(plain) || name.split('.').count() > 2 {
                return Err(Error::InvalidIdentifier(name));
            }
        }
    }
    Ok(())
}
