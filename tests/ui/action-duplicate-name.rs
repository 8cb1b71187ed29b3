use herald::Action;

#[derive(Debug, Clone, Copy, Action)]
#[action(subject = "issue")]
enum IssueAction {
    Closed,
    #[action(rename = "closed")]
    Shut,
    HTTPCall,
    HttpCall,
}

fn main() {
    let _ = IssueAction::Closed.as_str();
}
