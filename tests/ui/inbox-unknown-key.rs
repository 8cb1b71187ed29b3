use herald::prelude::*;

#[inbox(key = "subjet")]
async fn emails(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {}
