//! Two hubs in one process, each its own node of a `RedisBackplane` on a real redis-server:
//! sends cross, and a subscription dropped by Redis mid-stream is replayed from the stream
//! (every message once, in order).

mod redis_support;

use redis_support::Client;
use serde_json::json;
use tidings::backplane::{RedisBackplane, RedisOptions};
use tidings::{Args, Caller, Clients, Groups, Hub, HubError};

fn node(url: &str) -> Hub {
    node_with(RedisOptions::new(url))
}

fn node_with(options: RedisOptions) -> Hub {
    Hub::builder()
        .name("Chat")
        .backplane(RedisBackplane::with_options(options))
        .method(
            "Join",
            |caller: Caller, groups: Groups, Args(g): Args<String>| async move {
                groups.add(caller.connection_id(), &g).await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "Burst",
            |clients: Clients, Args((g, n)): Args<(String, u64)>| async move {
                for i in 0..n {
                    clients.group(&g).send("Seq", (i,)).await?;
                }
                Ok::<(), HubError>(())
            },
        )
        .method("Count", |clients: Clients| async move {
            Ok::<_, HubError>(clients.presence().connection_count().await?)
        })
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_sends_cross_nodes_and_survive_a_dropped_subscription() {
    let Some(redis) = redis_support::start() else {
        return;
    };
    let one = redis_support::serve(node(&redis.url())).await;
    let two_hub = node(&redis.url());
    let two_ctx = two_hub.context();
    let two = redis_support::serve(two_hub).await;
    let mut sender = Client::connect(&one).await;
    let mut receiver = Client::connect(&two).await;
    receiver.invoke("Join", json!(["g"])).await;
    assert_eq!(sender.invoke("Count", json!([])).await, json!(2));

    sender.invoke("Burst", json!(["g", 10])).await;
    let got = receiver.wait_for("Seq", 10).await;
    assert_eq!(got, (0..10).map(|i| json!([i])).collect::<Vec<_>>());

    // Redis drops the subscribers (as it does to a slow one) while messages keep coming.
    let mut total = 10u64;
    for _ in 0..5 {
        let kill = redis.command("CLIENT KILL TYPE pubsub").unwrap();
        assert!(kill.starts_with(':'), "CLIENT KILL: {kill}");
        sender.invoke("Burst", json!(["g", 200])).await;
        total += 200;
    }
    let got = receiver.wait_for("Seq", total as usize).await;
    let seqs: Vec<u64> = got.iter().map(|a| a[0].as_u64().unwrap()).collect();
    let expected: Vec<u64> = std::iter::once(0..10)
        .chain((0..5).map(|_| 0..200))
        .flatten()
        .collect();
    assert_eq!(seqs, expected, "every message once, in order");
    let stats = two_ctx.backplane_stats().unwrap();
    assert!(stats.reconnects >= 1, "{stats:?}");
    assert_eq!(stats.gaps, 0, "{stats:?}");
    eprintln!("receiving node: {stats:?}");
}

/// A node kept away from its subscription longer than the stream keeps: the gap is detected,
/// counted and logged, and what the stream still has arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_beyond_the_replay_window_is_reported() {
    let Some(redis) = redis_support::start() else {
        return;
    };
    let small = || RedisOptions {
        stream_max_len: 10, // approximate: Redis trims whole nodes of ~100 entries
        ..RedisOptions::new(redis.url())
    };
    let one = redis_support::serve(node_with(small())).await;
    let two_hub = node_with(small());
    let two_ctx = two_hub.context();
    let two = redis_support::serve(two_hub).await;
    let mut sender = Client::connect(&one).await;
    let mut receiver = Client::connect(&two).await;
    receiver.invoke("Join", json!(["g"])).await;
    sender.invoke("Burst", json!(["g", 5])).await;
    receiver.wait_for("Seq", 5).await;

    // Subscribing is refused for a while: the subscribers cannot come back.
    assert_eq!(
        redis.command("ACL SETUSER default -subscribe").unwrap(),
        "+OK"
    );
    assert!(
        redis
            .command("CLIENT KILL TYPE pubsub")
            .unwrap()
            .starts_with(':')
    );
    sender.invoke("Burst", json!(["g", 1000])).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        redis.command("ACL SETUSER default +subscribe").unwrap(),
        "+OK"
    );

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let stats = loop {
        let s = two_ctx.backplane_stats().unwrap();
        if s.reconnects >= 1 {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "no recovery: {s:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        stats.gaps >= 1,
        "the trimmed gap must be reported: {stats:?}"
    );
    assert!(stats.lost > 0, "{stats:?}");
    assert_eq!(stats.epoch_resets, 0, "{stats:?}");
    // The tail the stream kept arrives, in order, ending with the last message.
    sender.invoke("Burst", json!(["g", 1])).await;
    let mut n = 7;
    let got = loop {
        let got = receiver.wait_for("Seq", n).await;
        if got.last() == Some(&json!([0])) {
            break got;
        }
        n = got.len() + 1;
    };
    let tail: Vec<u64> = got[5..got.len() - 1]
        .iter()
        .map(|a| a[0].as_u64().unwrap())
        .collect();
    assert!(
        !tail.is_empty() && tail.len() < 1000,
        "{} replayed",
        tail.len()
    );
    assert!(
        tail.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no duplicate"
    );
    assert_eq!(*tail.last().unwrap(), 999);
    assert_eq!(
        tail.len() as u64 + stats.lost,
        1000,
        "replayed + reported lost = missed"
    );
    eprintln!(
        "{} replayed, {} reported lost: {stats:?}",
        tail.len(),
        stats.lost
    );
}
