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

/// A stored event that could not be read back: a feed page lists it in
/// [`Page::unreadable`](crate::Page::unreadable), and an inbox gets it as a dead
/// letter, so it never blocks the events around it. Herald refuses at record time
/// what it could not read back; such rows come from raw SQL or older versions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unreadable {
    /// The event's id.
    pub id: EventId,
    /// What could not be read.
    pub reason: String,
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
    /// At most one event per key is ever recorded.
    pub(crate) idempotency_key: Option<String>,
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
            idempotency_key: None,
            invalid: None,
        }
    }

    /// Makes the record idempotent: if an event with this key was recorded before
    /// (ever, by anyone), nothing is written and the earlier event's id is given back
    /// ([`Record::idempotency_key`](crate::Record::idempotency_key); in
    /// [`record_all`](crate::Transaction::record_all), its id in the list).
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
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
        check_subject(&self.subject)?;
        check_actor(&self.actor)?;
        check_action(&self.action)?;
        check_metadata(&self.metadata)?;
        if let Some(key) = &self.idempotency_key {
            if key.is_empty() {
                return Err(Error::EmptyIdempotencyKey);
            }
            check_text("idempotency key", key, MAX_ID_BYTES)?;
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

/// The longest subject type, actor type and action, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// The longest subject id and actor id, in bytes.
///
/// Names and ids are indexed together, and PostgreSQL refuses an index row over
/// about 2.7 kB; the limits keep every index row well below it, on both backends.
pub const MAX_ID_BYTES: usize = 1024;
/// The deepest metadata nesting Herald records (the metadata object is level 1).
///
/// serde_json refuses to read JSON nested 128 levels deep, so deeper metadata
/// could be written but never read back; the margin leaves room for an [`Event`]
/// serialized inside your own messages.
pub const MAX_METADATA_DEPTH: usize = 64;

/// Refuses a string PostgreSQL could not store, or one longer than `max` bytes.
fn check_text(field: &'static str, text: &str, max: usize) -> Result<()> {
    if text.len() > max {
        return Err(Error::TooLong { field, len: text.len(), max });
    }
    if text.contains('\0') {
        return Err(Error::ContainsNul { field: field.to_owned() });
    }
    Ok(())
}

/// A subject Herald can store and look up: a type, an id, both storable.
pub(crate) fn check_subject(subject: &Subject) -> Result<()> {
    if subject.kind.is_empty() {
        return Err(Error::EmptySubjectType);
    }
    check_text("subject type", &subject.kind, MAX_NAME_BYTES)?;
    check_text("subject id", &subject.id, MAX_ID_BYTES)
}

/// An action name Herald can store and look up.
pub(crate) fn check_action(action: &str) -> Result<()> {
    check_text("action", action, MAX_NAME_BYTES)
}

/// An actor Herald can store and look up.
pub(crate) fn check_actor(actor: &Actor) -> Result<()> {
    if actor.kind.is_empty() {
        return Err(Error::EmptyActorType);
    }
    check_text("actor type", &actor.kind, MAX_NAME_BYTES)?;
    check_text("actor id", &actor.id, MAX_ID_BYTES)
}

/// Metadata that reads back as written: no NUL in any key or string (PostgreSQL's
/// `jsonb` refuses `\u0000`), nested at most [`MAX_METADATA_DEPTH`] levels.
pub(crate) fn check_metadata(metadata: &Map<String, Value>) -> Result<()> {
    // Iterative, so hostile depth cannot overflow the stack here. `depth` is the
    // nesting level of the value; the metadata object itself is level 1.
    let mut pending: Vec<(&str, &Value, usize)> = metadata.iter().map(|(k, v)| (k.as_str(), v, 2)).collect();
    for key in metadata.keys() {
        nul_in_key(key)?;
    }
    while let Some((key, value, depth)) = pending.pop() {
        match value {
            Value::String(text) if text.contains('\0') => {
                return Err(Error::ContainsNul { field: format!("metadata under `{}`", key.escape_debug()) });
            }
            Value::Object(_) | Value::Array(_) if depth > MAX_METADATA_DEPTH => {
                let depth = metadata.values().fold(1, |d, v| d.max(depth_of(v, 2)));
                return Err(Error::MetadataTooDeep { depth, max: MAX_METADATA_DEPTH });
            }
            Value::Object(map) => {
                for (k, v) in map {
                    nul_in_key(k)?;
                    pending.push((k, v, depth + 1));
                }
            }
            Value::Array(items) => pending.extend(items.iter().map(|v| (key, v, depth + 1))),
            _ => {}
        }
    }
    Ok(())
}

fn nul_in_key(key: &str) -> Result<()> {
    if key.contains('\0') {
        return Err(Error::ContainsNul { field: format!("a metadata key (`{}`)", key.escape_debug()) });
    }
    Ok(())
}

/// The depth of the deepest container in `value`, which sits at `depth` (iterative).
fn depth_of(value: &Value, depth: usize) -> usize {
    let mut max = depth;
    let mut pending = vec![(value, depth)];
    while let Some((v, d)) = pending.pop() {
        match v {
            Value::Object(m) => {
                max = max.max(d);
                pending.extend(m.values().map(|v| (v, d + 1)));
            }
            Value::Array(a) => {
                max = max.max(d);
                pending.extend(a.iter().map(|v| (v, d + 1)));
            }
            _ => {}
        }
    }
    max
}

/// The earliest time Herald stores or compares: 0001-01-01T00:00:00Z.
pub(crate) fn min_time() -> DateTime<Utc> {
    DateTime::from_timestamp(-62_135_596_800, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The latest time Herald stores or compares: 9999-12-31T23:59:59.999999Z.
pub(crate) fn max_time() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 999_999_000).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Clamps a time to the years 1 to 9999, the range both backends store and compare
/// in order (SQLite keeps times as fixed-width text). A bound beyond it (a feed
/// `until(DateTime::MAX_UTC)`, a retry 10,000 years ahead) means the same as its end.
pub(crate) fn clamp_time(t: DateTime<Utc>) -> DateTime<Utc> {
    t.clamp(min_time(), max_time())
}

/// `t + d`, clamped to [`clamp_time`]'s range, never an overflow.
pub(crate) fn time_after(t: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d).ok().and_then(|d| t.checked_add_signed(d)).map_or_else(max_time, clamp_time)
}

/// `t - d`, clamped to [`clamp_time`]'s range, never an overflow.
pub(crate) fn time_before(t: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d).ok().and_then(|d| t.checked_sub_signed(d)).map_or_else(min_time, clamp_time)
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
