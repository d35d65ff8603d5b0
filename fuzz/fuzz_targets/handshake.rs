//! The handshake request (split across reads), and the error response round trip.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tidings::protocol::{handshake, json::RecordSplitter};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    // Whole, and in two reads.
    let whole = handshake::parse_request(&mut BytesMut::from(data), Some(32 * 1024));
    let cut = usize::from(cut).min(data.len());
    let mut splitter = RecordSplitter::new();
    let mut buf = BytesMut::from(&data[..cut]);
    let mut split = handshake::parse_request_with(&mut splitter, &mut buf, Some(32 * 1024));
    if let Ok(None) = split {
        buf.extend_from_slice(&data[cut..]);
        split = handshake::parse_request_with(&mut splitter, &mut buf, Some(32 * 1024));
    }
    assert_eq!(whole.is_ok(), split.is_ok());
    if let (Ok(a), Ok(b)) = (&whole, &split) {
        assert_eq!(a, b);
    }
    // Whatever protocol name a client sends, the refusal carrying it is a valid, ASCII-only
    // record that says the same thing.
    if let Ok(Some(request)) = whole {
        for error in [
            handshake::protocol_not_supported(&request.protocol),
            handshake::version_not_supported(request.version, &request.protocol),
        ] {
            let mut out = Vec::new();
            handshake::write_response(Some(&error), &mut out);
            assert!(out.is_ascii());
            assert_eq!(out.iter().filter(|&&b| b == 0x1E).count(), 1);
            let mut buf = BytesMut::from(&out[..]);
            let back = handshake::parse_response(&mut buf).expect("own response parses");
            assert_eq!(back, Some(Err(error)));
        }
    }
    let _ = handshake::parse_response(&mut BytesMut::from(data));
});
