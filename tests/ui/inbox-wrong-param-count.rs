use herald::prelude::*;

#[inbox]
async fn only_event(_event: &Event) -> Result<(), InboxError> {
    Ok(())
}

#[inbox]
async fn three(_event: &Event, _cx: &Context, _retries: u32) -> Result<(), InboxError> {
    Ok(())
}

fn main() {
    let _ = (only_event, three);
}
