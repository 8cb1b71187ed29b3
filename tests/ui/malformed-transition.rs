use herald::StateMachine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "issue")]
#[transition(start Open -> InProgress)]
#[transition(close: Open, InProgress -> Closed)]
#[transition(split: Open -> InProgress | Closed)]
#[transition]
enum IssueStatus {
    #[initial]
    Open,
    InProgress,
    Closed,
}

fn main() {}
