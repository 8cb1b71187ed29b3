use herald::prelude::*;

#[inbox(subject = "issue", spread = "yes")]
async fn emails(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {}
