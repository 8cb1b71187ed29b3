use herald::prelude::*;

#[inbox(subject = "issue", action = ["assigned"], colour = "red")]
async fn emails(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {
    let _ = emails;
}
