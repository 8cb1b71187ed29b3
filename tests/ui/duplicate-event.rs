use herald::StateMachine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "issue")]
#[transition(close: Open -> Closed)]
#[transition(close: InProgress -> Closed)]
enum IssueStatus {
    #[initial]
    Open,
    InProgress,
    Closed,
}

fn main() {
    let _ = IssueStatus::Open.close();
}
