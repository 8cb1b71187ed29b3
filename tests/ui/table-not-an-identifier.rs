use herald::StateMachine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "issue", table = "issues; drop table users", column = "status")]
#[transition(close: Open -> Closed)]
enum IssueStatus {
    #[initial]
    Open,
    Closed,
}

fn main() {}
