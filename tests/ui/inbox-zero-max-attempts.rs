use herald::prelude::*;

#[inbox(max_attempts = 0)]
async fn emails(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

#[inbox(max_attempts = "3")]
async fn webhooks(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {}
