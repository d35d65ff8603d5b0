//! Secrets never reach the logs (issue 8 item 7, reliability notes H6): a scenario over every
//! transport, with authentication, failures and hostile requests, runs with trace-level logs of
//! the *server* captured (its runtime lives on its own thread with its own subscriber, so the
//! in-process clients' logs are not mixed in); the capture is then searched for every
//! connection token and access token issued: 0 hits.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use support::*;
use tidings::auth::JwtAuth;
use tidings::{HubOptions, TransportOptions};

/// A `MakeWriter` appending everything to one shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Every secret the scenario was handed (or forged).
#[derive(Debug, Default)]
struct Secrets {
    tokens: Vec<String>,
    /// Negotiate v0 ids, which are also the transport token: public by design, reported only.
    v0_ids: Vec<String>,
}

#[test]
fn no_token_appears_in_trace_logs() {
    let capture = Capture::default();
    // Global (this binary has one test), with the `log` bridge so that tungstenite's records
    // are captured too; lines are tagged with their thread so the server's can be told apart.
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .with_ansi(false)
        .with_thread_names(true)
        .finish()
        .try_init()
        .expect("the only subscriber of this test binary");

    // The server: its own thread, its own runtime, its own subscriber.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let secret: [u8; 32] = rand::random();
    let jwt = JwtAuth::hs256(&secret).unwrap();
    let issuer = jwt.clone();
    let server_thread = std::thread::Builder::new()
        .name("tidings-server".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = TestServer::with(Config {
                    hub: HubOptions {
                        enable_detailed_errors: true,
                        ..HubOptions::default()
                    },
                    transport: TransportOptions {
                        allow_stateful_reconnects: true,
                        ..quick_reaping()
                    },
                    ..Config::default()
                })
                .await;
                // An authenticated path on a second listener.
                let authed = support::test_hub(|_| {})
                    .service(quick_reaping())
                    .with_authentication(jwt.authenticate());
                let listener = tidings::server::bind("127.0.0.1:0").await.unwrap();
                let authed_addr = listener.local_addr().unwrap();
                let (stop2_tx, stop2_rx) = tokio::sync::oneshot::channel::<()>();
                let authed_task = tokio::spawn(tidings::server::serve(listener, authed, async {
                    let _ = stop2_rx.await;
                }));
                addr_tx.send((server.addr, authed_addr)).unwrap();
                let _ = stop_rx.await;
                server.wait_no_connections().await;
                let _ = stop2_tx.send(());
                let _ = authed_task.await;
                server.stop().await;
            });
        })
        .unwrap();
    let (addr, authed_addr) = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let secrets = rt.block_on(scenario(addr, authed_addr, &issuer));
    let _ = stop_tx.send(());
    server_thread.join().unwrap();

    let all = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let log: String = all
        .lines()
        .filter(|l| l.contains(" tidings-server "))
        .map(|l| format!("{l}\n"))
        .collect();
    if std::env::var_os("SHOW_LOG").is_some() {
        eprintln!("{log}");
    }
    // The capture works: the server logged plenty at trace level.
    assert!(
        log.lines().count() > 100,
        "only {} log lines",
        log.lines().count()
    );
    let mut leaks = Vec::new();
    for token in &secrets.tokens {
        let hits = log.matches(token.as_str()).count();
        if hits > 0 {
            let line = log.lines().find(|l| l.contains(token.as_str())).unwrap();
            leaks.push(format!("{hits} hit(s) of {token:.12}…: {line:.300}"));
        }
    }
    eprintln!(
        "{} log lines, {} secrets checked, {} leaked",
        log.lines().count(),
        secrets.tokens.len(),
        leaks.len()
    );
    let v0_hits: usize = secrets
        .v0_ids
        .iter()
        .map(|id| log.matches(id.as_str()).count())
        .sum();
    eprintln!("negotiate v0 ids (= tokens, public by design) in the logs: {v0_hits} hit(s)");
    assert!(
        leaks.is_empty(),
        "secrets in the logs:\n{}",
        leaks.join("\n")
    );
}

