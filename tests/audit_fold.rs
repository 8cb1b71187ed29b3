//! The audit-trail invariant: folding a subject's `status_changed` events from the
//! initial state always gives the stored state, whatever sequence of events was fired.

mod common;

use herald::prelude::*;
use herald::transition::EventFn;
use proptest::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "issue")]
#[transition(start: Open -> InProgress)]
#[transition(resolve: InProgress -> Resolved)]
#[transition(close: Open | InProgress | Resolved -> Closed)]
#[transition(reopen: Closed | Resolved -> Open)]
enum IssueStatus {
    #[initial]
    Open,
    InProgress,
    Resolved,
    Closed,
}

const EVENTS: [EventFn<IssueStatus>; 4] =
    [IssueStatus::start, IssueStatus::resolve, IssueStatus::close, IssueStatus::reopen];

/// Fires `steps` (indexes into EVENTS), some in transactions that roll back, then
/// checks the fold against the stored state.
async fn check(store: &Store, case: usize, steps: &[(usize, bool)]) {
    let subject = Subject::new("issue", case);
    for &(event, commit) in steps {
        let mut tx = store.begin().await.unwrap();
        let fired = IssueStatus::fire(&mut tx, &subject, EVENTS[event], Actor::system()).await;
        match fired {
            Ok(_) if commit => tx.commit().await.unwrap(),
            Ok(_) => tx.rollback().await.unwrap(),
            Err(herald::Error::InvalidTransition(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let mut events = store.feed().subject(&subject).limit(1000).fetch().await.unwrap().events;
    events.reverse();
    let mut state = IssueStatus::initial();
    for e in &events {
        assert_eq!(
            e.meta("from").and_then(|v| v.as_str()),
            Some(state.as_str()),
            "each event starts where the last ended"
        );
        let to = e.meta("to").and_then(|v| v.as_str()).unwrap();
        state = to.parse().unwrap();
    }
    assert_eq!(store.state::<IssueStatus>(&subject).await.unwrap(), state);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn fold_of_status_changes_is_the_stored_state(steps in prop::collection::vec((0..4usize, prop::bool::weighted(0.8)), 1..25)) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let sqlite = common::TestDb::sqlite().await;
            check(&sqlite.store, 1, &steps).await;
            if let Some(pg) = common::TestDb::postgres().await {
                check(&pg.store, 1, &steps).await;
            }
        });
    }
}
