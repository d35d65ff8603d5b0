//! Slow clients and floods (issue 8 item 4): slowloris sockets closed by the header-read
//! timeout, a WebSocket reader that stalls closed by the send timeout with its buffer bounded
//! while everyone else gets every broadcast in order, and the per-path and per-connection caps
//! (pending negotiations, groups, concurrent upload streams, POST body size).

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use support::*;
use tidings::server::ServerOptions;
use tidings::transport::{BoxFuture, CloseKind, ConnectionHandler, ConnectionIo, Frame, Outbound};
use tidings::{HubOptions, HubService, TransportOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The timing-sensitive tests take turns: on 2 cores, 1 000 slowloris sockets next to a
/// 100-client broadcast would measure the scheduler, not the server.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until the peer closes `s` (EOF or reset), returning when that happened.
async fn closed_by_server(mut s: TcpStream, deadline: Duration) -> Option<Instant> {
    let mut buf = [0u8; 1024];
    let until = tokio::time::Instant::now() + deadline;
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(Instant::now()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// How a slowloris socket misbehaves.
#[derive(Clone, Copy, Debug)]
enum Slow {
    /// Connects and sends nothing.
    Silent,
    /// Sends a request head one byte at a time, never finishing it.
    Dribbling,
    /// Completes one request, then keeps the connection open and idle.
    IdleKeepAlive,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_sockets_are_closed_at_the_header_timeout() {
    let _turn = HEAVY.lock().await;
    // 1 000 sockets (2 000 descriptors with both ends in this process) on 2 shared cores.
    const SOCKETS: usize = 1000;
    let timeout = Duration::from_secs(1);
    let server = TestServer::with(Config {
        server: ServerOptions::default().header_read_timeout(timeout),
        ..Config::default()
    })
    .await;
    let fds_before = open_fds();

    // A healthy client invoking 10 times a second throughout.
    let mut canary = ws_json(&server.ws_url("/hub")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let canary_task = tokio::spawn(async move {
        let mut ok = 0u32;
        let mut i = 0u32;
        while !stop2.load(Ordering::Relaxed) {
            i += 1;
            let id = i.to_string();
            let done = invoke(&mut canary, &id, "Echo", &format!("[\"{i}\"]")).await;
            assert_eq!(done["result"], id, "canary answer");
            ok += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = futures_util::SinkExt::close(&mut canary).await;
        ok
    });

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(SOCKETS);
    for i in 0..SOCKETS {
        let kind = [Slow::Silent, Slow::Dribbling, Slow::IdleKeepAlive][i % 3];
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let mut from = Instant::now();
            match kind {
                Slow::Silent => {}
                Slow::Dribbling => {
                    let (r, mut w) = s.into_split();
                    let dribble = tokio::spawn(async move {
                        let head = b"GET /hub/negotiate HTTP/1.1\r\nHost: x\r\nX-Slow: ";
                        for b in head.iter().chain(std::iter::repeat(&b'a')) {
                            if w.write_all(&[*b]).await.is_err() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                    });
                    let closed = closed_by_server_read(r, Duration::from_secs(10)).await;
                    dribble.abort();
                    return (kind, closed.map(|t| t - from));
                }
                Slow::IdleKeepAlive => {
                    s.write_all(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
                        .await
                        .unwrap();
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(buf[..n].starts_with(b"HTTP/1.1 404"));
                    from = Instant::now();
                }
            }
            let closed = closed_by_server(s, Duration::from_secs(10)).await;
            (kind, closed.map(|t| t - from))
        }));
    }
    let mut worst = Duration::ZERO;
    let mut never = 0;
    for t in tasks {
        let (kind, held) = step("slowloris socket", t).await.unwrap();
        match held {
            Some(d) => {
                assert!(d >= timeout / 2, "{kind:?} closed too early: {d:?}");
                worst = worst.max(d);
            }
            None => never += 1,
        }
    }
    assert_eq!(never, 0, "sockets never closed by the server");
    // The timer fires at the timeout; the rest is scheduling on a loaded 2-core machine.
    assert!(
        worst <= timeout + Duration::from_millis(1500),
        "worst {worst:?}"
    );
    let elapsed = started.elapsed();

    stop.store(true, Ordering::Relaxed);
    let ok = step("canary", canary_task).await.unwrap();
    let expected = (elapsed.as_millis() / 100) as u32;
    assert!(ok * 2 >= expected, "canary made {ok} calls in {elapsed:?}");

    // Descriptors return to what they were.
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_fds() > fds_before + 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        open_fds() <= fds_before + 5,
        "fds {} > {fds_before} + 5",
        open_fds()
    );
    eprintln!(
        "{SOCKETS} slowloris sockets: worst close after {worst:?} (timeout {timeout:?}); canary {ok} calls in {elapsed:?}"
    );
}

/// `closed_by_server` for the read half of a split stream.
async fn closed_by_server_read(
    mut r: tokio::net::tcp::OwnedReadHalf,
    deadline: Duration,
) -> Option<Instant> {
    let mut buf = [0u8; 1024];
    let until = tokio::time::Instant::now() + deadline;
    loop {
        match tokio::time::timeout_at(until, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(Instant::now()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// Opens a WebSocket whose client side has a tiny receive buffer, so that a client that stops
/// reading stalls the server's writes quickly.
async fn ws_small_window(url: &str, addr: std::net::SocketAddr) -> Ws {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(addr).await.unwrap();
    let (ws, _) = step(
        "websocket connect",
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream)),
    )
    .await
    .unwrap();
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_stops_reading_is_closed_and_the_others_get_everything() {
    let _turn = HEAVY.lock().await;
    const READERS: usize = 99;
    const MESSAGES: usize = 3000;
    let send_timeout = Duration::from_millis(500);
    let server = TestServer::with(Config {
        transport: TransportOptions {
            transport_send_timeout: send_timeout,
            ..TransportOptions::default()
        },
        // Without this the kernel alone absorbs ~3 MB for the stalled client.
        listen: tidings::server::ListenOptions::default().send_buffer_size(Some(64 * 1024)),
        ..Config::default()
    })
    .await;
    let url = server.ws_url("/hub");

    // The slow consumer: handshakes, then never reads again.
    let mut slow = ws_small_window(&url, server.addr).await;
    send_text(
        &mut slow,
        &format!("{{\"protocol\":\"json\",\"version\":1}}{RS}"),
    )
    .await;

    let received: Arc<Vec<AtomicUsize>> =
        Arc::new((0..READERS).map(|_| AtomicUsize::new(0)).collect());
    let mut readers = Vec::new();
    for r in 0..READERS {
        let mut ws = ws_json(&url).await;
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            let mut next = 0usize;
            while next < MESSAGES {
                let text = next_text(&mut ws).await;
                for record in text.split(RS).filter(|s| !s.is_empty()) {
                    let v: serde_json::Value = serde_json::from_str(record).unwrap();
                    if v["type"] != 1 {
                        continue;
                    }
                    let arg = v["arguments"][0].as_str().unwrap();
                    let n: usize = arg[..6].parse().unwrap();
                    assert_eq!(n, next, "reader {r}: out of order or lost");
                    next += 1;
                    received[r].store(next, Ordering::Relaxed);
                }
            }
            let _ = futures_util::SinkExt::close(&mut ws).await;
        }));
    }
    step("registration", async {
        while server.context.connection_count() < READERS + 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let pad = "p".repeat(1024 - 7);
    let clients = server.context.clients();
    let started = Instant::now();
    let mut slow_gone_at = None;
    for i in 0..MESSAGES {
        clients
            .all()
            .send("Broadcast", (format!("{i:06}-{pad}"),))
            .await
            .unwrap();
        if i % 100 == 99 {
            // Pace the broadcast by the readers, never by the stalled client.
            step("readers keep up", async {
                while received.iter().any(|c| c.load(Ordering::Relaxed) + 200 < i) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
            .await;
        }
        if slow_gone_at.is_none() && server.context.connection_count() == READERS {
            slow_gone_at = Some(started.elapsed());
        }
    }
    for r in readers {
        step("reader", r).await.unwrap();
    }
    // The slow consumer is gone by now, or within the send timeout and a margin.
    step("slow consumer closed", async {
        while server.context.connection_count() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let total = started.elapsed();
    eprintln!(
        "{READERS} readers got {MESSAGES}/{MESSAGES} in order in {total:?}; slow consumer dropped at {slow_gone_at:?}"
    );
    assert!(
        slow_gone_at.is_some(),
        "the stalled client survived the whole broadcast"
    );
    // What the stalled client saw before it stopped reading is irrelevant; it must be closed.
    drop(slow);
}

/// A raw connection handler that lets the test push to every connection's outbound buffer
/// directly, to observe the buffer's high-water mark (the hub does the same via its registry).
#[derive(Clone, Default)]
struct Broadcaster {
    outbounds: Arc<Mutex<Vec<Arc<Outbound>>>>,
    ended: Arc<AtomicUsize>,
}

impl ConnectionHandler for Broadcaster {
    fn on_connected(&self, mut io: ConnectionIo) -> BoxFuture<()> {
        self.outbounds.lock().unwrap().push(io.outbound.clone());
        let ended = self.ended.clone();
        Box::pin(async move {
            while io.inbound.recv().await.is_some() {}
            ended.fetch_add(1, Ordering::Relaxed);
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_socket_buffers_at_most_the_outbound_limit() {
    let _turn = HEAVY.lock().await;
    let limit = 256 * 1024;
    let send_timeout = Duration::from_millis(500);
    let options = TransportOptions {
        transport_send_timeout: send_timeout,
        transport_max_buffer_size: limit,
        ..TransportOptions::default()
    };
    let handler = Broadcaster::default();
    let service = HubService::new(handler.clone(), options);
    let listen = tidings::server::ListenOptions::default().send_buffer_size(Some(64 * 1024));
    let listener = tidings::server::bind_with("127.0.0.1:0", &listen)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(tidings::server::serve(
        listener,
        service.clone(),
        stop.clone().cancelled_owned(),
    ));
    let url = format!("ws://{addr}/raw");
    let registered = |n: usize| {
        let handler = handler.clone();
        step("registration", async move {
            while handler.outbounds.lock().unwrap().len() < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // The stalled client registers first, so it is outbound 0.
    let slow = ws_small_window(&url, addr).await;
    registered(1).await;
    let mut reader = ws_open(&url).await;
    registered(2).await;
    let outbounds = handler.outbounds.lock().unwrap().clone();
    let message = Bytes::from(vec![b'm'; 1024]);
    // Either the buffer fills (the test then closes the connection, as the hub does), or the
    // transport's send timeout closes it first. Both must happen with the buffer bounded.
    let mut stalled: Option<(usize, Instant, &str)> = None;
    for i in 0..20_000 {
        match outbounds[0].push(Frame::Binary(message.clone())) {
            Ok(()) => {}
            Err(tidings::transport::SendError::Full) => {
                if stalled.is_none() {
                    stalled = Some((i, Instant::now(), "buffer full"));
                    outbounds[0].close(CloseKind::Error);
                }
            }
            Err(tidings::transport::SendError::Closed) => {
                if stalled.is_none() {
                    stalled = Some((i, Instant::now(), "send timeout"));
                }
            }
        }
        assert_eq!(
            outbounds[1].push(Frame::Binary(message.clone())),
            Ok(()),
            "the reading client"
        );
        // Drain the healthy reader as we go.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(
            Duration::from_millis(0),
            futures_util::StreamExt::next(&mut reader),
        )
        .await
        {}
        if stalled.is_some_and(|(at, _, _)| i > at + 100) {
            break;
        }
    }
    let (at, when, how) = stalled.expect("the stalled client was neither full nor closed");
    let high = outbounds[0].high_water_mark();
    assert!(high <= limit, "buffered {high} > {limit}");
    let closed = step("stalled socket closed", async {
        while handler.ended.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        when.elapsed()
    })
    .await;
    assert!(
        closed <= send_timeout + Duration::from_millis(1500),
        "closed {closed:?} after the stall was seen"
    );
    eprintln!(
        "stalled socket: {how} after {at} KiB pushed, high water {high} B (limit {limit}), closed {closed:?} after that"
    );
    drop(slow);
    drop(reader);
    stop.cancel();
    let _ = step("server", server).await;
}

#[tokio::test]
async fn pending_negotiations_are_capped_with_429() {
    let server = TestServer::with(Config {
        transport: TransportOptions {
            maximum_pending_negotiations: 20,
            ..quick_reaping()
        },
        ..Config::default()
    })
    .await;
    let a = server.addr;
    for _ in 0..20 {
        negotiate(a, "/hub").await;
    }
    let res = http(
        a,
        Method::POST,
        "/hub/negotiate?negotiateVersion=1",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(!res.text().is_empty());
    // A WebSocket without negotiate creates a connection too.
    assert_eq!(
        ws_try(&server.ws_url("/hub")).await.err(),
        Some(StatusCode::TOO_MANY_REQUESTS)
    );
    // Other paths have their own budget.
    negotiate(a, "/lp").await;
    // The abandoned negotiations are reaped; then negotiate works again.
    server.wait_no_connections().await;
    negotiate(a, "/hub").await;
    let mut ws = ws_json(&server.ws_url("/hub")).await;
    assert_eq!(invoke(&mut ws, "1", "Add", "[1,2]").await["result"], 3);
}

#[tokio::test]
async fn groups_per_connection_are_capped() {
    let server = TestServer::with(Config {
        hub: HubOptions {
            maximum_groups_per_connection: 10,
            ..HubOptions::default()
        },
        ..Config::default()
    })
    .await;
    let mut ws = ws_json(&server.ws_url("/hub")).await;
    for g in 0..10 {
        let done = invoke(
            &mut ws,
            &g.to_string(),
            "AddToGroup",
            &format!("[\"g{g}\"]"),
        )
        .await;
        assert!(done.get("error").is_none(), "{done}");
    }
    let done = invoke(&mut ws, "x", "AddToGroup", "[\"one too many\"]").await;
    let error = done["error"].as_str().unwrap();
    assert!(error.contains("at most 10 groups"), "{error}");
    // Re-adding an existing group is not a new one.
    let done = invoke(&mut ws, "y", "AddToGroup", "[\"g3\"]").await;
    assert!(done.get("error").is_none(), "{done}");
    assert_eq!(invoke(&mut ws, "z", "Add", "[1,2]").await["result"], 3);
}

#[tokio::test]
async fn concurrent_upload_streams_are_capped() {
    let server = TestServer::with(Config {
        hub: HubOptions {
            maximum_concurrent_streams_per_client: 2,
            ..HubOptions::default()
        },
        ..Config::default()
    })
    .await;
    let mut ws = ws_json(&server.ws_url("/hub")).await;
    for (id, sid) in [("1", "a"), ("2", "b")] {
        send_text(
            &mut ws,
            &format!("{{\"type\":1,\"invocationId\":\"{id}\",\"target\":\"StreamingConcat\",\"arguments\":[],\"streamIds\":[\"{sid}\"]}}{RS}"),
        )
        .await;
    }
    send_text(
        &mut ws,
        &format!("{{\"type\":1,\"invocationId\":\"3\",\"target\":\"StreamingConcat\",\"arguments\":[],\"streamIds\":[\"c\"]}}{RS}"),
    )
    .await;
    let done = next_record(&mut ws, |v| v["type"] == 3 && v["invocationId"] == "3").await;
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("Too many concurrent streams"),
        "{done}"
    );
    // The two open streams still work.
    for sid in ["a", "b"] {
        send_text(
            &mut ws,
            &format!("{{\"type\":2,\"invocationId\":\"{sid}\",\"item\":\"{sid}!\"}}{RS}"),
        )
        .await;
        send_text(
            &mut ws,
            &format!("{{\"type\":3,\"invocationId\":\"{sid}\"}}{RS}"),
        )
        .await;
    }
    // Both complete, in either order.
    let mut results = std::collections::BTreeMap::new();
    while results.len() < 2 {
        let text = next_text(&mut ws).await;
        for record in text.split(RS).filter(|r| !r.is_empty()) {
            let v: serde_json::Value = serde_json::from_str(record).unwrap();
            if v["type"] == 3 {
                results.insert(v["invocationId"].to_string(), v["result"].to_string());
            }
        }
    }
    assert_eq!(results["\"1\""], "\"a!\"");
    assert_eq!(results["\"2\""], "\"b!\"");
}

#[tokio::test]
async fn post_bodies_over_the_configured_limit_get_413() {
    let server = TestServer::with(Config {
        transport: TransportOptions {
            maximum_post_body_size: 64 * 1024,
            ..quick_reaping()
        },
        ..Config::default()
    })
    .await;
    let lp = LongPoll::connect(server.addr, "/hub").await;
    let res = lp.post(vec![b' '; 64 * 1024 + 1]).await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE);
    let res = lp.post(invocation("1", "Echo", "[\"fits\"]")).await;
    assert_eq!(res.status, StatusCode::OK);
    let done = lp.invoke("2", "Echo", "[\"after 413\"]").await;
    assert_eq!(done["result"], "after 413");
    assert_eq!(lp.delete().await.status, StatusCode::ACCEPTED);
    server.wait_no_connections().await;
}
