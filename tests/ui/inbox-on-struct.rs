use herald::prelude::*;

#[inbox(subject = "issue")]
struct Emails;

#[inbox]
const LIMIT: u32 = 5;

fn main() {
    // The items are still there.
    let _ = (Emails, LIMIT);
}
