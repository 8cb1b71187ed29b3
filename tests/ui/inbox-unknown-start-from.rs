use herald::prelude::*;

#[inbox(start_from = "begining")]
async fn projection(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {}
