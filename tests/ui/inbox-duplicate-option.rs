use herald::prelude::*;

#[inbox(subject = "issue", max_attempts = 3, subject = "pull_request")]
async fn emails(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {
    let _ = emails;
}
