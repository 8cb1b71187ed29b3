//! Random JSON through record → read → feed → inbox, on both backends: every shape
//! is either refused with the typed error an independent oracle predicts (and
//! nothing is written), or read back exactly as written, listed by its feed and
//! delivered to its inbox.

mod common;

use herald::prelude::*;
use herald::{Context, Dispatcher, Error, InboxError, MAX_METADATA_DEPTH, Registry, inbox};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Number, Value, json};

#[inbox(subject = "fuzz")]
async fn fuzz_inbox(event: &Event, cx: &Context) -> Result<(), InboxError> {
    Ok(common::note(cx.store(), "fuzz_inbox", event, cx.attempt()).await?)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z]{0,8}",
        2 => any::<String>(),
        1 => "[a-z]{0,3}\u{0}[a-z]{0,3}",
        1 => Just("\u{1F600}<script>'\"\\".to_owned()),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(f64::MAX)),
        Just(json!(f64::MIN)),
        Just(json!(f64::MIN_POSITIVE)),
        Just(json!(5e-324)),
        Just(json!(-0.0)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        any::<i64>().prop_map(|i| json!(i)),
        any::<u64>().prop_map(|u| json!(u)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf =
        prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::Bool), number(), text().prop_map(Value::String)];
    leaf.prop_recursive(6, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..5).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Metadata: a random object, sometimes buried under many levels of nesting.
fn metadata() -> impl Strategy<Value = Map<String, Value>> {
    (prop::collection::vec((text(), value()), 0..5), prop_oneof![3 => 0..4usize, 1 => 55..75usize]).prop_map(
        |(kv, bury)| {
            let mut v = Value::Object(kv.into_iter().collect());
            for n in 0..bury {
                v = if n % 2 == 0 { json!({ "k": v }) } else { json!([v]) };
            }
            match v {
                Value::Object(m) => m,
                other => Map::from_iter([("v".to_owned(), other)]),
            }
        },
    )
}

/// The oracle: deepest nesting (the metadata object is level 1) and whether a NUL
/// appears in any key or string.
fn shape(v: &Value, depth: usize) -> (usize, bool) {
    match v {
        Value::String(s) => (0, s.contains('\0')),
        Value::Array(a) => {
            a.iter().map(|v| shape(v, depth + 1)).fold((depth, false), |(d, n), (d2, n2)| (d.max(d2), n || n2))
        }
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let (d, n) = shape(v, depth + 1);
                (d, n || k.contains('\0'))
            })
            .fold((depth, false), |(d, n), (d2, n2)| (d.max(d2), n || n2)),
        _ => (0, false),
    }
}

async fn check(store: &Store, d: &Dispatcher, meta: Map<String, Value>) -> Result<(), TestCaseError> {
    d.drain().await.unwrap(); // what an earlier failing case left behind does not count against this one
    let (depth, nul) = shape(&Value::Object(meta.clone()), 1);
    let before = common::count_events(store).await;
    let mut tx = store.begin().await.unwrap();
    let recorded = tx.record(Subject::new("fuzz", 1), "made", Actor::system()).metadata(&meta).await;
    tx.commit().await.unwrap();
    match recorded {
        Err(Error::ContainsNul { .. }) => prop_assert!(nul, "refused a NUL that is not there"),
        Err(Error::MetadataTooDeep { depth: found, max }) => {
            prop_assert!(!nul || depth > MAX_METADATA_DEPTH);
            prop_assert_eq!((found, max), (depth, MAX_METADATA_DEPTH));
        }
        Err(e) => return Err(TestCaseError::fail(format!("unexpected error: {e}"))),
        Ok(event) => {
            prop_assert!(!nul && depth <= MAX_METADATA_DEPTH, "accepted depth {} nul {}", depth, nul);
            prop_assert_eq!(&event.metadata, &meta);
            let stored = store.event(event.id).await.unwrap().unwrap();
            prop_assert_eq!(&stored, &event, "read back as written");
            let page = store.feed().subject(Subject::new("fuzz", 1)).limit(1).fetch().await.unwrap();
            prop_assert!(page.unreadable.is_empty());
            prop_assert_eq!(&page.events[0], &event, "listed by its feed");
            let drained = d.drain().await.unwrap();
            prop_assert_eq!((drained.delivered, drained.failed), (1, 0));
            let handled = common::handled(store).await;
            prop_assert_eq!(handled.last().map(|(_, id, _, _)| *id), Some(event.id.0), "delivered to its inbox");
            return Ok(());
        }
    }
    prop_assert_eq!(common::count_events(store).await, before, "a refused record writes nothing");
    Ok(())
}

#[test]
fn random_metadata_is_refused_typed_or_kept_exactly() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut stores = vec![rt.block_on(common::TestDb::sqlite())];
    stores.extend(rt.block_on(common::TestDb::postgres()));
    for db in &stores {
        let d = rt.block_on(async {
            common::create_handled(&db.store).await;
            let registry = Registry::collect().unwrap().retain(|d| d.name.ends_with("fuzz_inbox"));
            let d = Dispatcher::builder(db.store.clone()).registry(registry).build().unwrap();
            d.drain().await.unwrap();
            d
        });
        let mut runner = TestRunner::new(Config { cases: 256, failure_persistence: None, ..Config::default() });
        runner.run(&metadata(), |meta| rt.block_on(check(&db.store, &d, meta))).unwrap();
    }
}
