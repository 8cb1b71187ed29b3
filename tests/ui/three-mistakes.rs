use herald::StateMachine;

// Three mistakes, found by three different steps, all reported in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "issue", colour = "red")]
#[transition(start: Open -> InProgres)]
enum IssueStatus {
    Open,
    InProgress,
}

fn main() {}
