//! `StreamIngress` against a real redis-server: entries any service `XADD`s reach a hub group,
//! each once even when several nodes run the same ingress.

mod redis_support;

use redis_support::Client;
use serde_json::json;
use tidings::backplane::{StreamIngress, StreamIngressOptions};
use tidings::{Args, Caller, Groups, Hub, HubError};

fn hub() -> Hub {
    Hub::builder()
        .name("Ingress")
        .method(
            "Join",
            |caller: Caller, groups: Groups, Args(g): Args<String>| async move {
                groups.add(caller.connection_id(), &g).await?;
                Ok::<(), HubError>(())
            },
        )
        .build()
}

#[tokio::test]
async fn xadded_entries_reach_the_group_once() {
    let Some(redis) = redis_support::start() else {
        return;
    };
    let hub = hub();
    let ctx = hub.context();
    let url = redis_support::serve(hub).await;
    let mut member = Client::connect(&url).await;
    member.invoke("Join", json!(["feed"])).await;
    let mut outsider = Client::connect(&url).await;

    let options = || StreamIngressOptions {
        start: "0".into(),
        ..Default::default()
    };
    // Two "nodes" read the same stream through one consumer group.
    let a = StreamIngress::spawn_with(
        &redis.url(),
        "events",
        ctx.clone(),
        "feed",
        "Entry",
        options(),
    )
    .unwrap();
    let b = StreamIngress::spawn_with(
        &redis.url(),
        "events",
        ctx.clone(),
        "feed",
        "Entry",
        options(),
    )
    .unwrap();
    for i in 0..20 {
        let reply = redis
            .command(&format!("XADD events * kind order n {i}"))
            .unwrap();
        assert!(reply.starts_with('$'), "XADD: {reply}");
    }
    let got = member.wait_for("Entry", 20).await;
    let mut ns: Vec<u64> = got
        .iter()
        .map(|args| {
            assert!(
                args[0].as_str().unwrap().contains('-'),
                "entry id first: {args}"
            );
            assert_eq!(args[1]["kind"], "order");
            args[1]["n"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..20).collect::<Vec<_>>(), "each entry exactly once");
    // Nothing more arrives, and a non-member got nothing.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    member.invoke("Join", json!(["feed"])).await;
    assert_eq!(
        member.received.iter().filter(|(t, _)| t == "Entry").count(),
        20
    );
    outsider.invoke("Join", json!(["elsewhere"])).await;
    assert!(outsider.received.is_empty());
    a.stop().await;
    b.stop().await;
}
