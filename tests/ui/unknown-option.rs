use herald::StateMachine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "issue", tabel = "issues", column = "status")]
#[transition(close: Open -> Closed, gaurd = check)]
enum IssueStatus {
    #[initial]
    Open,
    Closed,
}

fn main() {}
