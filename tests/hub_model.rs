//! The hub model driven in memory through `tidings::testing::TestClient`: the real connection
//! loop and dispatch, without HTTP.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream;
use tidings::auth::Policy;
use tidings::filter::{self, FilterKind, FilterResult};
use tidings::protocol::{HubMessage, Protocol};
use tidings::testing::TestClient;
use tidings::transport::Principal;
use tidings::{Args, Caller, Clients, Groups, Hub, HubError, State};

const BOTH: [Protocol; 2] = [Protocol::Json, Protocol::MessagePack];

fn user(id: &str) -> Option<Principal> {
    Some(Principal {
        user_id: Some(id.into()),
        claims: vec![(
            "role".into(),
            if id == "admin" { "admin" } else { "user" }.into(),
        )],
    })
}

#[tokio::test]
async fn typed_arguments_results_and_binding_errors() {
    let hub = Hub::builder()
        .method("Add", |Args((a, b)): Args<(i64, i64)>| async move { a + b })
        .method("Len", |Args(v): Args<Vec<String>>| async move { v.len() })
        .method("Nothing", || async {})
        .build();
    for p in BOTH {
        let mut c = TestClient::connect(&hub, p).await;
        assert_eq!(c.invoke::<i64>("add", (2, 40)).await, Ok(42), "{p:?}");
        assert_eq!(c.invoke::<usize>("Len", (["a", "b"],)).await, Ok(2));
        assert_eq!(c.invoke::<()>("Nothing", ()).await, Ok(()));
        let err = c.invoke::<i64>("Add", ("x", 1)).await.unwrap_err();
        assert_eq!(err, "Failed to invoke 'Add' due to an error on the server.");
        let err = c.invoke::<i64>("Add", (1,)).await.unwrap_err();
        assert_eq!(err, "Failed to invoke 'Add' due to an error on the server.");
        assert_eq!(
            c.invoke::<i64>("Nope", ()).await.unwrap_err(),
            "Unknown hub method 'Nope'"
        );
        // The connection is still usable after every error.
        assert_eq!(c.invoke::<i64>("Add", (1, 1)).await, Ok(2));
    }
}

#[tokio::test]
async fn detailed_errors_only_when_enabled_hub_errors_always() {
    let build = |detailed: bool| {
        Hub::builder()
            .method("Boom", || async {
                Err::<(), _>(HubError::unexpected("InvalidOperationException", "secret"))
            })
            .method("Refuse", || async { Err::<(), _>(HubError::new("shown")) })
            .method("Io", || async {
                std::fs::read("/definitely/not/here")?;
                Ok::<(), HubError>(())
            })
            .configure(|o| o.enable_detailed_errors = detailed)
            .build()
    };
    let mut plain = TestClient::connect(&build(false), Protocol::Json).await;
    assert_eq!(
        plain.invoke::<()>("Boom", ()).await.unwrap_err(),
        "An unexpected error occurred invoking 'Boom' on the server."
    );
    assert_eq!(
        plain.invoke::<()>("Io", ()).await.unwrap_err(),
        "An unexpected error occurred invoking 'Io' on the server."
    );
    assert_eq!(
        plain.invoke::<()>("Refuse", ()).await.unwrap_err(),
        "An unexpected error occurred invoking 'Refuse' on the server. HubException: shown"
    );
    let mut detailed = TestClient::connect(&build(true), Protocol::Json).await;
    assert_eq!(
        detailed.invoke::<()>("Boom", ()).await.unwrap_err(),
        "An unexpected error occurred invoking 'Boom' on the server. InvalidOperationException: secret"
    );
    let io = detailed.invoke::<()>("Io", ()).await.unwrap_err();
    assert!(
        io.starts_with("An unexpected error occurred invoking 'Io' on the server. Error: "),
        "{io}"
    );
}

