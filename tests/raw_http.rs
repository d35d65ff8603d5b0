//! Hostile HTTP against the transport endpoints (issue 3 item 6): forged, stale and public ids
//! used as tokens, transport switching, concurrent requests, oversized bodies, vanishing
//! clients. Each gets its status code; the connection it targets (if any) keeps working; and
//! the connection tables drain to zero once the clients are gone.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use support::*;
use tidings::TransportOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn lp_quick() -> Config {
    Config {
        transport: TransportOptions {
            long_polling_poll_timeout: Duration::from_millis(1500),
            ..quick_reaping()
        },
        ..Config::default()
    }
}

/// Every transport request with `id` on `path`, as (what, status).
async fn all_requests(
    server: &TestServer,
    path: &str,
    id: &str,
) -> Vec<(&'static str, StatusCode)> {
    let a = server.addr;
    let url = format!("{path}?id={id}");
    let ws = match ws_try(&format!("ws://{a}{url}")).await {
        Ok(_) => StatusCode::SWITCHING_PROTOCOLS,
        Err(s) => s,
    };
    vec![
        (
            "poll",
            http(a, Method::GET, &url, &[], Bytes::new()).await.status,
        ),
        (
            "sse",
            http_stream(
                a,
                Method::GET,
                &url,
                &[("accept", "text/event-stream")],
                Bytes::new(),
            )
            .await
            .status(),
        ),
        (
            "post",
            http(a, Method::POST, &url, &[], "{}\u{1e}").await.status,
        ),
        (
            "delete",
            http(a, Method::DELETE, &url, &[], Bytes::new())
                .await
                .status,
        ),
        ("websocket", ws),
    ]
}

#[tokio::test]
async fn forged_and_public_ids_get_404() {
    let server = TestServer::with(lp_quick()).await;
    let lp = LongPoll::connect(server.addr, "/hub").await;
    for forged in [
        "AAAAAAAAAAAAAAAAAAAAAA".to_owned(),
        lp.ids.connection_id.clone(),
        format!("{}x", lp.ids.token),
        lp.ids.token[..21].to_owned(),
        "%00".to_owned(),
        "../../etc/passwd".to_owned(),
        "x".repeat(4000),
    ] {
        for (what, status) in all_requests(&server, "/hub", &forged).await {
            assert_eq!(status, StatusCode::NOT_FOUND, "{what} with id {forged:.30}");
        }
    }
    // The connection whose public id was tried is unharmed.
    let done = lp.invoke("1", "Echo", "[\"mine\"]").await;
    assert_eq!(done["result"], "mine");
    assert_eq!(lp.delete().await.status, StatusCode::ACCEPTED);
    server.wait_no_connections().await;
}

#[tokio::test]
async fn stale_token_after_close() {
    let server = TestServer::with(lp_quick()).await;
    let lp = LongPoll::connect(server.addr, "/hub").await;
    assert_eq!(lp.delete().await.status, StatusCode::ACCEPTED);
    // Just ended: polls learn it with 204; data can no longer be sent.
    let poll = lp.poll().await;
    assert_eq!(poll.status, StatusCode::NO_CONTENT);
    let post = lp.post(invocation("1", "Echo", "[\"late\"]")).await;
    assert_eq!(post.status, StatusCode::NOT_FOUND, "POST after close");
    // Once reaped, the token is unknown everywhere.
    server.wait_no_connections().await;
    for (what, status) in all_requests(&server, "/hub", &lp.ids.token).await {
        assert_eq!(status, StatusCode::NOT_FOUND, "{what} with a stale token");
    }
    server.wait_no_connections().await;
}

