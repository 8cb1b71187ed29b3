//! The full derive as the README shows it; generated code must be warning-free.
#![deny(warnings, missing_docs, unreachable_pub, unused_qualifications)]

use herald::prelude::*;
use herald::state_machine::GuardInput;

/// An issue's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, StateMachine)]
#[state_machine(subject = "issue", table = "issues", column = "status", key = "issue_id")]
#[transition(start:   Open -> InProgress)]
#[transition(resolve: InProgress -> Resolved, guard = guards::assigned)]
#[transition(close:   Open | InProgress | Resolved -> Closed)]
#[transition(reopen:  Closed -> Open,)]
pub enum IssueStatus {
    /// New.
    #[initial]
    Open,
    /// Someone works on it.
    InProgress,
    /// Fixed.
    Resolved,
    /// Done.
    Closed,
}

/// What happens to issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Action)]
#[action(subject = "issue")]
pub enum IssueAction {
    /// Opened.
    Created,
    /// Commented on.
    #[action(rename = "commented_on")]
    Commented,
}

mod guards {
    use super::{GuardInput, IssueStatus};

    pub(crate) fn assigned(input: &GuardInput<'_, IssueStatus>) -> Result<(), String> {
        input.metadata.get("assignee").map(|_| ()).ok_or_else(|| "unassigned".to_owned())
    }
}

mod private {
    /// Not visible outside this module: the generated methods must not warn.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, herald::StateMachine)]
    #[state_machine(subject = "door")]
    #[transition(open: Shut -> Ajar)]
    #[transition(shut: Ajar -> Shut)]
    #[transition(r#move: Ajar -> Ajar)]
    pub(crate) enum Door {
        #[initial]
        Shut,
        Ajar,
    }
}

fn main() {
    let t = IssueStatus::Open.start().expect("open issues start");
    assert_eq!(t.to, IssueStatus::InProgress);
    assert!(IssueStatus::Closed.can_reopen());
    assert_eq!(IssueStatus::initial().permitted_events(), ["start", "close"]);
    assert_eq!(IssueStatus::states().len(), 4);
    assert_eq!("in_progress".parse::<IssueStatus>(), Ok(IssueStatus::InProgress));
    assert!(IssueStatus::diagram().starts_with("stateDiagram-v2"));
    assert_eq!(IssueAction::Commented.as_str(), "commented_on");
    assert_eq!(private::Door::Shut.open().map(|t| t.to), Ok(private::Door::Ajar));
    assert_eq!(private::Door::Ajar.r#move().map(|t| t.event), Ok("move"));
    assert!(private::Door::Ajar.can_move());
}
