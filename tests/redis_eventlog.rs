//! `RedisEventLog` against a real redis-server: versions, conflicts, atomic optimistic appends
//! from several nodes at once, and a log that outlives the process's handle.

mod redis_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;
use tidings::backplane::RedisEventLog;
use tidings::eventlog::{AppendError, EventLog};

#[tokio::test]
async fn versions_conflicts_and_reads() {
    let Some(redis) = redis_support::start() else {
        return;
    };
    let log = RedisEventLog::new(&redis.url(), "t1", 1000).unwrap();
    assert_eq!(log.version("doc").await, Ok(0));
    assert_eq!(log.append("doc", Some(0), json!({"op": "a"})).await, Ok(1));
    assert_eq!(log.append("doc", None, json!("b")).await, Ok(2));
    assert_eq!(
        log.append("doc", Some(1), json!("stale")).await,
        Err(AppendError::Conflict { current: 2 })
    );
    assert_eq!(log.append("doc", Some(2), json!([1, 2])).await, Ok(3));
    let events = log.read("doc", 0, 100).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(events[0].data, json!({"op": "a"}));
    assert_eq!(events[2].data, json!([1, 2]));
    assert!(events[0].timestamp_ms > 0);
    let tail = log.read("doc", 2, 100).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].version, 3);
    assert_eq!(log.read("doc", 0, 2).await.unwrap().len(), 2);
    assert_eq!(log.read("other", 0, 10).await.unwrap(), vec![]);
    assert_eq!(log.version("doc").await, Ok(3));

    // Another node (another handle) sees the same log, also after this one is gone.
    drop(log);
    let again = RedisEventLog::new(&redis.url(), "t1", 1000).unwrap();
    assert_eq!(again.version("doc").await, Ok(3));
    assert_eq!(again.read("doc", 0, 10).await.unwrap().len(), 3);
    // Prefixes isolate apps.
    let other_app = RedisEventLog::new(&redis.url(), "t2", 1000).unwrap();
    assert_eq!(other_app.version("doc").await, Ok(0));
}

/// Writers on three "nodes" race with read-version-then-append: exactly one append wins per
/// version, no update is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_appends_are_atomic_across_nodes() {
    let Some(redis) = redis_support::start() else {
        return;
    };
    let nodes: Vec<_> = (0..3)
        .map(|_| RedisEventLog::new(&redis.url(), "race", 10_000).unwrap())
        .collect();
    let wins = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (n, log) in nodes.iter().enumerate() {
        for w in 0..8 {
            let log = log.clone();
            let wins = wins.clone();
            let conflicts = conflicts.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = 0;
                while mine < 10 {
                    let v = log.version("doc").await.unwrap();
                    match log
                        .append("doc", Some(v), json!({"n": n, "w": w, "i": mine}))
                        .await
                    {
                        Ok(nv) => {
                            assert_eq!(nv, v + 1);
                            wins.fetch_add(1, Ordering::Relaxed);
                            mine += 1;
                        }
                        Err(AppendError::Conflict { current }) => {
                            assert!(current > v);
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = wins.load(Ordering::Relaxed);
    assert_eq!(total, 3 * 8 * 10);
    assert_eq!(nodes[0].version("doc").await, Ok(total));
    let events = nodes[1].read("doc", 0, 10_000).await.unwrap();
    assert_eq!(events.len() as u64, total);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.version, i as u64 + 1);
    }
    let mut seen = std::collections::HashSet::new();
    for e in &events {
        assert!(
            seen.insert(e.data.to_string()),
            "an append was applied twice"
        );
    }
    eprintln!(
        "{total} appends, {} conflicts detected",
        conflicts.load(Ordering::Relaxed)
    );
}