#[tokio::test]
async fn missing_id_gets_400_and_bad_methods_405() {
    let server = TestServer::start().await;
    let a = server.addr;
    for method in [Method::GET, Method::POST, Method::DELETE] {
        let res = http(a, method.clone(), "/hub", &[], Bytes::new()).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{method}");
        assert_eq!(res.text(), "Connection ID required");
    }
    let sse = http(
        a,
        Method::GET,
        "/hub",
        &[("accept", "text/event-stream")],
        Bytes::new(),
    )
    .await;
    assert_eq!(sse.status, StatusCode::BAD_REQUEST);
    for method in [Method::PUT, Method::PATCH, Method::OPTIONS] {
        let res = http(a, method.clone(), "/hub?id=x", &[], Bytes::new()).await;
        assert_eq!(res.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
    }
    let res = http(a, Method::GET, "/hub/negotiate", &[], Bytes::new()).await;
    assert_eq!(res.status, StatusCode::METHOD_NOT_ALLOWED);
    for bad in ["abc", "-1", "99999999999999999999", "1.5", ""] {
        let res = http(
            a,
            Method::POST,
            &format!("/hub/negotiate?negotiateVersion={bad}"),
            &[],
            Bytes::new(),
        )
        .await;
        assert!(
            res.status.is_client_error() || res.status == StatusCode::OK,
            "negotiateVersion={bad}: {}",
            res.status
        );
    }
    server.wait_no_connections().await;
}

#[tokio::test]
async fn transport_switching_is_refused_and_the_connection_goes_on() {
    let server = TestServer::with(lp_quick()).await;
    let a = server.addr;
    let lp = LongPoll::connect(a, "/hub").await;
    // SSE and WebSocket on a long-polling token.
    let sse = Sse::open(a, "/hub", lp.ids.clone())
        .await
        .err()
        .expect("refused");
    assert_eq!(sse.status, StatusCode::BAD_REQUEST, "{}", sse.text());
    assert_eq!(
        ws_try(&format!("ws://{a}/hub?id={}", lp.ids.token))
            .await
            .err(),
        Some(StatusCode::BAD_REQUEST)
    );
    let done = lp.invoke("1", "Echo", "[\"still long polling\"]").await;
    assert_eq!(done["result"], "still long polling");

    // Long polling and WebSocket on an SSE token; DELETE on SSE is not allowed.
    let mut sse = Sse::connect(a, "/hub").await;
    let poll = http(a, Method::GET, &sse.url(), &[], Bytes::new()).await;
    assert_eq!(poll.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        ws_try(&format!("ws://{a}/hub?id={}", sse.ids.token))
            .await
            .err(),
        Some(StatusCode::BAD_REQUEST)
    );
    let delete = http(a, Method::DELETE, &sse.url(), &[], Bytes::new()).await;
    assert_eq!(delete.status, StatusCode::BAD_REQUEST);
    // A second event stream for the same connection.
    let second = Sse::open(a, "/hub", sse.ids.clone())
        .await
        .err()
        .expect("refused");
    assert_eq!(second.status, StatusCode::CONFLICT);
    let done = sse.invoke("2", "Echo", "[\"still sse\"]").await;
    assert_eq!(done["result"], "still sse");

    // A negotiated WebSocket: POST is 405, a second socket 409, others 400.
    let ids = negotiate(a, "/hub").await;
    let url = format!("/hub?id={}", ids.token);
    let mut ws = ws_open(&format!("ws://{a}{url}")).await;
    send_text(&mut ws, "{\"protocol\":\"json\",\"version\":1}\u{1e}").await;
    assert_eq!(next_text(&mut ws).await, "{}\u{1e}");
    let post = http(a, Method::POST, &url, &[], "{\"type\":6}\u{1e}").await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        ws_try(&format!("ws://{a}{url}")).await.err(),
        Some(StatusCode::CONFLICT)
    );
    let poll = http(a, Method::GET, &url, &[], Bytes::new()).await;
    assert_eq!(poll.status, StatusCode::BAD_REQUEST);
    let delete = http(a, Method::DELETE, &url, &[], Bytes::new()).await;
    assert_eq!(delete.status, StatusCode::BAD_REQUEST);
    let done = invoke(&mut ws, "3", "Echo", "[\"still websocket\"]").await;
    assert_eq!(done["result"], "still websocket");

    // POST before any transport request.
    let fresh = negotiate(a, "/hub").await;
    let post = http(
        a,
        Method::POST,
        &format!("/hub?id={}", fresh.token),
        &[],
        "x",
    )
    .await;
    assert!(post.status.is_client_error(), "{}", post.status);

    assert_eq!(lp.delete().await.status, StatusCode::ACCEPTED);
    drop(sse);
    let _ = futures_util::SinkExt::close(&mut ws).await;
    let _ = read_until_closed(&mut ws).await;
    server.wait_no_connections().await;
}

#[tokio::test]
async fn websocket_transport_requests_on_a_path_without_it() {
    let server = TestServer::start().await;
    let a = server.addr;
    let ids = negotiate(a, "/lp").await;
    assert_eq!(
        ws_try(&format!("ws://{a}/lp?id={}", ids.token)).await.err(),
        Some(StatusCode::NOT_FOUND)
    );
    assert_eq!(
        ws_try(&format!("ws://{a}/lp")).await.err(),
        Some(StatusCode::NOT_FOUND)
    );
    let lp = LongPoll::connect(a, "/lp").await;
    assert_eq!(lp.invoke("1", "Add", "[1,1]").await["result"], 2);
}

