//! Inboxes: async functions that receive committed events, registered at link time.
//!
//! `#[inbox]` appends an [`inventory::submit!`] of an [`InboxDef`] beside the user's
//! untouched function. [`Registry::collect`] builds the name → inbox map once,
//! sorted by name (the order `inventory` yields is never relied on), and refuses two
//! inboxes with one name, naming both source locations.
//!
//! # Handlers in another crate
//!
//! The linker drops a crate nothing refers to, and its inboxes with it. If your
//! inboxes live in a crate of their own (say `my_handlers`), refer to it from the
//! binary that runs the dispatcher, e.g. `use my_handlers as _;`, so it is linked.
//! [`Registry::collect`] lists what was found; the dispatcher logs it at start.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::model::{Actor, Event, Subject};
use crate::record::Record;
use crate::store::{Store, Transaction};

/// The future an inbox handler returns.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<(), InboxError>> + Send + 'a>>;

/// An inbox handler as registered: a plain function pointer.
pub type Handler = for<'a> fn(&'a Event, &'a Context) -> HandlerFuture<'a>;

/// Where a newly registered inbox starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// Only events committed after the inbox is first seen (the default).
    Now,
    /// Every event ever recorded: replays history, e.g. into a new projection.
    Beginning,
}

/// What orders an inbox's deliveries (`#[inbox(key = …)]`).
///
/// Events of one key reach the inbox in commit order, one at a time, across retries
/// and crashes: a failing event holds back the later events of its key, and only
/// of its key, until it succeeds or is dead-lettered. There is no order between
/// keys: different keys run side by side. A key held back by a failing event is a
/// *blocked key* ([`Store::blocked_keys`](crate::Store::blocked_keys)).
#[derive(Debug, Clone, Copy)]
pub enum Key {
    /// The event's subject, type and id (the default): per-subject order.
    Subject,
    /// The event's actor, type and id.
    Actor,
    /// The event's correlation id: a causal chain in order.
    Correlation,
    /// No order at all: every event runs on its own, and a failure holds back nothing.
    None,
    /// A key computed by a function of the event (`key = path::to::fn`).
    Fn(fn(&Event) -> String),
}

impl Key {
    /// The key of `event`, as stored with its deliveries; `None` for [`Key::None`].
    pub fn of(&self, event: &Event) -> Option<String> {
        match self {
            Key::Subject => Some(format!("{}:{}", event.subject.kind, event.subject.id)),
            Key::Actor => Some(format!("{}:{}", event.actor.kind, event.actor.id)),
            Key::Correlation => Some(event.correlation_id.to_string()),
            Key::None => None,
            Key::Fn(key) => Some(key(event)),
        }
    }
}

/// One inbox, as `#[inbox]` registers it: const data and function pointers only.
#[derive(Debug)]
pub struct InboxDef {
    /// The stable name deliveries are stored under: `module::path::fn_name`, or the
    /// explicit `name = "…"`, which survives renames and moves.
    pub name: &'static str,
    /// The inbox's former name (`#[inbox(renamed_from = "…")]`): at start, a
    /// dispatcher that finds no row under `name` takes over the row (checkpoint,
    /// retries, dead letters) of this one.
    pub renamed_from: Option<&'static str>,
    /// The subject type it receives, or `None` for every subject.
    pub subject: Option<&'static str>,
    /// The actions it receives; empty means every action.
    pub actions: &'static [&'static str],
    /// A further filter: events it returns `false` for are skipped (acknowledged unseen).
    pub filter: Option<fn(&Event) -> bool>,
    /// Attempts before a delivery is dead-lettered.
    pub max_attempts: u32,
    /// The first retry delay; each further retry doubles it (with jitter).
    pub backoff: Duration,
    /// The longest retry delay.
    pub backoff_max: Duration,
    /// How long one delivery may run: a handler still running then is cancelled, and
    /// the delivery fails like an `Err` (retried, its attempt counted).
    pub timeout: Duration,
    /// What orders its deliveries: events of one key go one at a time, in commit order.
    pub key: Key,
    /// Whether its deliveries are spread over every worker process
    /// (`#[inbox(spread = true)]`): the lease holder only copies events into
    /// chunks (per partition of keys), which every worker claims (see the dispatch
    /// module docs, "Spread inboxes"). `false`: one worker at a time streams the inbox.
    pub spread: bool,
    /// Where the inbox starts when it is first seen.
    pub start_from: StartFrom,
    /// The function.
    pub handler: Handler,
    /// Source file of the `#[inbox]` function.
    pub file: &'static str,
    /// Source line of the `#[inbox]` function.
    pub line: u32,
}

