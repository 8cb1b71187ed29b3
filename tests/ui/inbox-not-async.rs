use herald::prelude::*;

#[inbox(subject = "issue")]
fn emails(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {
    // The function is still there: no "cannot find function" error.
    let _ = emails;
}
