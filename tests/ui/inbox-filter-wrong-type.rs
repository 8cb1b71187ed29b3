use herald::prelude::*;

fn by_humans(event: &Event) -> Option<bool> {
    Some(event.actor.kind != "bot")
}

#[inbox(filter = by_humans)]
async fn emails(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

#[inbox(filter = |e: &Event| true)]
async fn closure(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {}
