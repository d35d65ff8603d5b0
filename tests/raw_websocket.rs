//! Raw WebSocket traffic that a stock client never sends (issue 2 item 7). Every case gets a
//! clear protocol error or a clean close, the server stays up, and a canary connection opened
//! before the hostile traffic (plus a brand-new one after it) keeps working.

mod support;

use std::time::Duration;

use bytes::BytesMut;
use support::*;
use tidings::HubOptions;
use tidings::protocol::{HubMessage, Protocol};

const CLOSED_WITH_ERROR: &str = "Connection closed with an error.";
const LIMIT: usize = 32 * 1024;

/// Expects the server's error Close record and then the WebSocket close frame with `code`.
async fn expect_error_close(ws: &mut Ws, code: u16) -> String {
    let (records, frame) = read_until_closed(ws).await;
    let close = records
        .iter()
        .find(|r| r["type"] == 7)
        .unwrap_or_else(|| panic!("no Close message; got {records:?}"));
    let error = close["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.starts_with(CLOSED_WITH_ERROR), "close error: {error}");
    let (got, _) = frame.expect("a close frame, not a dropped socket");
    assert_eq!(got, code, "websocket close code");
    error
}

/// Expects a handshake error record, then the close.
async fn expect_handshake_error(ws: &mut Ws) -> String {
    let text = next_text(ws).await;
    assert!(text.ends_with(RS), "record: {text:?}");
    let v: serde_json::Value = serde_json::from_str(text.trim_end_matches(RS)).unwrap();
    let error = v["error"].as_str().expect("an error property").to_owned();
    match recv(ws).await {
        Received::Closed(_) => {}
        other => panic!("expected the close after a failed handshake, got {other:?}"),
    }
    error
}

#[tokio::test]
async fn garbage_handshake_is_refused() {
    let server = TestServer::start().await;
    let mut canary = Canary::open(&server).await;
    for garbage in [
        "hello\u{1e}",
        "{\"protocol\":\u{1e}",
        "[1,2,3]\u{1e}",
        "{\"protocol\":\"json\"}\u{1e}",
        "{\"protocol\":\"json\",\"version\":\"one\"}\u{1e}",
        "\u{1e}",
    ] {
        let mut ws = ws_open(&server.ws_url("/hub")).await;
        send_text(&mut ws, garbage).await;
        let error = expect_handshake_error(&mut ws).await;
        assert_eq!(error, "Handshake was canceled.", "for {garbage:?}");
    }
    canary.check(&server).await;
    canary.close().await;
}

#[tokio::test]
async fn unknown_protocol_and_version_are_refused() {
    let server = TestServer::start().await;
    let mut canary = Canary::open(&server).await;
    let mut ws = ws_open(&server.ws_url("/hub")).await;
    send_text(&mut ws, "{\"protocol\":\"xml\",\"version\":1}\u{1e}").await;
    assert_eq!(
        expect_handshake_error(&mut ws).await,
        "The protocol 'xml' is not supported."
    );
    let mut ws = ws_open(&server.ws_url("/hub")).await;
    send_text(&mut ws, "{\"protocol\":\"json\",\"version\":99}\u{1e}").await;
    assert_eq!(
        expect_handshake_error(&mut ws).await,
        "The server does not support version 99 of the 'json' protocol."
    );
    canary.check(&server).await;
    canary.close().await;
}

#[tokio::test]
async fn handshake_split_across_frames_and_batched_with_messages() {
    let server = TestServer::start().await;
    let mut ws = ws_open(&server.ws_url("/hub")).await;
    for part in ["{\"proto", "col\":\"json\",", "\"version\":1", "}"] {
        send_text(&mut ws, part).await;
    }
    // The separator arrives together with the first invocation.
    send_text(
        &mut ws,
        &format!("{RS}{}", invocation("1", "Echo", "[\"split\"]")),
    )
    .await;
    // The handshake answer comes first; the server may batch the Completion into the same
    // frame (the stock client reads messages after the separator of the handshake answer).
    let first = next_text(&mut ws).await;
    let handshake = format!("{{}}{RS}");
    assert!(first.starts_with(&handshake), "{first:?}");
    let batched = first[handshake.len()..]
        .split(RS)
        .filter(|r| !r.is_empty())
        .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap())
        .find(|v| v["type"] == 3);
    let done = match batched {
        Some(v) => v,
        None => next_record(&mut ws, |v| v["type"] == 3).await,
    };
    assert_eq!(done["result"], "split");
    // One hub message split across three frames.
    let record = invocation("2", "Echo", "[\"in pieces\"]");
    let (a, rest) = record.split_at(10);
    let (b, c) = rest.split_at(15);
    for part in [a, b, c] {
        send_text(&mut ws, part).await;
    }
    let done = next_record(&mut ws, |v| v["type"] == 3).await;
    assert_eq!(done["result"], "in pieces");
}

