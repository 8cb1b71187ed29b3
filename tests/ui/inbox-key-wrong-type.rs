use herald::prelude::*;

// A key is a String: this one returns a number.
fn tenant(_event: &Event) -> u64 {
    7
}

#[inbox(key = tenant)]
async fn emails(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

#[inbox(key = |e: &Event| e.action.clone())]
async fn closure(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {}