inventory::collect!(InboxDef);

impl InboxDef {
    /// Default attempts before a delivery is dead-lettered.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
    /// Default first retry delay.
    pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
    /// Default longest retry delay.
    pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(3600);
    /// Default longest run of one delivery.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// Whether this inbox wants `event` by subject and action (the filter aside).
    pub fn routes(&self, subject_kind: &str, action: &str) -> bool {
        self.subject.is_none_or(|s| s == subject_kind) && (self.actions.is_empty() || self.actions.contains(&action))
    }

    /// Whether this inbox receives `event`: subject, actions and filter.
    pub fn accepts(&self, event: &Event) -> bool {
        self.routes(&event.subject.kind, &event.action) && self.filter.is_none_or(|f| f(event))
    }

    /// `file:line` of the inbox function.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// The inboxes linked into this program, by name.
#[derive(Debug, Clone)]
pub struct Registry {
    inboxes: BTreeMap<&'static str, &'static InboxDef>,
}

impl Registry {
    /// Every `#[inbox]` linked into the program; two inboxes with one name are
    /// [`Error::DuplicateInbox`].
    pub fn collect() -> Result<Self, Error> {
        Self::from_defs(inventory::iter::<InboxDef>)
    }

    /// A registry of exactly these inboxes (for tests and for running a subset).
    pub fn from_defs(defs: impl IntoIterator<Item = &'static InboxDef>) -> Result<Self, Error> {
        let mut inboxes: BTreeMap<&'static str, &'static InboxDef> = BTreeMap::new();
        for def in defs {
            if let Some(other) = inboxes.insert(def.name, def) {
                let (mut a, mut b) = (other.location(), def.location());
                if a > b {
                    std::mem::swap(&mut a, &mut b);
                }
                return Err(Error::DuplicateInbox { name: def.name.to_owned(), first: a, second: b });
            }
        }
        Ok(Registry { inboxes })
    }

    /// Only the inboxes `keep` says yes to (e.g. to run a subset in a test).
    pub fn retain(mut self, keep: impl Fn(&InboxDef) -> bool) -> Self {
        self.inboxes.retain(|_, def| keep(def));
        self
    }

    /// The inboxes, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &'static InboxDef> + '_ {
        self.inboxes.values().copied()
    }

    /// The inbox named `name`.
    pub fn get(&self, name: &str) -> Option<&'static InboxDef> {
        self.inboxes.get(name).copied()
    }

    /// How many inboxes there are.
    pub fn len(&self) -> usize {
        self.inboxes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.inboxes.is_empty()
    }

    /// The names of the inboxes `event` would be delivered to, sorted.
    pub fn routes(&self, event: &Event) -> Vec<&'static str> {
        self.iter().filter(|d| d.accepts(event)).map(|d| d.name).collect()
    }
}

/// Why a delivery failed, and what to do about it.
///
/// Any error converts into it with `?` (as a retryable failure); it deliberately does
/// not implement [`std::error::Error`] itself, like `anyhow::Error`.
pub struct InboxError {
    message: String,
    pub(crate) outcome: Outcome,
}

/// What the dispatcher does with a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Retry after the inbox's backoff.
    Retry,
    /// Retry no sooner than this.
    RetryAfter(Duration),
    /// Dead-letter now, whatever attempts are left.
    GiveUp,
}

impl InboxError {
    /// A failure to retry with the inbox's backoff.
    pub fn retry(message: impl fmt::Display) -> Self {
        InboxError { message: message.to_string(), outcome: Outcome::Retry }
    }

    /// A failure to retry no sooner than `delay` (e.g. a `Retry-After` header).
    pub fn retry_after(delay: Duration, message: impl fmt::Display) -> Self {
        InboxError { message: message.to_string(), outcome: Outcome::RetryAfter(delay) }
    }

    /// A failure that retrying cannot fix: the delivery is dead-lettered at once.
    pub fn give_up(message: impl fmt::Display) -> Self {
        InboxError { message: message.to_string(), outcome: Outcome::GiveUp }
    }

