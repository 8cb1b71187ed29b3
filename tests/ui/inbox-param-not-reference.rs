use herald::prelude::*;

#[inbox]
async fn by_value(event: Event, cx: &mut Context) -> Result<(), InboxError> {
    let _ = (event, cx);
    Ok(())
}

#[inbox]
async fn opaque(event: impl AsRef<str>, cx: &'static Context) -> Result<(), InboxError> {
    let _ = (event.as_ref(), cx);
    Ok(())
}

fn main() {}
