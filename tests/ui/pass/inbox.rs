//! `#[inbox]` with every option; generated code must be warning-free, and the
//! registrations must be what the options say.
#![deny(warnings, missing_docs, unreachable_pub, unused_qualifications)]

use std::time::Duration;

use herald::prelude::*;
use herald::{InboxDef, Registry, StartFrom};

/// Sends mail about issues.
#[inbox(
    subject = "issue",
    actions = ["assigned", "commented", "status_changed"],
    name = "emails",
    filter = filters::not_by_bots,
    max_attempts = 5,
    backoff = "500ms",
    backoff_max = "1m30s",
    start_from = "beginning",
    crate = "herald",
)]
pub async fn email_notifications(event: &Event, cx: &Context) -> Result<(), InboxError> {
    let _ = (event, cx.attempt());
    Ok(())
}

mod filters {
    use herald::Event;

    pub(crate) fn not_by_bots(event: &Event) -> bool {
        event.actor.kind != "bot"
    }
}

mod private {
    use herald::{Event, InboxError, inbox};

    // Private, never called but by the dispatcher: no dead-code warning. Another
    // spelling of the types and parameters, explicit lifetimes, a raw identifier.
    #[inbox]
    async fn r#move<'a>(_: &'a Event, context: &'a herald::Context) -> ::core::result::Result<(), InboxError> {
        let _ = context.attempt();
        Ok(())
    }
}

/// `crate = "…"` through a re-export.
mod framework {
    pub(crate) use herald as events;

    use events::{Context, Event, InboxError};

    #[events::inbox(crate = "crate::framework::events", backoff_max = "2h")]
    pub(crate) async fn audit(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
        Ok(())
    }
}

fn main() {
    let registry = Registry::collect().unwrap();
    let names: Vec<_> = registry.iter().map(|i| i.name).collect();
    let (audit, r#move) = (concat!(module_path!(), "::framework::audit"), concat!(module_path!(), "::private::move"));
    assert_eq!(names, ["emails", audit, r#move]);

    let emails: &InboxDef = registry.get("emails").unwrap();
    assert_eq!(emails.subject, Some("issue"));
    assert_eq!(emails.actions, ["assigned", "commented", "status_changed"]);
    assert!(emails.filter.is_some());
    assert_eq!(emails.max_attempts, 5);
    assert_eq!(emails.backoff, Duration::from_millis(500));
    assert_eq!(emails.backoff_max, Duration::from_secs(90));
    assert_eq!(emails.start_from, StartFrom::Beginning);
    assert!(emails.file.ends_with("inbox.rs"), "{}", emails.file);

    let defaults = registry.get(r#move).unwrap();
    assert_eq!((defaults.subject, defaults.actions.len(), defaults.filter.is_none()), (None, 0, true));
    assert_eq!(defaults.max_attempts, InboxDef::DEFAULT_MAX_ATTEMPTS);
    assert_eq!(defaults.backoff, InboxDef::DEFAULT_BACKOFF);
    assert_eq!(defaults.backoff_max, InboxDef::DEFAULT_BACKOFF_MAX);
    assert_eq!(defaults.start_from, StartFrom::Now);

    let audit = registry.get(audit).unwrap();
    assert_eq!(audit.backoff_max, Duration::from_secs(7200));
    let _ = framework::audit;
}
