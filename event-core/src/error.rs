//! The one error type of Herald's runtime.

/// A `Result` whose error defaults to Herald's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when recording, reading or transitioning.
///
/// Validation errors (`Empty*`, `UnknownAction`, `MetadataNotObject`, …) are
/// returned before anything is written: the transaction is left exactly as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An idempotency key was an empty string.
    #[error("an idempotency key must not be empty")]
    EmptyIdempotencyKey,

    /// The subject's type was an empty string.
    #[error("subject type must not be empty (for example Subject::new(\"issue\", 42))")]
    EmptySubjectType,

    /// The actor's type was an empty string.
    #[error("actor type must not be empty (for example Actor::new(\"user\", 7) or Actor::system())")]
    EmptyActorType,

    /// The action is not declared for a subject that has declarations.
    #[error(
        "unknown action `{action}` for subject `{subject}`; declared actions are {}",
        allowed.join(", ")
    )]
    UnknownAction {
        /// The subject type the event was recorded on.
        subject: String,
        /// The action that was refused.
        action: String,
        /// Every action declared for `subject`, sorted.
        allowed: Vec<&'static str>,
    },

    /// The action name was empty.
    #[error("action must not be empty")]
    EmptyAction,

    /// Metadata must be a JSON object (`{…}`).
    #[error("metadata must be a JSON object, got {found}")]
    MetadataNotObject {
        /// The JSON kind that was given instead: `an array`, `a string`, ….
        found: &'static str,
    },

    /// Metadata could not be serialized to JSON.
    #[error("metadata could not be serialized to JSON: {reason}")]
    MetadataSerialize {
        /// What serde_json reported.
        reason: String,
    },

    /// A string holds a NUL character (`\0`), which PostgreSQL cannot store in text or
    /// JSON; refused on both backends alike. Nothing was written.
    #[error("{field} contains a NUL character (\\0), which cannot be stored; remove or escape it")]
    ContainsNul {
        /// Where: `subject id`, `actor type`, `metadata at /path/to/key`, ….
        field: String,
    },

    /// A name or id longer than Herald stores (they are indexed, and index rows are
    /// limited). Nothing was written.
    #[error("{field} is {len} bytes long; at most {max} bytes are allowed")]
    TooLong {
        /// `subject type`, `subject id`, `actor type`, `actor id` or `action`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },

    /// Metadata nested deeper than Herald can read back. Nothing was written.
    #[error("metadata nests {depth} levels deep; at most {max} levels are allowed")]
    MetadataTooDeep {
        /// The deepest nesting found (the metadata object itself is level 1).
        depth: usize,
        /// The limit.
        max: usize,
    },

    /// A statement Herald ran in this transaction failed in the database, so the
    /// transaction can only be rolled back (PostgreSQL has already discarded it). The
    /// commit rolled it back: nothing of it was written.
    #[error("the transaction was rolled back, not committed: an earlier statement in it failed ({reason})")]
    Aborted {
        /// The failure that aborted the transaction.
        reason: String,
    },

    /// A subject id names a row of a state machine's table in a form other than the
    /// one the row's key has (`"042"` for the key `42`): events recorded under it
    /// would miss the subject's trail. Nothing was written.
    #[error(
        "subject id `{given}` is not the key's own form `{stored}` in `{table}`; use Subject::new(…, \"{stored}\")"
    )]
    NonCanonicalId {
        /// The table of the state column.
        table: &'static str,
        /// The id that was given.
        given: String,
        /// The key as the row stores it.
        stored: String,
    },

    /// A feed cursor that was not produced by Herald (or was corrupted).
    #[error("invalid feed cursor `{0}`")]
    InvalidCursor(String),

    /// A feed page size of zero or above the maximum.
    #[error("feed limit must be between 1 and {max}, got {got}")]
    InvalidLimit {
        /// The limit that was asked for.
        got: u32,
        /// The largest page Herald serves.
        max: u32,
    },

    /// The event cannot fire from the subject's current state.
    #[error(transparent)]
    InvalidTransition(#[from] crate::state_machine::InvalidTransition),

    /// An event fired by name (from a form, an API) that the machine does not have.
    /// Nothing was written.
    #[error("unknown event `{name}` for {subject}; its events are {}", events.join(", "))]
    UnknownEvent {
        /// The subject type of the machine.
        subject: &'static str,
        /// The name that was given.
        name: String,
        /// Every event of the machine, in declaration order.
        events: Vec<&'static str>,
    },

    /// The subject left the transition's `from` state between the read and the
    /// compare-and-swap: someone else moved it first. Nothing was written.
    #[error("stale state: {subject} is no longer `{expected}`; another transition moved it first")]
    StaleState {
        /// The subject whose state moved.
        subject: String,
        /// The state the transition started from.
        expected: &'static str,
    },

    /// A guard refused the transition. Nothing was written.
    #[error("transition `{event}` of {subject} rejected by its guard: {reason}")]
    GuardRejected {
        /// The subject.
        subject: String,
        /// The event that was refused.
        event: &'static str,
        /// The guard's reason.
        reason: String,
    },

    /// The row whose state a transition should change does not exist.
    #[error("no row in `{table}` where `{key}` = {id}")]
    MissingRow {
        /// The table of the state column.
        table: &'static str,
        /// The key column.
        key: &'static str,
        /// The subject id that was looked up.
        id: String,
    },

    /// A transition of one machine fired on a subject of another type.
    #[error("subject type `{given}` does not match the state machine's subject `{expected}`")]
    WrongSubject {
        /// The machine's subject type.
        expected: &'static str,
        /// The subject type given.
        given: String,
    },

    /// The stored state is not a state of the machine.
    #[error(transparent)]
    UnknownState(#[from] crate::state_machine::UnknownState),

    /// A state machine's table has no such column.
    #[error("table `{table}` has no column `{column}`")]
    UnknownColumn {
        /// The table.
        table: &'static str,
        /// The column that was not found.
        column: &'static str,
    },

    /// A table or column name in a machine's storage is not a plain SQL identifier.
    #[error("`{0}` is not a valid SQL identifier (letters, digits, `_`, optionally `schema.name`)")]
    InvalidIdentifier(&'static str),

    /// Two inboxes were registered under one name.
    #[error("two inboxes are named `{name}`: {first} and {second}; give one an explicit #[inbox(name = \"…\")]")]
    DuplicateInbox {
        /// The shared name.
        name: String,
        /// `file:line` of one.
        first: String,
        /// `file:line` of the other.
        second: String,
    },

    /// An inbox tried to record an event whose chain of causes would grow past the
    /// limit ([`DispatcherBuilder::max_causation_depth`](crate::DispatcherBuilder::max_causation_depth)):
    /// most likely an inbox that records events it receives itself, forever. The
    /// delivery is dead-lettered at once (retrying cannot help).
    #[error(
        "event {cause} already ends a chain of {max} events each caused by the one before (correlation {correlation}); \
         refusing to extend it: is an inbox recording events that trigger it again? \
         (raise max_causation_depth if the chain is meant to be this long)"
    )]
    CausationTooDeep {
        /// The event that would have caused the new one.
        cause: crate::EventId,
        /// The chain's correlation id (its root event).
        correlation: crate::EventId,
        /// The limit.
        max: u32,
    },

    /// No inbox of the dispatcher's registry has this name.
    #[error("no registered inbox is named `{0}`")]
    UnknownInbox(String),

    /// No delivery with this id exists (or it is not dead).
    #[error("no dead delivery with id {0}")]
    NoSuchDelivery(i64),

    /// [`Store::retry_key`](crate::Store::retry_key) or
    /// [`Store::skip_key`](crate::Store::skip_key) named a key that nothing holds back.
    #[error("key {key:?} of inbox {inbox:?} is not held back")]
    NotBlocked {
        /// The inbox.
        inbox: String,
        /// The key.
        key: String,
    },

    /// The dispatcher was configured with values it cannot work with.
    #[error("invalid dispatcher configuration: {0}")]
    InvalidConfig(String),

    /// A database URL Herald cannot work with.
    #[error("invalid database url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A bug inside the dispatcher (not in an inbox handler) panicked; the pass was
    /// abandoned and nothing it did was recorded as done.
    #[error("the dispatcher panicked: {0}")]
    Panicked(String),

    /// The database holds transaction ids beyond the server's own: it was restored or
    /// moved from another cluster (`pg_dump`/`pg_restore`, logical replication).
    /// Delivery would stop without a word (and resume, skipping events, once the
    /// server's ids caught up), so Herald refuses to migrate or dispatch until the
    /// server's transaction ids are moved past the restored ones.
    #[error(
        "this database holds transaction ids up to {highest}, beyond this server's next ({next}): it was restored \
         or moved from another cluster, and delivery would stop silently. Before the application writes to it, stop \
         the server cleanly (pg_ctl stop), run `pg_resetwal -e {epoch} \"$PGDATA\"` as the server's owner, and start \
         it again; this moves the server's transaction ids past the restored ones and changes nothing else"
    )]
    TransactionIdsBehind {
        /// The highest transaction id the database refers to (events, inbox positions).
        highest: u64,
        /// The server's next transaction id.
        next: u64,
        /// The transaction id epoch to set with `pg_resetwal -e`.
        epoch: u64,
    },

    /// The URL names no backend Herald supports.
    #[error("unsupported database url `{0}`; use sqlite://… or postgres://…")]
    UnsupportedUrl(String),

    /// A stored row could not be turned into an [`Event`](crate::Event).
    #[error("stored event {id} is malformed: {reason}")]
    Corrupt {
        /// The row's id.
        id: i64,
        /// What was wrong with it.
        reason: String,
    },

    /// Applying the embedded migrations failed (its cause in the message).
    #[error("migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),

    /// The database refused or failed a statement, or could not be reached (its cause
    /// in the message: `database error: error communicating with database: Connection
    /// refused`).
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

/// An error with its sources, `a: b: c`, skipping a source whose text the error
/// before it already shows (an error that displays its cause).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Error::Migrate(e)
    }
}
