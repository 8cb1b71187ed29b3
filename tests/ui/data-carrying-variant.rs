use herald::StateMachine;

#[derive(Debug, Clone, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "issue")]
#[transition(block: Open -> Blocked)]
enum IssueStatus {
    #[initial]
    Open,
    Blocked(String),
    Snoozed { until: u64 },
}

fn main() {}
