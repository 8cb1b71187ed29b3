//! Herald procedural macros: `#[derive(StateMachine)]`, `#[derive(Action)]`.
