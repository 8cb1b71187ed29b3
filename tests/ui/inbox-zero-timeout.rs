use herald::prelude::*;

#[inbox(subject = "issue", timeout = "0s")]
async fn mail(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {}
