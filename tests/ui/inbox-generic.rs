use herald::prelude::*;

#[inbox]
async fn emails<M: Send + Sync + 'static, const N: usize>(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn main() {}
