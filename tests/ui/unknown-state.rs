use herald::StateMachine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "issue")]
#[transition(start: Opn -> InProgress)]
#[transition(close: Open | InProgress -> Clsed)]
enum IssueStatus {
    #[initial]
    Open,
    InProgress,
    Closed,
}

fn main() {
    // The fallback keeps these from adding errors of their own.
    let _ = IssueStatus::Open.start();
    let _ = IssueStatus::Open.can_close();
    let _ = IssueStatus::Open.to_string();
}