    /// The message recorded with the delivery.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: std::error::Error + 'static> From<E> for InboxError {
    /// Any error becomes a retry with its message (and its sources'), except
    /// [`Error::CausationTooDeep`], which no retry can fix: that one gives up.
    fn from(e: E) -> Self {
        let message = crate::error::chain(&e);
        let hopeless = (&e as &dyn std::any::Any)
            .downcast_ref::<Error>()
            .is_some_and(|e| matches!(e, Error::CausationTooDeep { .. }));
        if hopeless { InboxError::give_up(message) } else { InboxError::retry(message) }
    }
}

impl fmt::Debug for InboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxError").field("message", &self.message).field("outcome", &self.outcome).finish()
    }
}

impl fmt::Display for InboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Typed values handed to every inbox: mailers, HTTP clients, configuration.
#[derive(Clone, Default)]
pub struct Resources {
    map: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Resources {
    /// Adds (or replaces) the resource of type `T`.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.map.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The resource of type `T`, if one was given.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.map.get(&TypeId::of::<T>()).and_then(|v| v.downcast_ref())
    }
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resources").field("count", &self.map.len()).finish()
    }
}

/// What an inbox gets besides the event: resources, the store, and recording of
/// follow-up events that carry the trigger as their cause.
#[derive(Debug, Clone)]
pub struct Context {
    store: Store,
    resources: Arc<Resources>,
    inbox: &'static str,
    trigger: Event,
    attempt: u32,
    max_causation_depth: u32,
}

/// The longest chain of events each caused by the one before that inboxes may build
/// (see [`DispatcherBuilder::max_causation_depth`](crate::DispatcherBuilder::max_causation_depth)).
pub const DEFAULT_MAX_CAUSATION_DEPTH: u32 = 32;

impl Context {
    /// A context for delivering `trigger` to `inbox` (attempt 1 is the first try).
    pub fn new(store: Store, resources: Arc<Resources>, inbox: &'static str, trigger: Event, attempt: u32) -> Self {
        Context { store, resources, inbox, trigger, attempt, max_causation_depth: DEFAULT_MAX_CAUSATION_DEPTH }
    }

    /// The same context with another causation-depth limit.
    pub(crate) fn with_max_causation_depth(mut self, max: u32) -> Self {
        self.max_causation_depth = max;
        // Transactions the inbox opens itself (`cx.store().begin()` + `caused_by`)
        // are held to the same limit.
        self.store = self.store.max_causation_depth(max);
        self
    }

    /// The resource of type `T` given to the dispatcher builder.
    ///
    /// A missing resource is a configuration mistake: the error gives up at once.
    pub fn resource<T: Send + Sync + 'static>(&self) -> Result<&T, InboxError> {
        self.resources.get::<T>().ok_or_else(|| {
            InboxError::give_up(format!(
                "no resource of type {} was given to the dispatcher",
                std::any::type_name::<T>()
            ))
        })
    }

    /// The store the event came from.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The name of the inbox being delivered to.
    pub fn inbox(&self) -> &'static str {
        self.inbox
    }

    /// Which attempt this is: 1 for the first delivery.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// This delivery's id, the same on every attempt, in every process and after a
    /// crash (`herald:{inbox}:{event id}`): send it as the `Idempotency-Key` of an
    /// external API, or record with it
    /// ([`Record::idempotency_key`](crate::Record::idempotency_key)), so a delivery
    /// made twice (at least once) has its effect once.
    pub fn delivery_id(&self) -> String {
        format!("herald:{}:{}", self.inbox, self.trigger.id.0)
    }

    /// The event being delivered.
    pub fn event(&self) -> &Event {
        &self.trigger
    }

    /// Begins a transaction whose recorded events are caused by the triggering event
    /// (causation id = its id, correlation id = its correlation id).
    ///
    /// Recording in it fails with [`Error::CausationTooDeep`] when the triggering
    /// event already ends a chain of as many caused events as the dispatcher allows
    /// (32 by default): the guard against an inbox that, directly or through others,
    /// keeps triggering itself.
    pub async fn begin(&self) -> Result<Transaction<'static>, Error> {
        let mut tx = self.store.begin().await?;
        tx.set_cause(&self.trigger, self.max_causation_depth);
        Ok(tx)
    }

    /// Records one follow-up event in a transaction of its own, caused by the trigger.
    pub async fn record(
        &self,
        subject: impl Into<Subject>,
        action: impl AsRef<str>,
        actor: impl Into<Actor>,
        metadata: impl serde::Serialize + Send,
    ) -> Result<Event, Error> {
        let mut tx = self.begin().await?;
        let event = Record::metadata(tx.record(subject, action, actor), metadata).await?;
        tx.commit().await?;
        Ok(event)
    }
}
