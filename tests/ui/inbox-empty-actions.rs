use herald::prelude::*;

#[inbox(subject = "issue", actions = [])]
async fn emails(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {}
