use herald::prelude::*;

#[inbox(subject = "issue", actions = ["Assigned", "status-changed", "", Commented])]
async fn emails(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

#[inbox(subject = "issue", actions = "assigned")]
async fn not_a_list(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {}
