use herald::StateMachine;

fn always(_: &IssueStatus) -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "issue")]
#[transition(close: Open -> Closed, guard = always)]
enum IssueStatus {
    #[initial]
    Open,
    Closed,
}

fn main() {}
