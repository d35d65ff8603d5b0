//! Property tests of the parsers the fuzz targets cover (`fuzz/`), run by the normal
//! `cargo test` on stable: the same properties, with proptest's generators instead of
//! coverage-guided mutation.

use bytes::BytesMut;
use proptest::prelude::*;
use tidings::fuzzing::{ReconnectOp, check_reconnect, sse_parse_events, sse_write_event};
use tidings::protocol::json::RecordSplitter;
use tidings::protocol::negotiate::{self, NegotiateResponse, TransportType};
use tidings::protocol::{MessageParser, Protocol, handshake};

fn encode_component(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn lone_cr(p: &[u8]) -> bool {
    p.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && p.get(i + 1) != Some(&b'\n'))
}

fn any_op() -> impl Strategy<Value = ReconnectOp> {
    prop_oneof![
        any::<u16>().prop_map(ReconnectOp::Send),
        (0u64..40).prop_map(ReconnectOp::Ack),
        any::<u64>().prop_map(ReconnectOp::Ack),
        (0u64..40).prop_map(ReconnectOp::Sequence),
        any::<u64>().prop_map(ReconnectOp::Sequence),
        Just(ReconnectOp::Receive),
        Just(ReconnectOp::TakeAck),
    ]
}

/// Feeds `data` in pieces cut at `cuts` to an incremental parser, and whole to the stateless
/// one: the messages (and whether an error ended them) must agree.
fn chunked_agrees(protocol: Protocol, data: &[u8], cuts: &[usize]) -> Result<(), TestCaseError> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.push(data.len());
    cuts.sort_unstable();
    let mut parser = MessageParser::new(protocol);
    let mut buf = BytesMut::new();
    let mut chunked = Vec::new();
    let mut chunked_failed = false;
    let mut from = 0;
    'outer: for cut in cuts {
        buf.extend_from_slice(&data[from..cut]);
        from = cut;
        loop {
            match parser.parse(&mut buf, Some(1024)) {
                Ok(Some(m)) => chunked.push(m),
                Ok(None) => break,
                Err(_) => {
                    chunked_failed = true;
                    break 'outer;
                }
            }
        }
    }
    let mut buf = BytesMut::from(data);
    let mut whole = Vec::new();
    let mut whole_failed = false;
    loop {
        match protocol.parse_message(&mut buf, Some(1024)) {
            Ok(Some(m)) => whole.push(m),
            Ok(None) => break,
            Err(_) => {
                whole_failed = true;
                break;
            }
        }
    }
    prop_assert_eq!(chunked, whole);
    prop_assert_eq!(chunked_failed, whole_failed);
    Ok(())
}

