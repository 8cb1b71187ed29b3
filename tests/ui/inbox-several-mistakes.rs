use herald::prelude::*;

// Six mistakes, in the options and in the signature, all reported in one run.
#[inbox(subject = "issue", actions = ["assigned", "assigned"], colour = "red", max_attempts = 0)]
fn emails(event: Event) {
    let _ = event;
}

fn main() {
    // The function is still emitted as written: using it raises no further error.
    let _: fn(Event) = emails;
}