#[tokio::test]
async fn filters_wrap_invocations_and_hooks_in_order() {
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let (l1, l2) = (log.clone(), log.clone());
    let hub = Hub::builder()
        .method("Echo", |Args(s): Args<String>| async move { s })
        .method("Secret", || async { 1 })
        .on_connected(|| async {})
        .filter(filter::from_fn(move |call, next| {
            let log = l1.clone();
            async move {
                log.lock()
                    .unwrap()
                    .push(format!("outer>{:?}:{}", call.kind, call.method));
                let r = next.run().await;
                log.lock().unwrap().push(format!("outer<{}", r.is_ok()));
                r
            }
        }))
        .filter(filter::from_fn(move |call, next| {
            let log = l2.clone();
            async move {
                log.lock()
                    .unwrap()
                    .push(format!("inner>{}", call.argument_count));
                if call.kind == FilterKind::Invocation && call.method == "Secret" {
                    return FilterResult::reject(HubError::new("filtered"));
                }
                next.run().await
            }
        }))
        .build();
    let mut c = TestClient::connect(&hub, Protocol::MessagePack).await;
    assert_eq!(
        c.invoke::<String>("Echo", ("hi",)).await.as_deref(),
        Ok("hi")
    );
    assert_eq!(
        c.invoke::<i32>("Secret", ()).await.unwrap_err(),
        "An unexpected error occurred invoking 'Secret' on the server. HubException: filtered"
    );
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        vec![
            "outer>Connected:",
            "inner>0",
            "outer<true",
            "outer>Invocation:Echo",
            "inner>1",
            "outer<true",
            "outer>Invocation:Secret",
            "inner>0",
            "outer<false",
        ]
    );
}

#[tokio::test]
async fn per_method_authorization_uses_the_dotnet_text() {
    let hub = Hub::builder()
        .method("Public", || async { "ok" })
        .method("Admin", || async { "admin ok" })
        .method("Signed", |caller: Caller| async move {
            caller.user_id().map(str::to_owned)
        })
        .authorize_method("admin", Policy::claim("role", "admin"))
        .authorize_method("Signed", Policy::authenticated())
        .build();
    let mut anon = TestClient::connect(&hub, Protocol::Json).await;
    assert_eq!(
        anon.invoke::<String>("Public", ()).await.as_deref(),
        Ok("ok")
    );
    assert_eq!(
        anon.invoke::<String>("Admin", ()).await.unwrap_err(),
        "Failed to invoke 'Admin' because user is unauthorized"
    );
    assert_eq!(
        anon.invoke::<Option<String>>("Signed", ())
            .await
            .unwrap_err(),
        "Failed to invoke 'Signed' because user is unauthorized"
    );
    let mut bob = TestClient::connect_as(&hub, Protocol::Json, user("bob")).await;
    assert_eq!(
        bob.invoke::<Option<String>>("Signed", ()).await,
        Ok(Some("bob".into()))
    );
    assert!(bob.invoke::<String>("Admin", ()).await.is_err());
    let mut admin = TestClient::connect_as(&hub, Protocol::Json, user("admin")).await;
    assert_eq!(
        admin.invoke::<String>("Admin", ()).await.as_deref(),
        Ok("admin ok")
    );
}

