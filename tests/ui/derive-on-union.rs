use herald::StateMachine;

#[derive(Clone, Copy, StateMachine)]
#[state_machine(subject = "issue")]
union IssueStatus {
    open: u8,
    closed: u16,
}

fn main() {}
