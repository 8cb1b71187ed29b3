use herald::StateMachine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "issue")]
#[transition(close: Open -> Closed)]
enum IssueStatus {
    #[initial]
    Open,
    #[initial]
    Closed,
}

fn main() {}
