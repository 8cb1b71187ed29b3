use herald::prelude::*;

#[inbox]
async fn emails(_event: &Event, _cx: &String) -> Result<(), InboxError> {
    Ok(())
}

fn main() {}
