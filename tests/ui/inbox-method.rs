use herald::prelude::*;

struct Mailer;

impl Mailer {
    #[inbox]
    async fn emails(&self, _event: &Event, _cx: &Context) -> Result<(), InboxError> {
        Ok(())
    }
}

fn main() {
    let _ = Mailer::emails;
}
