use herald::StateMachine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "issue")]
#[transition(initial: Closed -> Open)]
#[transition(close: Open -> Closed)]
#[transition(can_close: Open -> Closed)]
#[transition(Reopen: Closed -> Open)]
enum IssueStatus {
    #[initial]
    Open,
    Closed,
}

fn main() {}
