use herald::prelude::*;

#[inbox(backoff = "5 minutes", backoff_max = "1.5h")]
async fn emails(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

#[inbox(backoff = 500, backoff_max = "10")]
async fn no_units(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {}
