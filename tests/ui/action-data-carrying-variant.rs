use herald::Action;

#[derive(Debug, Clone, Action)]
#[action(subject = "issue")]
enum IssueAction {
    Created,
    Commented(u64),
}

fn main() {}
