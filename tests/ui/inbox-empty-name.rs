use herald::prelude::*;

#[inbox(name = "", subject = " ")]
async fn emails(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {}
