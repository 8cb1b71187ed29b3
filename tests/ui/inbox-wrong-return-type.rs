use herald::prelude::*;

#[inbox]
async fn emails(_event: &Event, _cx: &Context) -> Result<(), String> {
    Ok(())
}

fn main() {}