/// Bytes that look like JSON hub records often enough to get past the first check.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"{\"type\":1,\"target\":\"T\",\"arguments\":[1]}\x1e".to_vec()),
        Just(b"{\"type\":6}\x1e".to_vec()),
        Just(b"{\"type\":2,\"invocationId\":\"1\",\"item\":[[[]]]}\x1e".to_vec()),
        Just(b"\x1e".to_vec()),
        Just(b"[".to_vec()),
        Just(b"\"".to_vec()),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn json_chunked_agrees_with_whole(data in jsonish(), cuts in prop::collection::vec(any::<usize>(), 0..10)) {
        chunked_agrees(Protocol::Json, &data, &cuts)?;
    }

    #[test]
    fn messagepack_chunked_agrees_with_whole(
        data in prop::collection::vec(any::<u8>(), 0..200),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        chunked_agrees(Protocol::MessagePack, &data, &cuts)?;
    }

    #[test]
    fn handshake_split_anywhere(protocol in "[a-z\"\\\\é]{0,12}", version in any::<u32>(), cut in any::<usize>()) {
        let mut text = Vec::new();
        text.extend_from_slice(b"{\"protocol\":");
        let mut name = Vec::new();
        tidings::protocol::handshake::write_response(Some(&protocol), &mut name);
        // write_response gives {"error":"…"}\x1e; take its escaped string literal.
        let literal = &name[9..name.len() - 2];
        text.extend_from_slice(literal);
        text.extend_from_slice(format!(",\"version\":{version}}}\x1e").as_bytes());
        let cut = cut % (text.len() + 1);
        let mut splitter = RecordSplitter::new();
        let mut buf = BytesMut::from(&text[..cut]);
        let mut got = handshake::parse_request_with(&mut splitter, &mut buf, Some(1024)).unwrap();
        if got.is_none() {
            buf.extend_from_slice(&text[cut..]);
            got = handshake::parse_request_with(&mut splitter, &mut buf, Some(1024)).unwrap();
        }
        let got = got.unwrap();
        prop_assert_eq!(got.protocol, protocol);
        prop_assert_eq!(got.version, version);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn handshake_refusals_round_trip(protocol in ".{0,20}", version in any::<u32>()) {
        for error in [
            handshake::protocol_not_supported(&protocol),
            handshake::version_not_supported(version, &protocol),
        ] {
            let mut out = Vec::new();
            handshake::write_response(Some(&error), &mut out);
            prop_assert!(out.is_ascii());
            let back = handshake::parse_response(&mut BytesMut::from(&out[..])).unwrap();
            prop_assert_eq!(back, Some(Err(error)));
        }
    }

    #[test]
    fn query_params_survive_percent_encoding(key in ".{1,10}", value in ".{0,20}", noise in "[a-z=&]{0,10}") {
        let query = format!("{noise}&{}={}", encode_component(&key), encode_component(&value));
        let got = negotiate::query_param(&query, &key);
        // An earlier parameter of the same name (from the noise) would win, as in .NET.
        let earlier = noise
            .split('&')
            .any(|p| p.split('=').next().is_some_and(|k| !k.is_empty() && k.eq_ignore_ascii_case(&key)));
        if !earlier {
            prop_assert_eq!(got.as_deref(), Some(value.as_str()));
        }
    }

    #[test]
    fn negotiate_versions(version in any::<i64>(), stateful in any::<bool>()) {
        let q = format!("negotiateVersion={version}&useStatefulReconnect={stateful}");
        match negotiate::parse_negotiate_query(Some(&q)) {
            Ok(parsed) => {
                prop_assert!((0..=i64::from(i32::MAX)).contains(&version));
                prop_assert_eq!(parsed.negotiate_version, version.min(1) as u32);
                prop_assert_eq!(parsed.use_stateful_reconnect, stateful);
            }
            Err(_) => prop_assert!(version < 0 || version > i64::from(i32::MAX)),
        }
    }

    #[test]
    fn negotiate_response_round_trip(id in "[A-Za-z0-9_-]{1,22}", token in "[A-Za-z0-9_-]{1,22}", v1 in any::<bool>(), stateful in any::<bool>()) {
        let r = NegotiateResponse {
            negotiate_version: u32::from(v1),
            connection_id: id,
            connection_token: v1.then_some(token),
            available_transports: TransportType::ALL.to_vec(),
            use_stateful_reconnect: stateful,
        };
        prop_assert_eq!(NegotiateResponse::from_json(&r.to_json()).unwrap(), r);
    }

    #[test]
    fn sse_events_read_back_unchanged(payloads in prop::collection::vec(prop::collection::vec(
        prop_oneof![Just(b'\n'), Just(b'\r'), Just(b':'), Just(b' '), any::<u8>()], 0..30), 1..5)) {
        let mut stream = BytesMut::new();
        for p in &payloads {
            sse_write_event(p, &mut stream);
        }
        let events = sse_parse_events(&stream);
        if !payloads.iter().any(|p| lone_cr(p)) {
            prop_assert_eq!(events.len(), payloads.len());
            for (e, p) in events.iter().zip(&payloads) {
                let expected: Vec<u8> = String::from_utf8_lossy(p).replace("\r\n", "\n").into_bytes();
                if std::str::from_utf8(p).is_ok() {
                    prop_assert_eq!(e, &expected);
                }
            }
        }
    }

    #[test]
    fn reconnect_state_machine(ops in prop::collection::vec(any_op(), 0..200)) {
        check_reconnect(&ops, 1000);
    }

    #[test]
    fn reconnect_ops_from_bytes(data in prop::collection::vec(any::<u8>(), 0..300)) {
        check_reconnect(&ReconnectOp::decode(&data), 100_000);
    }
}

/// A lone CR cannot cross Server-Sent Events (EventSource ends a line there, as ASP.NET's
/// formatter also assumes); the hub protocol never produces one because JSON escapes control
/// characters. This pins the behaviour so that a change is noticed.
#[test]
fn a_lone_cr_splits_an_sse_line() {
    let mut stream = BytesMut::new();
    sse_write_event(b"a\rb", &mut stream);
    assert_eq!(&stream[..], b"data: a\rb\r\n\r\n");
    assert_eq!(sse_parse_events(&stream), vec![b"a".to_vec()]);
}
