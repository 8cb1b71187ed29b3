use herald::Action;

#[derive(Debug, Clone, Copy, Action)]
#[action(subject = "issue", rename = "issue_action")]
enum IssueAction {
    Created,
    #[action(name = "shut")]
    Closed,
}

fn main() {}