#[tokio::test]
async fn a_method_can_await_its_own_caller_without_raising_the_cap() {
    // maximum_parallel_invocations_per_client stays 1: the loop keeps reading Completions
    // while the handler waits, so this cannot deadlock.
    let hub = Hub::builder()
        .method("AskMe", |caller: Caller| async move {
            let answer: i64 = caller.invoke("Question", ("6*7?",)).await?;
            Ok::<_, HubError>(answer + 1)
        })
        .build();
    assert_eq!(hub.options().maximum_parallel_invocations_per_client, 1);
    let mut c = TestClient::connect(&hub, Protocol::Json).await;
    let id = "1".to_string();
    let msg = HubMessage::Invocation(tidings::protocol::Invocation {
        headers: Default::default(),
        invocation_id: Some(id.clone()),
        target: "AskMe".into(),
        arguments: tidings::protocol::Payload(bytes::Bytes::from_static(b"[]")),
        stream_ids: vec![],
    });
    c.send_raw(Protocol::Json.encode_message(&msg).to_vec())
        .await;
    let question = c.next_invocation().await.expect("server asks");
    assert_eq!(question.target, "Question");
    let qid = question.invocation_id.expect("client results carry an id");
    let answer = HubMessage::Completion(tidings::protocol::Completion {
        headers: Default::default(),
        invocation_id: qid,
        outcome: tidings::protocol::Outcome::Result(Protocol::Json.encode_value(&42).unwrap()),
    });
    c.send_raw(Protocol::Json.encode_message(&answer).to_vec())
        .await;
    loop {
        match c.next_message().await.expect("completion") {
            HubMessage::Completion(done) => {
                assert_eq!(done.invocation_id, id);
                assert_eq!(
                    done.outcome,
                    tidings::protocol::Outcome::Result(Protocol::Json.encode_value(&43).unwrap())
                );
                break;
            }
            HubMessage::Ping => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn invocations_of_one_connection_run_in_order_under_the_cap() {
    let order: Arc<Mutex<Vec<u64>>> = Arc::default();
    let hub = Hub::builder()
        .state(order.clone())
        .method(
            "Slow",
            |State(order): State<Arc<Mutex<Vec<u64>>>>, Args(n): Args<u64>| async move {
                tokio::time::sleep(Duration::from_millis(30 - n * 10)).await;
                order.lock().unwrap().push(n);
                n
            },
        )
        .build();
    let mut c = TestClient::connect(&hub, Protocol::Json).await;
    for n in 0..3u64 {
        c.send("Slow", (n,)).await;
    }
    assert_eq!(c.invoke::<u64>("Slow", (2,)).await, Ok(2));
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 2]);
}

#[tokio::test]
async fn fan_out_targets_and_hub_context() {
    let hub = Hub::builder()
        .method(
            "Join",
            |c: Caller, g: Groups, Args(name): Args<String>| async move {
                g.add(c.connection_id(), &name).await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "ToGroup",
            |c: Clients, Args((g, m)): Args<(String, String)>| async move {
                c.group(g).send("Msg", (m,)).await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "ToOthersInGroup",
            |c: Clients, Args((g, m)): Args<(String, String)>| async move {
                c.others_in_group(g).send("Msg", (m,)).await?;
                Ok::<(), HubError>(())
            },
        )
        .build();
    let mut a = TestClient::connect_as(&hub, Protocol::Json, user("alice")).await;
    let mut b = TestClient::connect_as(&hub, Protocol::MessagePack, user("bob")).await;
    a.invoke::<()>("Join", ("g",)).await.unwrap();
    b.invoke::<()>("Join", ("g",)).await.unwrap();
    a.invoke::<()>("ToOthersInGroup", ("g", "one"))
        .await
        .unwrap();
    let got = b.next_invocation().await.unwrap();
    assert_eq!(got.target, "Msg");
    let ctx = hub.context();
    assert_eq!(ctx.connection_count(), 2);
    ctx.clients()
        .user("alice")
        .send("Msg", ("to alice",))
        .await
        .unwrap();
    let got = a.next_invocation().await.unwrap();
    let args: (String,) = Protocol::Json.decode_value(&got.arguments).unwrap();
    assert_eq!(args.0, "to alice");
    ctx.clients()
        .all_except([b.connection_id()])
        .send("Msg", ("not bob",))
        .await
        .unwrap();
    ctx.clients()
        .client(b.connection_id())
        .send("Msg", ("bob only",))
        .await
        .unwrap();
    let got = b.next_invocation().await.unwrap();
    let args: (String,) = Protocol::MessagePack.decode_value(&got.arguments).unwrap();
    assert_eq!(args.0, "bob only", "AllExcept must skip bob");
    assert_eq!(ctx.groups().members("g").len(), 2);
    b.close().await;
    for _ in 0..100 {
        if ctx.connection_count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ctx.connection_count(), 1);
    assert_eq!(
        ctx.groups().members("g"),
        vec![a.connection_id().to_owned()]
    );
}

#[tokio::test]
async fn invoking_a_streaming_method_is_refused_with_the_dotnet_text() {
    let hub = Hub::builder()
        .stream(
            "Count",
            |Args(n): Args<u32>| async move { stream::iter(0..n) },
        )
        .build();
    let mut c = TestClient::connect(&hub, Protocol::Json).await;
    assert_eq!(
        c.invoke::<()>("Count", (3,)).await.unwrap_err(),
        "The client attempted to invoke the streaming 'Count' method with a non-streaming invocation."
    );
}

#[tokio::test]
async fn drain_closes_connections_with_allow_reconnect() {
    let hub = Hub::builder()
        .method("Echo", |Args(s): Args<String>| async move { s })
        .build();
    let mut c = TestClient::connect(&hub, Protocol::Json).await;
    let remaining = hub.drain(Duration::from_secs(5)).await;
    assert_eq!(remaining, 0);
    assert!(hub.is_draining());
    loop {
        match c.next_message().await {
            Some(HubMessage::Close(close)) => {
                assert!(close.allow_reconnect);
                assert_eq!(close.error, None);
                break;
            }
            Some(HubMessage::Ping) => {}
            other => panic!("expected Close, got {other:?}"),
        }
    }
}
