use herald::StateMachine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "issue")]
#[state_machine(subject = "ticket")]
#[transition(close: Open -> Closed)]
enum IssueStatus {
    #[initial]
    Open,
    Closed,
}

fn main() {}