#[tokio::test]
async fn a_newer_poll_ends_the_older_with_204() {
    let server = TestServer::start().await;
    let lp = LongPoll::connect(server.addr, "/hub").await;
    let addr = server.addr;
    let url = lp.url();
    let first = tokio::spawn(async move { http(addr, Method::GET, &url, &[], Bytes::new()).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let url = lp.url();
    let second =
        tokio::spawn(async move { http(addr, Method::GET, &url, &[], Bytes::new()).await });
    let first = step("first poll", first).await.unwrap();
    assert_eq!(first.status, StatusCode::NO_CONTENT);
    // The newer poll gets the next message.
    let post = lp
        .post(invocation("1", "Echo", "[\"to the newer poll\"]"))
        .await;
    assert_eq!(post.status, StatusCode::OK);
    let second = step("second poll", second).await.unwrap();
    assert_eq!(second.status, StatusCode::OK);
    assert!(
        second.text().contains("to the newer poll"),
        "{}",
        second.text()
    );
    assert_eq!(lp.delete().await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_client_that_vanishes_mid_poll_loses_nothing() {
    let server = TestServer::with(lp_quick()).await;
    let lp = LongPoll::connect(server.addr, "/hub").await;
    let done = lp.invoke("0", "GetCallerConnectionId", "[]").await;
    assert_eq!(done["result"], lp.ids.connection_id);
    // A poll whose TCP connection is then dropped (a proxy timeout, a closed laptop lid).
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(format!("GET {} HTTP/1.1\r\nhost: x\r\n\r\n", lp.url()).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(raw);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A message for the client while no live poll is there to take it.
    let mut other = ws_json(&server.ws_url("/hub")).await;
    let id = lp.ids.connection_id.clone();
    let done = invoke(
        &mut other,
        "1",
        "SendToAll",
        &format!("[\"while away {id}\"]"),
    )
    .await;
    assert!(done.get("error").is_none(), "{done}");
    // The client comes back: the message must still be there.
    let mut seen = String::new();
    for _ in 0..4 {
        let res = lp.poll().await;
        assert_eq!(res.status, StatusCode::OK);
        seen.push_str(&res.text());
        if seen.contains("while away") {
            break;
        }
    }
    assert!(
        seen.contains("while away"),
        "the broadcast was handed to the vanished poll and lost: {seen:?}"
    );
    assert_eq!(lp.delete().await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn abandoned_connections_are_reaped() {
    let server = TestServer::with(lp_quick()).await;
    // Negotiated and never used; long polling abandoned after the handshake; an SSE stream
    // dropped; a poll left hanging on a vanished socket.
    let _unused = negotiate(server.addr, "/hub").await;
    let _lp = LongPoll::connect(server.addr, "/hub").await;
    let sse = Sse::connect(server.addr, "/hub").await;
    drop(sse);
    let hanging = LongPoll::connect(server.addr, "/hub").await;
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(format!("GET {} HTTP/1.1\r\nhost: x\r\n\r\n", hanging.url()).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(raw);
    assert!(server.hub.connection_count() >= 4);
    server.wait_no_connections().await;
}

#[tokio::test]
async fn oversized_post_bodies_get_413_before_being_read() {
    let server = TestServer::with(lp_quick()).await;
    let lp = LongPoll::connect(server.addr, "/hub").await;
    // A declared 10 MB body: answered from the headers alone.
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(
        format!(
            "POST {} HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: 10000000\r\n\r\n",
            lp.url()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 1024];
    let n = step("413 response", raw.read(&mut head)).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    drop(raw);

    // A chunked body with no declared length: cut off at the limit (4 MiB by default).
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(
        format!(
            "POST {} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
            lp.url()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "a".repeat(64 * 1024));
    let (mut rd, mut wr) = raw.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        for _ in 0..160 {
            if wr.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
            sent += 64 * 1024;
        }
        sent
    });
    let mut head = vec![0u8; 1024];
    let n = step("413 response", rd.read(&mut head)).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    drop(rd);
    let sent = step("writer", writer).await.unwrap();
    assert!(
        sent < 10 * 1024 * 1024,
        "the whole 10 MB was accepted: {sent}"
    );

    // The connection the bodies were aimed at carries on.
    let done = lp.invoke("1", "Echo", "[\"after 413\"]").await;
    assert_eq!(done["result"], "after 413");
    assert_eq!(lp.delete().await.status, StatusCode::ACCEPTED);
    server.wait_no_connections().await;
}

#[tokio::test]
async fn slow_post_bodies_time_out() {
    let server = TestServer::with(Config {
        server: tidings::server::ServerOptions::default()
            .body_read_timeout(Some(Duration::from_millis(500))),
        ..lp_quick()
    })
    .await;
    let lp = LongPoll::connect(server.addr, "/hub").await;
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(
        format!(
            "POST {} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{{\"type\"",
            lp.url()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let mut head = vec![0u8; 1024];
    let n = step("slow body response", raw.read(&mut head))
        .await
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 400") || n == 0, "{head}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let done = lp.invoke("1", "Echo", "[\"after a stalled upload\"]").await;
    assert_eq!(done["result"], "after a stalled upload");
}

#[tokio::test]
async fn header_floods_get_431() {
    let server = TestServer::start().await;
    let a = server.addr;
    let mut many = String::from("POST /hub/negotiate?negotiateVersion=1 HTTP/1.1\r\nhost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let (status, _) = raw_request(a, many.as_bytes()).await;
    assert_eq!(status, 431, "150 headers");
    let big = format!(
        "POST /hub/negotiate?negotiateVersion=1 HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "b".repeat(1024 * 1024)
    );
    let started = std::time::Instant::now();
    let (status, _) = raw_request(a, big.as_bytes()).await;
    assert_eq!(status, 431, "1 MB header");
    assert!(started.elapsed() < Duration::from_secs(2));
    let (status, _) = raw_request(a, b"GARBAGE\r\n\r\n").await;
    assert_eq!(status, 400);
    let mut canary = Canary::open(&server).await;
    canary.check(&server).await;
    canary.close().await;
}

/// `tidings::server` serves what the binary and the test server are built from: an axum router
/// with hub services nested in it and `middleware::from_fn` layers around it.
#[tokio::test]
async fn serves_an_axum_router_with_middleware() {
    use axum::extract::Request;
    use axum::middleware::{self, Next};
    use axum::response::Response;

    async fn tag(req: Request, next: Next) -> Response {
        let mut res = next.run(req).await;
        res.headers_mut()
            .insert("x-tagged", http::HeaderValue::from_static("yes"));
        res
    }

    let hub = support::test_hub(|_| {});
    let router = axum::Router::new()
        .nest_service("/hub", hub.service(TransportOptions::default()))
        .route("/ping", axum::routing::get(|| async { "pong" }));
    let app = tower_layer::Layer::layer(&middleware::from_fn(tag), router);
    let listener = tidings::server::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(tidings::server::serve(
        listener,
        tidings::server::map_request_body(app, axum::body::Body::new),
        stop.clone().cancelled_owned(),
    ));
    let res = http(addr, Method::GET, "/ping", &[], Bytes::new()).await;
    assert_eq!(res.text(), "pong");
    assert_eq!(res.headers["x-tagged"], "yes");
    let mut ws = ws_json(&format!("ws://{addr}/hub")).await;
    assert_eq!(invoke(&mut ws, "1", "Add", "[20,22]").await["result"], 42);
    let lp = LongPoll::connect(addr, "/hub").await;
    assert_eq!(lp.invoke("2", "Echo", "[\"lp\"]").await["result"], "lp");
    // Graceful shutdown: the listener closes; in-flight HTTP ends; the loop returns.
    stop.cancel();
    step("graceful shutdown", server).await.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn graceful_shutdown_is_bounded_by_its_timeout() {
    let server = TestServer::with(Config {
        server: tidings::server::ServerOptions::default()
            .graceful_shutdown_timeout(Duration::from_millis(500)),
        ..Config::default()
    })
    .await;
    let lp = LongPoll::connect(server.addr, "/hub").await;
    // A poll held by the server (90 s by default) and an idle keep-alive connection.
    let addr = server.addr;
    let url = lp.url();
    let held = tokio::spawn(async move {
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        raw.write_all(format!("GET {url} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = raw.read(&mut buf).await.unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /nowhere HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 404"));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = std::time::Instant::now();
    server.stop().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    // The idle connection was closed at once; the held poll was dropped at the timeout.
    assert_eq!(
        step("idle closed", idle.read(&mut buf)).await.unwrap_or(0),
        0
    );
    let answer = step("held poll", held).await.unwrap();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1"),
        "{answer}"
    );
}
