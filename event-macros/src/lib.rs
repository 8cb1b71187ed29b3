//! Herald's procedural macros. Use them through the `herald` crate, where each
//! derive sits beside its trait (`herald::StateMachine` is both) and where its
//! reference documentation lives.
//!
//! Every macro parses its input into a model (`attr`, `ast`), checks the whole of
//! it (`valid`, reporting every mistake at its own token), then generates code
//! (`expand`); on error it emits the errors beside a stub (`fallback`), or for
//! `#[inbox]` beside the user's function unchanged, so a user sees what to fix and
//! nothing else.

// Library code reports errors; it does not panic on input or I/O.
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod action;
mod common;
mod ctxt;
mod inbox;
mod names;
mod once;
mod state_machine;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Derives `herald::StateMachine` for a fieldless enum, with pure transition
/// methods, `FromStr`/`Display`, serde and sqlx support. See `herald::StateMachine`.
#[proc_macro_derive(StateMachine, attributes(state_machine, transition, initial))]
pub fn derive_state_machine(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    state_machine::derive(&input).into()
}

/// Derives `herald::Action` for a fieldless enum of a subject's actions and
/// declares them. See `herald::Action`.
#[proc_macro_derive(Action, attributes(action))]
pub fn derive_action(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    action::derive(&input).into()
}

/// Registers an `async fn(&Event, &Context) -> Result<(), InboxError>` as a durable
/// inbox; the function itself is left as written. See `herald::inbox`.
#[proc_macro_attribute]
pub fn inbox(args: TokenStream, item: TokenStream) -> TokenStream {
    inbox::expand(args.into(), item.into()).into()
}
