//! Checks across the whole `#[derive(StateMachine)]` input.

use std::collections::{BTreeMap, BTreeSet};

use super::ast::Machine;
use crate::ctxt::Errors;
use crate::names::{is_snake_case, is_sql_identifier, list};

/// Names the derive generates as inherent methods, or that the `StateMachine` trait
/// provides: an event with one of these names would clash with (or shadow) them.
const RESERVED: &[&str] = &[
    "initial",
    "states",
    "as_str",
    "permitted_events",
    "diagram",
    "name",
    "from_name",
    "rule",
    "fire",
    "fire_event",
    "apply",
    "events",
    "mermaid",
];

pub(crate) fn check(machine: &Machine<'_>, cx: &mut Errors) {
    check_options(machine, cx);
    if let Some(states) = &machine.states {
        if states.is_empty() {
            cx.spanned(
                machine.ident,
                format!("`{}` has no states; add unit variants, one marked #[initial]", machine.ident),
            );
        } else {
            check_states(machine, cx);
        }
    }
    check_transitions(machine, cx);
}

fn check_options(machine: &Machine<'_>, cx: &mut Errors) {
    let options = &machine.options;
    match &options.subject {
        None => cx.spanned(
            machine.ident,
            format!(
                "missing subject: add #[state_machine(subject = \"…\")] to `{}`, naming the subject type whose \
                 status it is, e.g. subject = \"issue\"",
                machine.ident
            ),
        ),
        Some(subject) if subject.value().is_empty() => {
            cx.spanned(subject, "subject must not be empty; e.g. subject = \"issue\"");
        }
        Some(_) => {}
    }

    match (&options.table, &options.column) {
        _ if options.unreadable => {}
        (Some(table), None) => cx.spanned(
            table,
            format!(
                "`table` needs a `column`: #[state_machine(table = \"{}\", column = \"…\")] names the column that holds \
                 the state",
                table.value()
            ),
        ),
        (None, Some(column)) => cx.spanned(
            column,
            format!(
                "`column` needs a `table`: #[state_machine(table = \"…\", column = \"{}\")] names the table that holds \
                 the state",
                column.value()
            ),
        ),
        _ => {}
    }
    if let (Some(key), None, None, false) = (&options.key, &options.table, &options.column, options.unreadable) {
        cx.spanned(
            key,
            "`key` needs `table` and `column`; without them herald keeps the state in its own table, keyed by the \
             subject",
        );
    }
    for (option, value, qualified) in
        [("table", &options.table, true), ("column", &options.column, false), ("key", &options.key, false)]
    {
        if let Some(lit) = value
            && !is_sql_identifier(&lit.value(), qualified)
        {
            cx.spanned(
                lit,
                format!(
                    "{option} `{}` is not a plain SQL identifier; use letters, digits and `_`{}",
                    lit.value(),
                    if qualified { ", optionally as schema.table" } else { "" }
                ),
            );
        }
    }
}

fn check_states(machine: &Machine<'_>, cx: &mut Errors) {
    let states = machine.states();
    let initial: Vec<_> = states.iter().flat_map(|s| s.initial.iter().map(move |a| (s, a))).collect();
    match initial.as_slice() {
        [] => cx.spanned(
            machine.ident,
            format!(
                "no initial state: mark one variant of `{}` #[initial], e.g. `#[initial] {}`",
                machine.ident, states[0].ident
            ),
        ),
        [_] => {}
        [(first, _), rest @ ..] => {
            for (state, attr) in rest {
                let message = if state.ident == first.ident {
                    format!("#[initial] is written twice on `{}`; write it once", state.ident)
                } else {
                    format!("two #[initial] states, `{}` and `{}`; mark exactly one", first.ident, state.ident)
                };
                cx.spanned(attr, message);
            }
        }
    }

    let mut names = BTreeMap::new();
    for state in states {
        if let Some(earlier) = names.insert(state.name.as_str(), state.ident) {
            cx.spanned(
                state.ident,
                format!("states `{earlier}` and `{}` are both named `{}`; rename one", state.ident, state.name),
            );
        }
    }
}

fn check_transitions(machine: &Machine<'_>, cx: &mut Errors) {
    let events: BTreeSet<String> = machine.transitions.iter().map(|t| t.name()).collect();
    let mut seen = BTreeSet::new();
    let state_list = list(machine.states().iter().map(|s| s.ident));

    for transition in &machine.transitions {
        let event = &transition.event;
        let name = transition.name();

        if !seen.insert(name.clone()) {
            cx.spanned(
                event,
                format!(
                    "duplicate event `{name}`: one #[transition({name}: …)] per event; list every source state in it, \
                     e.g. #[transition({name}: A | B -> {})]",
                    transition.to
                ),
            );
        }
        if !is_snake_case(&name) {
            cx.spanned(
                event,
                format!(
                    "event `{name}` must be snake_case, like a method name: #[transition({}: …)]",
                    crate::names::snake_case(&name)
                ),
            );
        } else if RESERVED.contains(&name.as_str())
            || name.strip_prefix("can_").is_some_and(|rest| events.contains(rest))
        {
            cx.spanned(
                event,
                format!(
                    "event `{name}` clashes with the method `{}::{name}` that the derive generates; rename the event",
                    machine.ident
                ),
            );
        }

        if machine.states.is_none() {
            continue;
        }
        let mut from = BTreeSet::new();
        for state in transition.from.iter().chain([&transition.to]) {
            if machine.state(state).is_none() {
                cx.spanned(
                    state,
                    format!("unknown state `{state}` in {}; states are {state_list}", transition.display()),
                );
            }
        }
        for state in &transition.from {
            if !from.insert(state) {
                cx.spanned(state, format!("state `{state}` is listed twice in {}", transition.display()));
            }
        }
    }
}
