//! Negotiate: the query string (version, stateful reconnect, any parameter), and the
//! response parser the tools use.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::protocol::negotiate::{self, NegotiateResponse};

fn encode(s: &str) -> String {
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

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(q) = negotiate::parse_negotiate_query(Some(&text)) {
        assert!(q.negotiate_version <= 1);
    }
    let _ = negotiate::query_param(&text, "id");
    let _ = negotiate::query_param(&text, "access_token");
    // Any key and value survive percent-encoding.
    if let Some((key, value)) = text.split_once('\u{0}')
        && !key.is_empty()
    {
        let query = format!("{}={}", encode(key), encode(value));
        let got = negotiate::query_param(&query, key);
        assert_eq!(got.as_deref(), Some(value));
    }
    if let Ok(r) = NegotiateResponse::from_json(data) {
        let again = NegotiateResponse::from_json(&r.to_json()).expect("own response parses");
        assert_eq!(again.connection_id, r.connection_id);
        assert_eq!(again.available_transports, r.available_transports);
    }
});
