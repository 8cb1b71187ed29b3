use herald::Action;

#[derive(Action)]
#[action(subject = "issue")]
struct Created;

fn main() {}
