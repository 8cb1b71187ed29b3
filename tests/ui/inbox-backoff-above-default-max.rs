use herald::prelude::*;

// Only one of the two given: the other is the runtime's default, checked at compile time.
#[inbox(backoff = "2h")]
async fn emails(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

#[inbox(backoff_max = "10ms")]
async fn webhooks(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {}
