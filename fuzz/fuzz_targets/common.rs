//! Checks shared by the hub-protocol targets.

#![allow(dead_code)]

use bytes::BytesMut;
use serde::Deserialize;
use tidings::protocol::{ArgsDeserializer, HubMessage, MessageParser, Outcome, Protocol, args};

/// The receive limit: smaller than the server's 32 KiB so that short inputs reach the
/// "message too large" paths too.
pub const LIMIT: usize = 1024;

/// "Any argument" as a hub might model it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum Node {
    Leaf(u8),
    Text(String),
    List(Vec<Node>),
}

/// Feeds `data` to an incremental parser in chunks whose sizes come from `cuts`, and to the
/// stateless parser in one piece; both must agree. Every message must survive a re-encode, and
/// its payloads must bind without panicking.
pub fn check(protocol: Protocol, cuts: u8, data: &[u8]) {
    // Chunk sizes 1..=16 cycling through the bits of `cuts`, or the whole input at once.
    let mut incremental = Vec::new();
    let mut incremental_failed = false;
    let mut parser = MessageParser::new(protocol);
    let mut buf = BytesMut::new();
    let mut at = 0;
    let mut step = 0u32;
    'feed: while at < data.len() {
        let size = if cuts == 0 {
            data.len()
        } else {
            1 + usize::from((cuts.rotate_left(step) & 0x0F) % 16)
        };
        step += 1;
        let end = (at + size).min(data.len());
        buf.extend_from_slice(&data[at..end]);
        at = end;
        loop {
            match parser.parse(&mut buf, Some(LIMIT)) {
                Ok(Some(m)) => incremental.push(m),
                Ok(None) => break,
                Err(_) => {
                    incremental_failed = true;
                    break 'feed;
                }
            }
        }
    }

    let mut whole = Vec::new();
    let mut whole_failed = false;
    let mut buf = BytesMut::from(data);
    loop {
        match protocol.parse_message(&mut buf, Some(LIMIT)) {
            Ok(Some(m)) => whole.push(m),
            Ok(None) => break,
            Err(_) => {
                whole_failed = true;
                break;
            }
        }
    }
    assert_eq!(incremental, whole, "chunked and whole parses disagree");
    assert_eq!(incremental_failed, whole_failed, "only one parse failed");

    for msg in &whole {
        let bytes = protocol.encode_message(msg);
        let mut buf = BytesMut::from(&bytes[..]);
        let again = protocol
            .parse_message(&mut buf, None)
            .expect("re-encoded message parses");
        assert_eq!(again.as_ref(), Some(msg), "round trip");
        assert!(buf.is_empty());
        bind_payloads(protocol, msg);
    }
}

fn bind_payloads(protocol: Protocol, msg: &HubMessage) {
    match msg {
        HubMessage::Invocation(inv) | HubMessage::StreamInvocation(inv) => {
            if let Ok(de) = ArgsDeserializer::new(protocol, &inv.arguments) {
                let n = de.len();
                let _ = serde_json::Value::deserialize(de.clone());
                let _ = rmpv::Value::deserialize(de.clone());
                let _ = <(String, i64)>::deserialize(de.clone());
                let _ = Node::deserialize(de.clone());
                let _ = Vec::<Node>::deserialize(de);
                let split = args::split(protocol, &inv.arguments).expect("split agrees with new");
                assert_eq!(split.len(), n);
                for p in &split {
                    let _ = protocol.decode_value::<Node>(p);
                }
            }
        }
        HubMessage::StreamItem(item) => {
            let _ = protocol.decode_value::<serde_json::Value>(&item.item);
            let _ = protocol.decode_value::<rmpv::Value>(&item.item);
            let _ = protocol.decode_value::<Node>(&item.item);
        }
        HubMessage::Completion(c) => {
            if let Outcome::Result(p) = &c.outcome {
                let _ = protocol.decode_value::<serde_json::Value>(p);
                let _ = protocol.decode_value::<Node>(p);
            }
        }
        _ => {}
    }
}
