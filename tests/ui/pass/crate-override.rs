//! `crate = "…"` for a herald reached through another crate's re-export.

mod framework {
    pub use herald as events;
}

use framework::events::{Action, StateMachine};

#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "light", crate = "crate::framework::events")]
#[transition(toggle: Off | On -> On)]
enum Light {
    #[initial]
    Off,
    On,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Action)]
#[action(subject = "light", crate = "crate::framework::events")]
enum LightAction {
    Flickered,
}

fn main() {
    assert_eq!(Light::Off.toggle().map(|t| t.to), Ok(Light::On));
    assert_eq!(LightAction::Flickered.to_string(), "flickered");
    assert_eq!(framework::events::action::declared("light"), Some(vec!["flickered", "status_changed"]));
}