#[tokio::test]
async fn handshake_timeout_closes_a_silent_socket() {
    let server = TestServer::with(Config {
        hub: HubOptions {
            handshake_timeout: Duration::from_millis(300),
            ..HubOptions::default()
        },
        ..Config::default()
    })
    .await;
    let mut canary = Canary::open(&server).await;
    let mut ws = ws_open(&server.ws_url("/hub")).await;
    let started = std::time::Instant::now();
    assert_eq!(
        expect_handshake_error(&mut ws).await,
        "Handshake was canceled."
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    canary.check(&server).await;
    canary.close().await;
}

#[tokio::test]
async fn truncated_and_malformed_json_close_with_an_error() {
    let server = TestServer::start().await;
    let mut canary = Canary::open(&server).await;
    for bad in [
        "{\"type\":1,\"target\":\"Echo\",\"arguments\":[\"x\"\u{1e}",
        "{\"type\":1,\"target\":\"Echo\"}\u{1e}",
        "{\"type\":42}\u{1e}",
        "{\"type\":\"1\"}\u{1e}",
        "not json at all\u{1e}",
        "{\"type\":1,\"target\":\"Echo\",\"arguments\":{}}\u{1e}",
        "{\"type\":3,\"invocationId\":\"1\",\"result\":1,\"error\":\"e\"}\u{1e}",
    ] {
        let mut ws = ws_json(&server.ws_url("/hub")).await;
        send_text(&mut ws, bad).await;
        expect_error_close(&mut ws, 1000).await;
    }
    // Bytes that are not UTF-8, as a binary frame on a JSON connection.
    let mut ws = ws_json(&server.ws_url("/hub")).await;
    send_binary(&mut ws, b"{\"type\":6,\"x\":\"\xff\"}\x1e".to_vec()).await;
    expect_error_close(&mut ws, 1000).await;
    canary.check(&server).await;
    canary.close().await;
}

/// Handshakes a MessagePack connection (the handshake itself is JSON text).
async fn ws_messagepack(server: &TestServer) -> Ws {
    let mut ws = ws_open(&server.ws_url("/hub")).await;
    send_text(
        &mut ws,
        "{\"protocol\":\"messagepack\",\"version\":1}\u{1e}",
    )
    .await;
    match recv(&mut ws).await {
        Received::Binary(b) => assert_eq!(&b[..], b"{}\x1e"),
        Received::Text(t) => assert_eq!(t, "{}\u{1e}"),
        other => panic!("handshake: {other:?}"),
    }
    ws
}

/// Reads MessagePack frames until the close; returns the Close message's error and the code.
async fn expect_messagepack_close(ws: &mut Ws) -> (String, Option<u16>) {
    let mut error = None;
    loop {
        match recv(ws).await {
            Received::Binary(b) => {
                let mut buf = BytesMut::from(&b[..]);
                while let Ok(Some(msg)) = Protocol::MessagePack.parse_message(&mut buf, None) {
                    if let HubMessage::Close(c) = msg {
                        error = c.error;
                    }
                }
            }
            Received::Text(t) => panic!("text frame on a MessagePack connection: {t:?}"),
            Received::Closed(frame) => {
                let error = error.expect("a Close message before the close frame");
                assert!(error.starts_with(CLOSED_WITH_ERROR), "{error}");
                return (error, frame.map(|f| f.0));
            }
        }
    }
}

#[tokio::test]
async fn bad_messagepack_framing_closes_with_an_error() {
    let server = TestServer::start().await;
    let mut canary = Canary::open(&server).await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        // Six continuation bytes: longer than any VarInt may be.
        (
            "6-byte varint",
            vec![0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            1000,
        ),
        // 2^31: over the 2 GB cap.
        ("2 GB varint", vec![0x80, 0x80, 0x80, 0x80, 0x08], 1000),
        // A valid prefix announcing more than the limit: refused before the body arrives.
        ("40 000-byte prefix", vec![0xC0, 0xB8, 0x02, 0x96], 1009),
        // A body that is not a MessagePack array.
        ("not an array", vec![0x01, 0xC0], 1000),
        // An array32 header that claims 4 billion items.
        (
            "lying array32",
            vec![0x05, 0xDD, 0xFF, 0xFF, 0xFF, 0xFF],
            1000,
        ),
        // Invocation whose arguments are a map.
        (
            "arguments not an array",
            vec![0x08, 0x95, 0x01, 0x80, 0xC0, 0xA1, b'E', 0x80, 0x90],
            1000,
        ),
    ];
    for (name, bytes, code) in cases {
        let mut ws = ws_messagepack(&server).await;
        send_binary(&mut ws, bytes).await;
        let (_, got) = expect_messagepack_close(&mut ws).await;
        assert_eq!(got, Some(code), "{name}");
    }
    // Deep nesting in a MessagePack argument: refused, no stack overflow.
    let mut body = vec![0x95, 0x01, 0x80, 0xC0, 0xA4];
    body.extend_from_slice(b"Echo");
    body.extend(std::iter::repeat_n(0x91, 10_000));
    body.push(0x00);
    let mut frame = Vec::new();
    tidings::protocol::messagepack::write_varint(body.len(), &mut frame);
    frame.extend_from_slice(&body);
    let mut ws = ws_messagepack(&server).await;
    send_binary(&mut ws, frame).await;
    expect_messagepack_close(&mut ws).await;
    canary.check(&server).await;
    canary.close().await;
}

#[tokio::test]
async fn deep_json_nesting_is_refused() {
    let server = TestServer::start().await;
    let mut canary = Canary::open(&server).await;
    for depth in [65, 10_000] {
        let args = format!("[{}1{}]", "[".repeat(depth), "]".repeat(depth));
        let mut ws = ws_json(&server.ws_url("/hub")).await;
        send_text(&mut ws, &invocation("1", "Echo", &args)).await;
        expect_error_close(&mut ws, 1000).await;
    }
    // 64 levels is fine: a binding error for Echo(string), and the connection stays.
    let args = format!("[{}1{}]", "[".repeat(63), "]".repeat(63));
    let mut ws = ws_json(&server.ws_url("/hub")).await;
    let done = invoke(&mut ws, "1", "Echo", &args).await;
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .starts_with("Failed to invoke 'Echo'")
    );
    canary.check(&server).await;
    canary.close().await;
}

