use herald::prelude::*;

#[inbox(backoff = "10s", backoff_max = "500ms")]
async fn emails(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {}
