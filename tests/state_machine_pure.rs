//! `#[derive(StateMachine)]` and `#[derive(Action)]` without a store: pure
//! transitions, names, serde, the diagram, declarations, and sqlx TEXT encoding.

use herald::prelude::*;
use herald::state_machine::{GuardInput, Storage};
use herald::{InvalidTransition, Transition, UnknownState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "issue", table = "issues", column = "status")]
#[transition(start:   Open -> InProgress)]
#[transition(resolve: InProgress -> Resolved, guard = guards::has_assignee)]
#[transition(close:   Open | InProgress | Resolved -> Closed)]
#[transition(reopen:  Closed -> Open)]
enum IssueStatus {
    #[initial]
    Open,
    InProgress,
    Resolved,
    Closed,
}

mod guards {
    use super::*;

    pub(crate) fn has_assignee(input: &GuardInput<'_, IssueStatus>) -> Result<(), String> {
        match input.metadata.get("assignee") {
            Some(_) => Ok(()),
            None => Err("an issue needs an assignee to be resolved".to_owned()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Action)]
#[action(subject = "issue")]
enum IssueAction {
    Created,
    Assigned,
    Commented,
    Closed,
    Reopened,
    #[action(rename = "viewed_by_someone")]
    Viewed,
}

/// A machine kept in herald's own table, with a custom key and renamed crate path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "door", crate = "herald")]
#[transition(open: Shut -> Ajar)]
#[transition(shut: Ajar -> Shut)]
enum Door {
    #[initial]
    Shut,
    Ajar,
}

use IssueStatus::{Closed, InProgress, Open, Resolved};

const EVENTS: [&str; 4] = ["start", "resolve", "close", "reopen"];

fn fire(state: IssueStatus, event: &str) -> Result<Transition<IssueStatus>, InvalidTransition> {
    match event {
        "start" => state.start(),
        "resolve" => state.resolve(),
        "close" => state.close(),
        "reopen" => state.reopen(),
        other => panic!("no event {other}"),
    }
}

fn can(state: IssueStatus, event: &str) -> bool {
    match event {
        "start" => state.can_start(),
        "resolve" => state.can_resolve(),
        "close" => state.can_close(),
        "reopen" => state.can_reopen(),
        other => panic!("no event {other}"),
    }
}

#[test]
fn every_state_and_event() {
    let expected: [(IssueStatus, &'static str, Option<IssueStatus>); 16] = [
        (Open, "start", Some(InProgress)),
        (Open, "resolve", None),
        (Open, "close", Some(Closed)),
        (Open, "reopen", None),
        (InProgress, "start", None),
        (InProgress, "resolve", Some(Resolved)),
        (InProgress, "close", Some(Closed)),
        (InProgress, "reopen", None),
        (Resolved, "start", None),
        (Resolved, "resolve", None),
        (Resolved, "close", Some(Closed)),
        (Resolved, "reopen", None),
        (Closed, "start", None),
        (Closed, "resolve", None),
        (Closed, "close", None),
        (Closed, "reopen", Some(Open)),
    ];
    for (from, event, to) in expected {
        let result = fire(from, event);
        match to {
            Some(to) => {
                assert_eq!(result, Ok(Transition { event, from, to }));
                assert!(can(from, event), "{from:?} can {event}");
            }
            None => {
                let err = result.expect_err(&format!("{event} from {from:?} is invalid"));
                assert_eq!((err.subject, err.event, err.from), ("issue", event, from.as_str()));
                assert_eq!(err.permitted, from.permitted_events());
                assert!(!can(from, event), "{from:?} cannot {event}");
            }
        }
        // The pure method and the runtime agree.
        assert_eq!(from.fire_event(event), fire(from, event));
    }
}

#[test]
fn invalid_transition_message() {
    let err = Closed.start().expect_err("closed issues do not start");
    assert_eq!(
        err.to_string(),
        "invalid transition: `start` cannot fire from `closed` on issue; permitted from `closed`: reopen"
    );
    assert_eq!(err, InvalidTransition { subject: "issue", event: "start", from: "closed", permitted: vec!["reopen"] });
}

#[test]
fn permitted_events_in_declaration_order() {
    assert_eq!(Open.permitted_events(), ["start", "close"]);
    assert_eq!(InProgress.permitted_events(), ["resolve", "close"]);
    assert_eq!(Resolved.permitted_events(), ["close"]);
    assert_eq!(Closed.permitted_events(), ["reopen"]);
}

#[test]
fn initial_states_and_tables() {
    // `initial`, `states`, `as_str` and `can_*` are const fns.
    const { assert!(matches!(IssueStatus::initial(), Open) && Open.can_start() && !Closed.can_start()) };
    const { assert!(IssueStatus::states().len() == 4 && InProgress.as_str().len() == 11) };
    assert_eq!(IssueStatus::initial(), Open);
    assert_eq!(IssueStatus::states(), [Open, InProgress, Resolved, Closed]);
    assert_eq!(IssueStatus::INITIAL, Open);
    assert_eq!(IssueStatus::SUBJECT, "issue");
    assert_eq!(IssueStatus::STORAGE, Storage::Column { table: "issues", column: "status", key: "id" });
    assert_eq!(Door::STORAGE, Storage::Herald);
    assert_eq!(Door::initial().open().map(|t| t.to), Ok(Door::Ajar));

    let events: Vec<_> = IssueStatus::TRANSITIONS.iter().map(|r| r.event).collect();
    assert_eq!(events, EVENTS);
    let close = IssueStatus::rule("close").expect("close is declared");
    assert_eq!(close.from, [Open, InProgress, Resolved]);
    assert_eq!(close.to, Closed);
    assert!(close.guard.is_none());
    let resolve = IssueStatus::rule("resolve").expect("resolve is declared");
    assert!(resolve.guard.is_some());
}

#[test]
fn names_round_trip() {
    let names = ["open", "in_progress", "resolved", "closed"];
    for (state, name) in IssueStatus::states().iter().zip(names) {
        assert_eq!(state.as_str(), name);
        assert_eq!(state.name(), name);
        assert_eq!(state.to_string(), name);
        assert_eq!(name.parse::<IssueStatus>(), Ok(*state));
        assert_eq!(IssueStatus::from_name(name), Some(*state));
    }
    assert_eq!(format!("[{:>12}]", InProgress), "[ in_progress]");
}

#[test]
fn unknown_state_names_the_states() {
    let err = "InProgress".parse::<IssueStatus>().expect_err("names are snake_case");
    assert_eq!(
        err,
        UnknownState {
            subject: "issue",
            name: "InProgress".to_owned(),
            states: vec!["open", "in_progress", "resolved", "closed"]
        }
    );
    assert_eq!(err.to_string(), "unknown state `InProgress` for issue; states are open, in_progress, resolved, closed");
}

#[test]
fn serde_as_the_name() {
    assert_eq!(serde_json::to_string(&InProgress).expect("serializes"), r#""in_progress""#);
    let all = serde_json::to_value(IssueStatus::states()).expect("serializes");
    assert_eq!(all, serde_json::json!(["open", "in_progress", "resolved", "closed"]));
    let back: Vec<IssueStatus> = serde_json::from_value(all).expect("deserializes");
    assert_eq!(back, IssueStatus::states());

    let err = serde_json::from_str::<IssueStatus>(r#""done""#).expect_err("no such state");
    assert!(err.to_string().starts_with("unknown state `done` for issue; states are open, in_progress"), "{err}");
    let err = serde_json::from_str::<IssueStatus>("3").expect_err("not a string");
    assert!(err.to_string().contains("expected a snake_case name"), "{err}");
}

#[test]
fn mermaid_diagram() {
    assert_eq!(
        IssueStatus::diagram(),
        "stateDiagram-v2
    [*] --> open
    open --> in_progress: start
    in_progress --> resolved: resolve
    open --> closed: close
    in_progress --> closed: close
    resolved --> closed: close
    closed --> open: reopen
"
    );
}

#[test]
fn actions() {
    let all = [
        IssueAction::Created,
        IssueAction::Assigned,
        IssueAction::Commented,
        IssueAction::Closed,
        IssueAction::Reopened,
        IssueAction::Viewed,
    ];
    let names = ["created", "assigned", "commented", "closed", "reopened", "viewed_by_someone"];
    for (action, name) in all.iter().zip(names) {
        assert_eq!(action.as_str(), name);
        assert_eq!(<IssueAction as Action>::as_str(action), name);
        assert_eq!(action.as_ref(), name);
        assert_eq!(action.to_string(), name);
        assert_eq!(name.parse::<IssueAction>().expect("declared"), *action);
    }
    assert_eq!(IssueAction::SUBJECT, "issue");

    let err = "viewed".parse::<IssueAction>().expect_err("renamed");
    assert!(
        matches!(&err, herald::Error::UnknownAction { subject, action, .. } if subject == "issue" && action == "viewed")
    );
    assert_eq!(
        err.to_string(),
        "unknown action `viewed` for subject `issue`; declared actions are assigned, closed, commented, created, \
         reopened, viewed_by_someone"
    );
}

#[test]
fn declarations_include_status_changed() {
    let declared = herald::action::declared("issue").expect("issue has declarations");
    for name in ["created", "assigned", "commented", "closed", "reopened", "viewed_by_someone", "status_changed"] {
        assert!(declared.contains(&name), "{name} in {declared:?}");
    }
    assert_eq!(herald::action::declared("door"), Some(vec!["status_changed"]));
}

#[tokio::test]
async fn sqlite_binds_and_decodes_text() -> Result<(), sqlx::Error> {
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;

    let state: IssueStatus = sqlx::query_scalar("SELECT ?").bind(InProgress).fetch_one(&pool).await?;
    assert_eq!(state, InProgress);

    let text: String = sqlx::query_scalar("SELECT ?").bind(Resolved).fetch_one(&pool).await?;
    assert_eq!(text, "resolved");
    let kind: String = sqlx::query_scalar("SELECT typeof(?)").bind(Closed).fetch_one(&pool).await?;
    assert_eq!(kind, "text");

    let none: Option<IssueStatus> = sqlx::query_scalar("SELECT NULL").fetch_one(&pool).await?;
    assert_eq!(none, None);

    let err = sqlx::query_scalar::<_, IssueStatus>("SELECT 'done'").fetch_one(&pool).await.expect_err("no such state");
    let sqlx::Error::ColumnDecode { source, .. } = &err else { panic!("expected a decode error, got {err:?}") };
    assert_eq!(
        source.downcast_ref::<UnknownState>().map(|e| e.name.as_str()),
        Some("done"),
        "the decode error is the typed UnknownState: {source}"
    );
    Ok(())
}