#[tokio::test]
async fn oversized_messages_close_with_1009() {
    let server = TestServer::start().await;
    let mut canary = Canary::open(&server).await;

    // One frame holding one 32 769-byte record.
    let filler = "x".repeat(LIMIT + 1 - invocation("1", "Echo", "[\"\"]").len() + 1);
    let record = invocation("1", "Echo", &format!("[\"{filler}\"]"));
    assert_eq!(record.len() - 1, LIMIT + 1);
    let mut ws = ws_json(&server.ws_url("/hub")).await;
    send_text(&mut ws, &record).await;
    let error = expect_error_close(&mut ws, 1009).await;
    assert_eq!(
        error, CLOSED_WITH_ERROR,
        "no detail without detailed errors"
    );

    // Exactly at the limit is accepted.
    let filler = "x".repeat(LIMIT - invocation("1", "Echo", "[\"\"]").len() + 1);
    let record = invocation("1", "Echo", &format!("[\"{filler}\"]"));
    assert_eq!(record.len() - 1, LIMIT);
    let mut ws = ws_json(&server.ws_url("/hub")).await;
    send_text(&mut ws, &record).await;
    let done = next_record(&mut ws, |v| v["type"] == 3).await;
    assert_eq!(done["result"].as_str().unwrap().len(), filler.len());

    // Many small frames that never send the separator.
    let mut ws = ws_json(&server.ws_url("/hub")).await;
    send_text(&mut ws, "{\"type\":1,\"target\":\"Echo\",\"arguments\":[\"").await;
    let chunk = "y".repeat(1024);
    for _ in 0..64 {
        let msg = tokio_tungstenite::tungstenite::Message::text(chunk.clone());
        if futures_util::SinkExt::send(&mut ws, msg).await.is_err() {
            break;
        }
    }
    expect_error_close(&mut ws, 1009).await;

    // One WebSocket message larger than the transport's frame limit (1 MiB by default).
    let mut ws = ws_json(&server.ws_url("/hub")).await;
    let huge = "z".repeat(2 * 1024 * 1024);
    let msg = tokio_tungstenite::tungstenite::Message::text(huge);
    let _ = futures_util::SinkExt::send(&mut ws, msg).await;
    let (_, frame) = read_until_closed(&mut ws).await;
    assert_eq!(frame.map(|f| f.0), Some(1009));

    canary.check(&server).await;
    canary.close().await;
}

#[tokio::test]
async fn wrong_argument_types_and_counts_keep_the_connection() {
    let server = TestServer::start().await;
    let mut ws = ws_json(&server.ws_url("/hub")).await;
    let cases = [
        ("1", "Add", "[\"a\",\"b\"]"),
        ("2", "Add", "[1]"),
        ("3", "Add", "[1,2,3]"),
        ("4", "Echo", "[{\"nested\":[1,2]}]"),
        ("5", "Echo", "[null]"),
        ("6", "Add", "[1.5,2]"),
        ("7", "Add", "[99999999999999999999999,1]"),
    ];
    for (id, target, args) in cases {
        let done = invoke(&mut ws, id, target, args).await;
        let error = done["error"].as_str().unwrap_or_else(|| panic!("{done}"));
        assert!(
            error.starts_with(&format!(
                "Failed to invoke '{target}' due to an error on the server."
            )),
            "{target}{args}: {error}"
        );
    }
    let done = invoke(&mut ws, "8", "NoSuchMethod", "[]").await;
    assert_eq!(done["error"], "Unknown hub method 'NoSuchMethod'");
    let done = invoke(&mut ws, "9", "Add", "[40,2]").await;
    assert_eq!(done["result"], 42);
}