async fn scenario(
    addr: std::net::SocketAddr,
    authed: std::net::SocketAddr,
    jwt: &JwtAuth,
) -> Secrets {
    let mut secrets = Secrets::default();

    // WebSocket with a token, stateful reconnect negotiated, a protocol error at the end.
    let res = http(
        addr,
        Method::POST,
        "/hub/negotiate?negotiateVersion=1&useStatefulReconnect=true",
        &[],
        Bytes::new(),
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    let token = v["connectionToken"].as_str().unwrap().to_owned();
    secrets.tokens.push(token.clone());
    let mut ws = ws_open(&format!("ws://{addr}/hub?id={token}")).await;
    send_text(&mut ws, "{\"protocol\":\"json\",\"version\":2}\u{1e}").await;
    let _ = next_text(&mut ws).await;
    let _ = invoke(&mut ws, "1", "Echo", "[\"hello\"]").await;
    send_text(&mut ws, "{\"type\":1,\"target\":\u{1e}").await;
    let _ = read_until_closed(&mut ws).await;
    // The same token again, a second socket, and a forged one.
    let _ = ws_try(&format!("ws://{addr}/hub?id={token}")).await;
    let _ = ws_try(&format!("ws://{addr}/hub?id={token}x")).await;

    // Long polling: handshake, invoke, an oversized POST, a stale poll after DELETE.
    let lp = LongPoll::connect(addr, "/hub").await;
    secrets.tokens.push(lp.ids.token.clone());
    let _ = lp.invoke("1", "ThisMethodDoesNotExist", "[]").await;
    let (status, _) = raw_request(
        addr,
        format!(
            "POST {} HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n",
            lp.url()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 413);
    let _ = lp.delete().await;
    let _ = lp.poll().await;
    let _ = http(
        addr,
        Method::GET,
        &format!("/hub?id={}&access_token=zzz", lp.ids.token),
        &[],
        Bytes::new(),
    )
    .await;

    // Server-Sent Events: handshake, invoke, a transport switch attempt, then drop.
    let mut sse = Sse::connect(addr, "/hub").await;
    secrets.tokens.push(sse.ids.token.clone());
    let _ = sse.invoke("1", "Add", "[\"not\",\"numbers\"]").await;
    let _ = http(addr, Method::GET, &sse.url(), &[], Bytes::new()).await;
    let _ = http(addr, Method::DELETE, &sse.url(), &[], Bytes::new()).await;
    drop(sse);

    // A negotiation never used (reaped), and a public id used as a token.
    let unused = negotiate(addr, "/hub").await;
    secrets.tokens.push(unused.token.clone());
    let _ = http(
        addr,
        Method::GET,
        &format!("/hub?id={}", unused.connection_id),
        &[],
        Bytes::new(),
    )
    .await;

    // Negotiate v0: the id is the token. Left unused, it is reaped (and logged by id).
    let res = http(addr, Method::POST, "/hub/negotiate", &[], Bytes::new()).await;
    let v: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    secrets
        .v0_ids
        .push(v["connectionId"].as_str().unwrap().to_owned());
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Authenticated path: bearer header (negotiate, long polling), access_token query (SSE,
    // WebSocket), and refused tokens (expired-looking, forged).
    let access = jwt.issue("alice", Duration::from_secs(300)).unwrap();
    secrets.tokens.push(access.clone());
    let bearer = format!("Bearer {access}");
    let res = http(
        authed,
        Method::POST,
        "/hub/negotiate?negotiateVersion=1",
        &[("authorization", bearer.as_str())],
        Bytes::new(),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    let token = v["connectionToken"].as_str().unwrap().to_owned();
    secrets.tokens.push(token.clone());
    let mut ws = ws_open(&format!(
        "ws://{authed}/hub?id={token}&access_token={access}"
    ))
    .await;
    send_text(&mut ws, "{\"protocol\":\"json\",\"version\":1}\u{1e}").await;
    let _ = next_text(&mut ws).await;
    let _ = invoke(&mut ws, "1", "Echo", "[\"hi\"]").await;
    let _ = futures_util::SinkExt::close(&mut ws).await;
    let _ = read_until_closed(&mut ws).await;
    let forged = format!("{access}x");
    secrets.tokens.push(forged.clone());
    let res = http(
        authed,
        Method::POST,
        "/hub/negotiate?negotiateVersion=1",
        &[("authorization", format!("Bearer {forged}").as_str())],
        Bytes::new(),
    )
    .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    let _ = http(
        authed,
        Method::GET,
        &format!("/hub?id={token}&access_token={forged}"),
        &[("accept", "text/event-stream")],
        Bytes::new(),
    )
    .await;
    secrets
}
