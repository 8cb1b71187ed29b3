//! The event model: who did what to which subject, when, and why.

use std::fmt;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The id of a recorded event. Ids grow with time but are not a commit order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub i64);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What an event is about: a type (`"issue"`) and an id (`"42"`, or a UUID).
///
/// Ids are stored as text, so integer, string and UUID keys all work.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Subject {
    /// The subject type, e.g. `"issue"`. Must not be empty.
    pub kind: String,
    /// The subject's id, as text.
    pub id: String,
}

impl Subject {
    /// A subject of type `kind` with the given id (anything displayable).
    ///
    /// ```
    /// # use event_core::Subject;
    /// assert_eq!(Subject::new("issue", 42).id, "42");
    /// ```
    pub fn new(kind: impl Into<String>, id: impl fmt::Display) -> Self {
        Subject { kind: kind.into(), id: id.to_string() }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.id)
    }
}

/// Who caused an event: a type (`"user"`) and an id, or the system itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// The actor type, e.g. `"user"`. Must not be empty.
    pub kind: String,
    /// The actor's id, as text.
    pub id: String,
}

impl Actor {
    /// The actor type used by [`Actor::system`].
    pub const SYSTEM: &'static str = "system";

    /// An actor of type `kind` with the given id.
    pub fn new(kind: impl Into<String>, id: impl fmt::Display) -> Self {
        Actor { kind: kind.into(), id: id.to_string() }
    }

    /// The system actor: work nobody in particular asked for (jobs, automations).
    pub fn system() -> Self {
        Actor { kind: Self::SYSTEM.to_owned(), id: Self::SYSTEM.to_owned() }
    }

    /// Whether this is [`Actor::system`].
    pub fn is_system(&self) -> bool {
        self.kind == Self::SYSTEM
    }
}

impl fmt::Display for Actor {
    /// `user:7`, or `system` for [`Actor::system`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_system() && self.id == Self::SYSTEM {
            return f.write_str(Self::SYSTEM);
        }
        write!(f, "{}:{}", self.kind, self.id)
    }
}

impl From<&Actor> for Actor {
    fn from(a: &Actor) -> Self {
        a.clone()
    }
}

impl From<&Subject> for Subject {
    fn from(s: &Subject) -> Self {
        s.clone()
    }
}

/// A recorded event: an immutable fact.
///
/// Nothing in Herald updates or deletes an event, and the database refuses it too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Event {
    /// The event's id.
    pub id: EventId,
    /// What the event is about.
    pub subject: Subject,
    /// Who caused it.
    pub actor: Actor,
    /// What happened, a snake_case action name such as `"commented"`.
    pub action: String,
    /// Free-form facts about what happened; always a JSON object.
    pub metadata: Map<String, Value>,
    /// When it was recorded (UTC, microsecond precision).
    pub created_at: DateTime<Utc>,
    /// The event that directly caused this one, if any.
    pub causation_id: Option<EventId>,
    /// The root of the causal chain this event belongs to (its own id for a root event).
    pub correlation_id: EventId,
}

impl Event {
    /// The metadata value stored under `key`.
    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
}

/// An event that is about to be recorded: validated, not yet written.
///
/// Build one with [`NewEvent::new`] for batch recording
/// ([`Transaction::record_all`](crate::Transaction::record_all)).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub(crate) subject: Subject,
    pub(crate) actor: Actor,
    pub(crate) action: String,
    pub(crate) metadata: Map<String, Value>,
    pub(crate) causation_id: Option<EventId>,
    pub(crate) correlation_id: Option<EventId>,
    /// First error met while building; reported when recorded.
    pub(crate) invalid: Option<BuildError>,
}

/// An error found while building a [`NewEvent`], reported when it is recorded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BuildError {
    NotObject(&'static str),
    Serialize(String),
}

impl NewEvent {
    /// An event about `subject`, caused by `actor`, with an empty metadata object.
    pub fn new(subject: impl Into<Subject>, action: impl AsRef<str>, actor: impl Into<Actor>) -> Self {
        NewEvent {
            subject: subject.into(),
            actor: actor.into(),
            action: action.as_ref().to_owned(),
            metadata: Map::new(),
            causation_id: None,
            correlation_id: None,
            invalid: None,
        }
    }

    /// Sets the metadata; it must serialize to a JSON object.
    ///
    /// Anything else is reported as [`Error::MetadataNotObject`] when the event is recorded.
    pub fn metadata(mut self, metadata: impl Serialize) -> Self {
        match serde_json::to_value(metadata) {
            Ok(Value::Object(map)) => self.metadata = map,
            Ok(other) => self.invalid = Some(BuildError::NotObject(json_kind(&other))),
            Err(e) => self.invalid = Some(BuildError::Serialize(e.to_string())),
        }
        self
    }

    /// Marks `cause` as the event that caused this one: sets the causation id and
    /// carries over the cause's correlation id.
    pub fn caused_by(mut self, cause: &Event) -> Self {
        self.causation_id = Some(cause.id);
        self.correlation_id = Some(cause.correlation_id);
        self
    }

    /// The subject this event is about.
    pub fn subject(&self) -> &Subject {
        &self.subject
    }

    /// The action name.
    pub fn action(&self) -> &str {
        &self.action
    }

    /// Checks everything that can be checked without the database.
    pub(crate) fn validate(&self) -> Result<()> {
        match &self.invalid {
            Some(BuildError::NotObject(found)) => return Err(Error::MetadataNotObject { found }),
            Some(BuildError::Serialize(reason)) => {
                return Err(Error::MetadataSerialize { reason: reason.clone() });
            }
            None => {}
        }
        if self.subject.kind.is_empty() {
            return Err(Error::EmptySubjectType);
        }
        if self.actor.kind.is_empty() {
            return Err(Error::EmptyActorType);
        }
        crate::action::check(&self.subject.kind, &self.action)
    }

    /// Turns the validated event into the stored fact, given its id and time.
    pub(crate) fn into_event(self, id: EventId, created_at: DateTime<Utc>) -> Event {
        Event {
            id,
            subject: self.subject,
            actor: self.actor,
            action: self.action,
            metadata: self.metadata,
            created_at,
            causation_id: self.causation_id,
            correlation_id: self.correlation_id.unwrap_or(id),
        }
    }
}

/// "an array", "a string", … for error messages.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The current time at the precision both backends store (microseconds).
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
