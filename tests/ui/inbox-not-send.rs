use std::rc::Rc;

use herald::prelude::*;

async fn send() {}

#[inbox]
async fn emails(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    let shared = Rc::new(1);
    send().await;
    drop(shared);
    Ok(())
}

fn main() {}