#[tokio::test]
async fn unexpected_but_well_formed_messages_are_harmless() {
    let server = TestServer::start().await;
    let mut canary = Canary::open(&server).await;
    let mut ws = ws_json(&server.ws_url("/hub")).await;
    for record in [
        // Completion, StreamItem and CancelInvocation for ids that do not exist.
        "{\"type\":3,\"invocationId\":\"nope\",\"result\":1}\u{1e}",
        "{\"type\":2,\"invocationId\":\"nope\",\"item\":1}\u{1e}",
        "{\"type\":5,\"invocationId\":\"nope\"}\u{1e}",
        // Ack and Sequence on a connection without stateful reconnect.
        "{\"type\":8,\"sequenceId\":18446744073709551615}\u{1e}",
        "{\"type\":9,\"sequenceId\":0}\u{1e}",
        // A streaming invocation of a non-streaming method and vice versa.
        "{\"type\":4,\"invocationId\":\"s\",\"target\":\"Echo\",\"arguments\":[\"x\"]}\u{1e}",
        // Unknown properties, huge headers map of strings.
        "{\"type\":6,\"future\":{\"a\":[1,2,{}]}}\u{1e}",
    ] {
        send_text(&mut ws, record).await;
    }
    let done = next_record(&mut ws, |v| v["type"] == 3 && v["invocationId"] == "s").await;
    assert!(done["error"].as_str().unwrap().contains("non-streaming"));
    let done = invoke(&mut ws, "after", "Echo", "[\"ok\"]").await;
    assert_eq!(done["result"], "ok");
    canary.check(&server).await;
    canary.close().await;
}

#[tokio::test]
async fn invocation_ids_and_headers_at_the_size_limit_are_bounded() {
    // A record just under the limit, made mostly of an invocation id or header values:
    // answered (or refused) without the server holding more than the one record.
    let server = TestServer::start().await;
    let mut ws = ws_json(&server.ws_url("/hub")).await;
    let id = "i".repeat(30_000);
    let done = invoke(&mut ws, &id, "Echo", "[\"long id\"]").await;
    assert_eq!(done["result"], "long id");
    let headers: Vec<String> = (0..1000).map(|i| format!("\"h{i}\":\"v\"")).collect();
    let record = format!(
        "{{\"type\":1,\"invocationId\":\"h\",\"target\":\"Echo\",\"arguments\":[\"hdr\"],\"headers\":{{{}}}}}{RS}",
        headers.join(",")
    );
    assert!(record.len() < LIMIT);
    send_text(&mut ws, &record).await;
    let done = next_record(&mut ws, |v| v["type"] == 3 && v["invocationId"] == "h").await;
    assert_eq!(done["result"], "hdr");
}

#[tokio::test]
async fn hostile_connections_leave_nothing_behind() {
    let server = TestServer::with(Config {
        transport: quick_reaping(),
        hub: HubOptions {
            handshake_timeout: Duration::from_millis(500),
            ..HubOptions::default()
        },
        ..Config::default()
    })
    .await;
    // A mix of every failure above, all at once.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = server.ws_url("/hub");
        tasks.push(tokio::spawn(async move {
            let mut ws = ws_open(&url).await;
            match i % 5 {
                0 => send_text(&mut ws, "garbage\u{1e}").await,
                1 => {} // never handshakes
                2 => {
                    send_text(
                        &mut ws,
                        "{\"protocol\":\"json\",\"version\":1}\u{1e}{\"type\":1,",
                    )
                    .await;
                    send_text(&mut ws, "\"target\":3}\u{1e}").await;
                }
                3 => {
                    send_text(&mut ws, "{\"protocol\":\"json\",\"version\":1}\u{1e}").await;
                    send_text(&mut ws, &"[".repeat(40_000)).await;
                }
                _ => {
                    // Handshake, then vanish without a close frame.
                    send_text(&mut ws, "{\"protocol\":\"json\",\"version\":1}\u{1e}").await;
                    let _ = recv(&mut ws).await;
                    drop(ws);
                    return;
                }
            }
            let _ = read_until_closed(&mut ws).await;
        }));
    }
    for t in tasks {
        step("hostile client", t).await.unwrap();
    }
    server.wait_no_connections().await;
    let mut canary = Canary::open(&server).await;
    canary.check(&server).await;
    canary.close().await;
    server.wait_no_connections().await;
    server.stop().await;
}
