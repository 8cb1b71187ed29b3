use herald::Action;

#[derive(Debug, Clone, Copy, Action)]
enum IssueAction {
    Created,
    Closed,
}

fn main() {}
