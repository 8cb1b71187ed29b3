use herald::prelude::*;

#[inbox(subject = "issue", name = "emails", renamed_from = "emails")]
async fn mail(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {}
