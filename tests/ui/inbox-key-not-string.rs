use herald::prelude::*;

#[inbox(key = 3)]
async fn emails(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {}
