//! `sqlite::memory:` is one database shared by the pool's connections; concurrent
//! writers wait for each other instead of failing.

use std::time::Duration;

use herald::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_store_serializes_concurrent_writers() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut tx = store.begin().await?;
                tx.record(Subject::new("page", 1), "viewed", Actor::new("user", n))
                    .throttle(Duration::from_secs(60))
                    .await?;
                tx.record(Subject::new("page", 2), "edited", Actor::new("user", n)).await?;
                tx.commit().await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let page = |n| store.feed().subject(Subject::new("page", n)).limit(100).fetch();
    assert_eq!(page(1).await.unwrap().events.len(), 1, "throttled to one");
    assert_eq!(page(2).await.unwrap().events.len(), 16, "every writer committed");
}
