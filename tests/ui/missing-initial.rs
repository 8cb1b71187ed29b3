use herald::StateMachine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "issue")]
#[transition(close: Open -> Closed)]
enum IssueStatus {
    Open,
    Closed,
}

fn main() {
    let _ = IssueStatus::initial();
}
