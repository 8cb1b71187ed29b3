use herald::prelude::*;

#[inbox(subject = "issue", actions = ["assigned", "commented", "assigned"])]
async fn emails(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {}
