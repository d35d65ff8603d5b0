//! The handshake: always one JSON record each way, whatever hub protocol it selects.

use bytes::BytesMut;

use super::{ProtocolError, RECORD_SEPARATOR, json};

/// What the client asks for in its first record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeRequest {
    /// The hub protocol name (`json`, `messagepack`, or anything the client made up).
    pub protocol: String,
    /// The protocol version the client speaks (1, or 2 for stateful reconnect).
    pub version: u32,
}

/// Sent when the handshake did not complete in time or was larger than the receive limit.
pub const HANDSHAKE_CANCELED: &str = "Handshake was canceled.";

/// The .NET error text for a protocol name the server does not know.
pub fn protocol_not_supported(protocol: &str) -> String {
    format!("The protocol '{protocol}' is not supported.")
}

/// The .NET error text for a version newer than the server speaks.
pub fn version_not_supported(version: u32, protocol: &str) -> String {
    format!("The server does not support version {version} of the '{protocol}' protocol.")
}

/// The .NET error text for a binary protocol asked for over a text-only transport (SSE).
pub fn transfer_format_not_supported(protocol: &str) -> String {
    format!(
        "Cannot use the '{protocol}' protocol on the current transport. The transport does not \
         support 'Binary' transfer format."
    )
}

/// Takes the handshake request off the front of `buf`.
///
/// `Ok(None)` until the whole record has arrived (it may be split across frames). Bytes after
/// the separator stay in `buf`: the client may send hub messages in the same frame. A request
/// longer than `max_size` is [`ProtocolError::MessageTooLarge`], even before it is complete.
pub fn parse_request(
    buf: &mut BytesMut,
    max_size: Option<usize>,
) -> Result<Option<HandshakeRequest>, ProtocolError> {
    parse_request_with(&mut json::RecordSplitter::new(), buf, max_size)
}

/// [`parse_request`] for a buffer that grows between calls: `splitter` remembers how much of it
/// was already searched, so a handshake dribbled one byte per frame costs linear time.
pub fn parse_request_with(
    splitter: &mut json::RecordSplitter,
    buf: &mut BytesMut,
    max_size: Option<usize>,
) -> Result<Option<HandshakeRequest>, ProtocolError> {
    let Some(record) = splitter.split(buf, max_size)? else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&record)
        .map_err(|_| ProtocolError::invalid("Handshake request is not valid UTF-8."))?;
    let [protocol, version] = json::object_fields(text, &["protocol", "version"])?;
    let protocol = protocol.ok_or_else(|| missing("protocol"))?;
    let protocol = serde_json::from_str(protocol.get())
        .map_err(|_| ProtocolError::invalid("Expected 'protocol' to be a string."))?;
    let version = version.ok_or_else(|| missing("version"))?;
    let version = serde_json::from_str(version.get())
        .map_err(|_| ProtocolError::invalid("Expected 'version' to be an integer."))?;
    Ok(Some(HandshakeRequest { protocol, version }))
}

fn missing(name: &str) -> ProtocolError {
    ProtocolError::Invalid(format!("Missing required property '{name}'."))
}

/// Appends the handshake response: exactly `{}` + `0x1E` on success, else `{"error":"…"}`.
///
/// The text is written as pure ASCII because the JS client decodes this record as Latin-1.
pub fn write_response(error: Option<&str>, out: &mut Vec<u8>) {
    match error {
        None => out.extend_from_slice(b"{}"),
        Some(error) => {
            out.extend_from_slice(b"{\"error\":");
            json::write_str(out, error, true);
            out.push(b'}');
        }
    }
    out.push(RECORD_SEPARATOR);
}

