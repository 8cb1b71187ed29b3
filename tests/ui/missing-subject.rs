use herald::StateMachine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[transition(close: Open -> Closed)]
enum IssueStatus {
    #[initial]
    Open,
    Closed,
}

fn main() {}