/// Takes the handshake response off the front of `buf` (the client side, for tests and tools).
///
/// Returns `Ok(Some(Err(text)))` when the server refused the handshake.
pub fn parse_response(buf: &mut BytesMut) -> Result<Option<Result<(), String>>, ProtocolError> {
    let Some(record) = json::split_record(buf, None)? else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&record)
        .map_err(|_| ProtocolError::invalid("Handshake response is not valid UTF-8."))?;
    let [error] = json::object_fields(text, &["error"])?;
    match error.filter(|raw| raw.get() != "null") {
        None => Ok(Some(Ok(()))),
        Some(raw) => serde_json::from_str::<String>(raw.get())
            .map(|error| Some(Err(error)))
            .map_err(|_| ProtocolError::invalid("Expected 'error' to be a string.")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{HubMessage, Protocol};

    fn request(text: &[u8]) -> Result<Option<HandshakeRequest>, ProtocolError> {
        parse_request(&mut BytesMut::from(text), Some(1024))
    }

    #[test]
    fn golden_requests() {
        let bytes = [
            0x7B, 0x22, 0x70, 0x72, 0x6F, 0x74, 0x6F, 0x63, 0x6F, 0x6C, 0x22, 0x3A, 0x22, 0x6D,
            0x65, 0x73, 0x73, 0x61, 0x67, 0x65, 0x70, 0x61, 0x63, 0x6B, 0x22, 0x2C, 0x22, 0x76,
            0x65, 0x72, 0x73, 0x69, 0x6F, 0x6E, 0x22, 0x3A, 0x31, 0x7D, 0x1E,
        ];
        assert_eq!(
            request(&bytes).unwrap(),
            Some(HandshakeRequest {
                protocol: "messagepack".into(),
                version: 1
            })
        );
        assert_eq!(
            request(b"{\"version\":2, \"extra\":[{}], \"protocol\":\"json\"}\x1e").unwrap(),
            Some(HandshakeRequest {
                protocol: "json".into(),
                version: 2
            })
        );
    }

    #[test]
    fn golden_responses() {
        let mut out = Vec::new();
        write_response(None, &mut out);
        assert_eq!(out, [0x7B, 0x7D, 0x1E]);
        out.clear();
        write_response(Some(&protocol_not_supported("x\"é")), &mut out);
        assert_eq!(
            out,
            b"{\"error\":\"The protocol 'x\\\"\\u00e9' is not supported.\"}\x1e"
        );
        assert_eq!(
            parse_response(&mut BytesMut::from(&out[..])).unwrap(),
            Some(Err("The protocol 'x\"é' is not supported.".into()))
        );
        assert_eq!(
            parse_response(&mut BytesMut::from(&b"{}\x1e"[..])).unwrap(),
            Some(Ok(()))
        );
        assert_eq!(
            parse_response(&mut BytesMut::from(&b"{}"[..])).unwrap(),
            None
        );
    }

    #[test]
    fn error_texts() {
        assert_eq!(
            protocol_not_supported("foo"),
            "The protocol 'foo' is not supported."
        );
        assert_eq!(
            version_not_supported(3, "json"),
            "The server does not support version 3 of the 'json' protocol."
        );
        assert_eq!(
            transfer_format_not_supported("messagepack"),
            "Cannot use the 'messagepack' protocol on the current transport. The transport does \
             not support 'Binary' transfer format."
        );
        assert_eq!(HANDSHAKE_CANCELED, "Handshake was canceled.");
    }

    #[test]
    fn split_across_reads_then_messages() {
        let mut wire = b"{\"protocol\":\"messagepack\",\"version\":1}\x1e".to_vec();
        wire.extend_from_slice(&[0x02, 0x91, 0x06, 0x03, 0x92, 0x08, 0x05]);
        let mut buf = BytesMut::new();
        let mut chunks = wire.chunks(5);
        let handshake = loop {
            buf.extend_from_slice(chunks.next().unwrap());
            if let Some(request) = parse_request(&mut buf, Some(1024)).unwrap() {
                break request;
            }
        };
        assert_eq!(handshake.protocol, "messagepack");
        for chunk in chunks {
            buf.extend_from_slice(chunk);
        }
        let protocol = Protocol::from_name(&handshake.protocol).unwrap();
        assert_eq!(
            protocol.parse_message(&mut buf, None).unwrap(),
            Some(HubMessage::Ping)
        );
        assert_eq!(
            protocol.parse_message(&mut buf, None).unwrap(),
            Some(HubMessage::Ack(5))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_requests() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"{\"version\":1}\x1e",
                "Missing required property 'protocol'.",
            ),
            (
                b"{\"protocol\":\"json\"}\x1e",
                "Missing required property 'version'.",
            ),
            (
                b"{\"protocol\":1,\"version\":1}\x1e",
                "Expected 'protocol' to be a string.",
            ),
            (
                b"{\"protocol\":\"json\",\"version\":\"1\"}\x1e",
                "Expected 'version' to be an integer.",
            ),
            (
                b"{\"protocol\":\"json\",\"version\":-1}\x1e",
                "Expected 'version' to be an integer.",
            ),
            (
                b"{\"protocol\":\"json\",\"version\":1.0}\x1e",
                "Expected 'version' to be an integer.",
            ),
            (b"{\"protocol\":\"json\",\x1e", "Invalid JSON"),
            (b"\x1e", "Expected a JSON object."),
            (b"{\"protocol\":\"\xff\"}\x1e", "not valid UTF-8"),
        ];
        for (bytes, expected) in cases {
            match request(bytes) {
                Err(ProtocolError::Invalid(why)) => assert!(why.contains(expected), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        // Too large, with or without a separator.
        let big = format!("{{\"protocol\":\"{}\",\"version\":1}}", "x".repeat(2000));
        assert_eq!(
            request(big.as_bytes()),
            Err(ProtocolError::MessageTooLarge { limit: 1024 })
        );
        assert_eq!(
            request(format!("{big}\x1e").as_bytes()),
            Err(ProtocolError::MessageTooLarge { limit: 1024 })
        );
        assert_eq!(request(b"{\"protocol\"").unwrap(), None);
    }
}
