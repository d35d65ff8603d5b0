//! The JSON hub protocol: one UTF-8 JSON object per message, each followed by `0x1E`.
//!
//! Arguments, results and stream items are never decoded here: they are kept as the exact JSON
//! text the peer sent (a [`RawValue`] slice of the record), so a handler binds them straight into
//! its own type and a broadcast copies them verbatim.

use std::fmt;

use bytes::{Bytes, BytesMut};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{
    CancelInvocation, Close, Completion, Headers, HubMessage, Invocation, MAX_DEPTH, Outcome,
    Payload, ProtocolError, RECORD_SEPARATOR, StreamItem,
};

/// Appends `msg` as one JSON record (object + `0x1E`) to `out`.
///
/// Properties are written in the order the .NET server uses, so golden bytes match it. Payloads
/// are copied verbatim: they must already be valid JSON (the arguments an array).
pub fn write_message(msg: &HubMessage, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"type\":");
    write_u64(out, u64::from(msg.message_type()));
    match msg {
        HubMessage::Invocation(inv) | HubMessage::StreamInvocation(inv) => {
            write_headers(out, &inv.headers);
            // .NET omits an empty id too: both mean "non-blocking".
            if let Some(id) = inv.invocation_id.as_deref().filter(|id| !id.is_empty()) {
                out.extend_from_slice(b",\"invocationId\":");
                write_str(out, id, false);
            }
            out.extend_from_slice(b",\"target\":");
            write_str(out, &inv.target, false);
            out.extend_from_slice(b",\"arguments\":");
            out.extend_from_slice(&inv.arguments.0);
            if !inv.stream_ids.is_empty() {
                out.extend_from_slice(b",\"streamIds\":[");
                for (i, id) in inv.stream_ids.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_str(out, id, false);
                }
                out.push(b']');
            }
        }
        HubMessage::StreamItem(item) => {
            write_headers(out, &item.headers);
            write_invocation_id(out, &item.invocation_id);
            out.extend_from_slice(b",\"item\":");
            out.extend_from_slice(&item.item.0);
        }
        HubMessage::Completion(completion) => {
            write_headers(out, &completion.headers);
            write_invocation_id(out, &completion.invocation_id);
            match &completion.outcome {
                Outcome::Void => {}
                Outcome::Result(result) => {
                    out.extend_from_slice(b",\"result\":");
                    out.extend_from_slice(&result.0);
                }
                Outcome::Error(error) => {
                    out.extend_from_slice(b",\"error\":");
                    write_str(out, error, false);
                }
            }
        }
        HubMessage::CancelInvocation(cancel) => {
            write_headers(out, &cancel.headers);
            write_invocation_id(out, &cancel.invocation_id);
        }
        HubMessage::Ping => {}
        HubMessage::Close(close) => {
            if let Some(error) = &close.error {
                out.extend_from_slice(b",\"error\":");
                write_str(out, error, false);
            }
            if close.allow_reconnect {
                out.extend_from_slice(b",\"allowReconnect\":true");
            }
        }
        HubMessage::Ack(id) | HubMessage::Sequence(id) => {
            out.extend_from_slice(b",\"sequenceId\":");
            write_u64(out, *id);
        }
    }
    out.extend_from_slice(b"}\x1e");
}

/// Takes one whole JSON record off the front of `buf` and parses it.
///
/// `Ok(None)` means no complete record is buffered yet. A record (or, before its separator
/// arrives, the buffered bytes) longer than `max_size` is [`ProtocolError::MessageTooLarge`], so a
/// peer cannot grow the buffer without bound by never sending `0x1E`.
///
/// This stateless form searches `buf` from its start on every call; a reader that appends to
/// one buffer between calls should keep a [`RecordSplitter`] (or a
/// [`MessageParser`](super::MessageParser)) instead, so that a peer dribbling a record one byte
/// per frame costs linear rather than quadratic time.
pub fn parse_message(
    buf: &mut BytesMut,
    max_size: Option<usize>,
) -> Result<Option<HubMessage>, ProtocolError> {
    parse_message_with(&mut RecordSplitter::new(), buf, max_size)
}

/// [`parse_message`] with the splitter state of the buffer's reader.
pub fn parse_message_with(
    splitter: &mut RecordSplitter,
    buf: &mut BytesMut,
    max_size: Option<usize>,
) -> Result<Option<HubMessage>, ProtocolError> {
    match splitter.split(buf, max_size)? {
        Some(record) => parse_record(&record).map(Some),
        None => Ok(None),
    }
}

/// Splits one record (without its separator) off `buf`, consuming the separator too.
pub(crate) fn split_record(
    buf: &mut BytesMut,
    max_size: Option<usize>,
) -> Result<Option<Bytes>, ProtocolError> {
    RecordSplitter::new().split(buf, max_size)
}

/// Finds record boundaries in a buffer that only grows at its end between calls, remembering
/// how far it has already searched.
///
/// Each byte is examined once however the record is cut into frames: a peer that sends a
/// 32 KiB record one byte per WebSocket frame costs 32 Ki byte comparisons, not 512 Mi. The
/// contract: between two calls the buffer may only be appended to; anything else (clearing
/// it, taking bytes off its front) needs [`RecordSplitter::reset`].
#[derive(Debug, Default, Clone)]
pub struct RecordSplitter {
    /// Bytes at the front of the buffer known to hold no separator.
    scanned: usize,
}

impl RecordSplitter {
    /// A splitter for an empty (or not yet searched) buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets what was searched (the buffer was changed other than by appending).
    pub fn reset(&mut self) {
        self.scanned = 0;
    }

    /// Bytes at the front of the buffer already known to hold no separator.
    pub fn scanned(&self) -> usize {
        self.scanned
    }

    /// Splits one record (without its separator) off `buf`, consuming the separator too.
    ///
    /// `Ok(None)`: no separator yet. [`ProtocolError::MessageTooLarge`] as soon as the record
    /// is known to be longer than `max_size`, whether or not its separator has arrived.
    pub fn split(
        &mut self,
        buf: &mut BytesMut,
        max_size: Option<usize>,
    ) -> Result<Option<Bytes>, ProtocolError> {
        let from = self.scanned.min(buf.len());
        match memchr::memchr(RECORD_SEPARATOR, &buf[from..]) {
            None => {
                self.scanned = buf.len();
                match max_size {
                    Some(limit) if buf.len() > limit => {
                        Err(ProtocolError::MessageTooLarge { limit })
                    }
                    _ => Ok(None),
                }
            }
            Some(at) => {
                let end = from + at;
                self.scanned = 0;
                if let Some(limit) = max_size
                    && end > limit
                {
                    return Err(ProtocolError::MessageTooLarge { limit });
                }
                let mut record = buf.split_to(end + 1);
                record.truncate(end);
                Ok(Some(record.freeze()))
            }
        }
    }
}

/// The properties the server understands; anything else is skipped.
const PROPERTIES: [&str; 11] = [
    "type",
    "headers",
    "invocationId",
    "target",
    "arguments",
    "streamIds",
    "item",
    "result",
    "error",
    "allowReconnect",
    "sequenceId",
];

fn parse_record(record: &Bytes) -> Result<HubMessage, ProtocolError> {
    if record.is_empty() {
        return Err(ProtocolError::invalid("Empty JSON message."));
    }
    let text = std::str::from_utf8(record)
        .map_err(|_| ProtocolError::invalid("Message is not valid UTF-8."))?;
    let [
        ty,
        headers,
        invocation_id,
        target,
        arguments,
        stream_ids,
        item,
        result,
        error,
        allow_reconnect,
        sequence_id,
    ] = object_fields(text, &PROPERTIES)?;

    let ty = ty.ok_or_else(|| missing("type"))?;
    let ty: i64 = serde_json::from_str(ty.get()).map_err(|_| wrong_type("type", "an integer"))?;
    // Bound a payload to the record it came from, without copying.
    let payload = |raw: &RawValue| -> Result<Payload, ProtocolError> {
        check_depth(raw.get().as_bytes(), 0)?;
        Ok(Payload(record.slice_ref(raw.get().as_bytes())))
    };

    let message = match ty {
        1 | 4 => {
            let invocation_id =
                optional_string(invocation_id, "invocationId")?.filter(|id| !id.is_empty());
            if ty == 4 && invocation_id.is_none() {
                return Err(missing("invocationId"));
            }
            let target = string(target.ok_or_else(|| missing("target"))?, "target")?;
            let arguments = arguments.ok_or_else(|| missing("arguments"))?;
            if !arguments.get().starts_with('[') {
                return Err(wrong_type("arguments", "an array"));
            }
            let stream_ids = match non_null(stream_ids) {
                Some(raw) => serde_json::from_str::<Vec<String>>(raw.get())
                    .map_err(|_| wrong_type("streamIds", "an array of strings"))?,
                None => Vec::new(),
            };
            let invocation = Invocation {
                headers: parse_headers(headers)?,
                invocation_id,
                target,
                arguments: payload(arguments)?,
                stream_ids,
            };
            if ty == 1 {
                HubMessage::Invocation(invocation)
            } else {
                HubMessage::StreamInvocation(invocation)
            }
        }
        2 => HubMessage::StreamItem(StreamItem {
            headers: parse_headers(headers)?,
            invocation_id: required_id(invocation_id)?,
            item: payload(item.ok_or_else(|| missing("item"))?)?,
        }),
        3 => {
            let error = optional_string(error, "error")?;
            let outcome = match (error, result) {
                (Some(_), Some(_)) => {
                    return Err(ProtocolError::invalid(
                        "The 'error' and 'result' properties are mutually exclusive.",
                    ));
                }
                (Some(error), None) => Outcome::Error(error),
                (None, Some(result)) => Outcome::Result(payload(result)?),
                (None, None) => Outcome::Void,
            };
            HubMessage::Completion(Completion {
                headers: parse_headers(headers)?,
                invocation_id: required_id(invocation_id)?,
                outcome,
            })
        }
        5 => HubMessage::CancelInvocation(CancelInvocation {
            headers: parse_headers(headers)?,
            invocation_id: required_id(invocation_id)?,
        }),
        6 => HubMessage::Ping,
        7 => HubMessage::Close(Close {
            error: optional_string(error, "error")?,
            allow_reconnect: match non_null(allow_reconnect) {
                Some(raw) => serde_json::from_str(raw.get())
                    .map_err(|_| wrong_type("allowReconnect", "a boolean"))?,
                None => false,
            },
        }),
        8 | 9 => {
            let raw = sequence_id.ok_or_else(|| missing("sequenceId"))?;
            let id: u64 = serde_json::from_str(raw.get())
                .map_err(|_| wrong_type("sequenceId", "a non-negative integer"))?;
            if ty == 8 {
                HubMessage::Ack(id)
            } else {
                HubMessage::Sequence(id)
            }
        }
        other => {
            return Err(ProtocolError::Invalid(format!(
                "Unknown message type {other}"
            )));
        }
    };
    Ok(message)
}

fn missing(name: &str) -> ProtocolError {
    ProtocolError::Invalid(format!("Missing required property '{name}'."))
}

fn wrong_type(name: &str, expected: &str) -> ProtocolError {
    ProtocolError::Invalid(format!("Expected '{name}' to be {expected}."))
}

/// `null` means "absent" for the optional envelope properties (but not for `result`/`item`).
fn non_null(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|raw| raw.get() != "null")
}

fn string(raw: &RawValue, name: &str) -> Result<String, ProtocolError> {
    serde_json::from_str(raw.get()).map_err(|_| wrong_type(name, "a string"))
}

fn optional_string(raw: Option<&RawValue>, name: &str) -> Result<Option<String>, ProtocolError> {
    non_null(raw).map(|raw| string(raw, name)).transpose()
}

fn required_id(raw: Option<&RawValue>) -> Result<String, ProtocolError> {
    optional_string(raw, "invocationId")?.ok_or_else(|| missing("invocationId"))
}

fn parse_headers(raw: Option<&RawValue>) -> Result<Headers, ProtocolError> {
    match non_null(raw) {
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|_| wrong_type("headers", "an object of strings")),
        None => Ok(Headers::new()),
    }
}

/// Rejects a JSON value nested deeper than [`MAX_DEPTH`] below `depth`.
///
/// A byte scan rather than a parse: it runs on already-validated JSON, needs no stack and
/// stops a payload that serde_json's own limit (128) would let through from reaching a handler's
/// recursive `Deserialize`.
pub(crate) fn check_depth(json: &[u8], mut depth: usize) -> Result<(), ProtocolError> {
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(too_deep());
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn too_deep() -> ProtocolError {
    ProtocolError::Invalid(format!(
        "The message is nested deeper than the maximum depth of {MAX_DEPTH}."
    ))
}

/// Reads the top-level object of `text`, returning the raw value of each property in `names`.
///
/// Unknown properties are skipped (by serde_json's iterative, depth-limited skipper), duplicates
/// are refused. Error texts never quote the input.
pub(crate) fn object_fields<'a, const N: usize>(
    text: &'a str,
    names: &[&str; N],
) -> Result<[Option<&'a RawValue>; N], ProtocolError> {
    if !text.trim_start().starts_with('{') {
        return Err(ProtocolError::invalid("Expected a JSON object."));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let fields = ObjectSeed { names }
        .deserialize(&mut de)
        .map_err(|e| json_error(&e))?;
    de.end().map_err(|e| json_error(&e))?;
    Ok(fields)
}

fn json_error(e: &serde_json::Error) -> ProtocolError {
    ProtocolError::Invalid(format!("Invalid JSON: {e}"))
}

struct ObjectSeed<'n, const N: usize> {
    names: &'n [&'n str; N],
}

impl<'de, const N: usize> DeserializeSeed<'de> for ObjectSeed<'_, N> {
    type Value = [Option<&'de RawValue>; N];

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for ObjectSeed<'_, N> {
    type Value = [Option<&'de RawValue>; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = [None; N];
        while let Some(key) = map.next_key_seed(KeySeed { names: self.names })? {
            match key {
                Some(index) => {
                    if fields[index].is_some() {
                        return Err(de::Error::custom(format_args!(
                            "duplicate property '{}'",
                            self.names[index]
                        )));
                    }
                    fields[index] = Some(map.next_value::<&'de RawValue>()?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// Maps a property name to its index in `names` without allocating.
struct KeySeed<'n, const N: usize> {
    names: &'n [&'n str; N],
}

impl<'de, const N: usize> DeserializeSeed<'de> for KeySeed<'_, N> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl<const N: usize> Visitor<'_> for KeySeed<'_, N> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a property name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.names.iter().position(|name| *name == key))
    }
}

fn write_headers(out: &mut Vec<u8>, headers: &Headers) {
    if headers.is_empty() {
        return;
    }
    out.extend_from_slice(b",\"headers\":{");
    for (i, (key, value)) in headers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, key, false);
        out.push(b':');
        write_str(out, value, false);
    }
    out.push(b'}');
}

fn write_invocation_id(out: &mut Vec<u8>, id: &str) {
    out.extend_from_slice(b",\"invocationId\":");
    write_str(out, id, false);
}

pub(crate) fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Writes `s` as a JSON string literal.
///
/// Control characters are always escaped (a raw `0x1E` would end the record early, a raw CR/LF
/// cannot cross SSE); with `ascii_only` everything above U+007F is escaped too, for the handshake
/// response that the JS client decodes as Latin-1.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str, ascii_only: bool) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let short: &[u8] = match c {
            '"' => b"\\\"",
            '\\' => b"\\\\",
            '\n' => b"\\n",
            '\r' => b"\\r",
            '\t' => b"\\t",
            '\u{08}' => b"\\b",
            '\u{0C}' => b"\\f",
            c if (c as u32) < 0x20 || (ascii_only && !c.is_ascii()) => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        start = i + c.len_utf8();
        if !short.is_empty() {
            out.extend_from_slice(short);
            continue;
        }
        let mut units = [0u16; 2];
        for unit in c.encode_utf16(&mut units) {
            let u = *unit;
            out.extend_from_slice(&[
                b'\\',
                b'u',
                HEX[usize::from(u >> 12)],
                HEX[usize::from((u >> 8) & 0xF)],
                HEX[usize::from((u >> 4) & 0xF)],
                HEX[usize::from(u & 0xF)],
            ]);
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::Protocol;
    use proptest::prelude::*;

    fn p(text: &str) -> Payload {
        Payload(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn encode(msg: &HubMessage) -> String {
        let mut out = Vec::new();
        write_message(msg, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn decode(text: &str) -> Result<Option<HubMessage>, ProtocolError> {
        let mut buf = BytesMut::from(text.as_bytes());
        let result = parse_message(&mut buf, None);
        if let Ok(Some(_)) = result {
            assert!(buf.is_empty(), "record not fully consumed");
        }
        result
    }

    fn invalid(text: &str) -> String {
        match decode(text) {
            Err(ProtocolError::Invalid(why)) => why,
            other => panic!("expected Invalid for {text:?}, got {other:?}"),
        }
    }

    /// The worked examples of protocol-notes §B.8, plus the .NET shapes of §B.11.
    fn golden() -> Vec<(&'static str, HubMessage)> {
        vec![
            (
                "{\"type\":1,\"invocationId\":\"0\",\"target\":\"SendMessage\",\"arguments\":[\"bob\",\"hi\"]}\x1e",
                HubMessage::Invocation(Invocation {
                    headers: Headers::new(),
                    invocation_id: Some("0".into()),
                    target: "SendMessage".into(),
                    arguments: p("[\"bob\",\"hi\"]"),
                    stream_ids: vec![],
                }),
            ),
            (
                "{\"type\":1,\"target\":\"ReceiveMessage\",\"arguments\":[\"bob\",\"hi\"]}\x1e",
                HubMessage::Invocation(Invocation {
                    headers: Headers::new(),
                    invocation_id: None,
                    target: "ReceiveMessage".into(),
                    arguments: p("[\"bob\",\"hi\"]"),
                    stream_ids: vec![],
                }),
            ),
            (
                "{\"type\":1,\"headers\":{\"a\":\"b\",\"c\":\"d\"},\"invocationId\":\"2\",\"target\":\"Up\",\"arguments\":[],\"streamIds\":[\"0\",\"1\"]}\x1e",
                HubMessage::Invocation(Invocation {
                    headers: [("a".into(), "b".into()), ("c".into(), "d".into())].into(),
                    invocation_id: Some("2".into()),
                    target: "Up".into(),
                    arguments: p("[]"),
                    stream_ids: vec!["0".into(), "1".into()],
                }),
            ),
            (
                "{\"type\":2,\"invocationId\":\"1\",\"item\":0}\x1e",
                HubMessage::StreamItem(StreamItem {
                    headers: Headers::new(),
                    invocation_id: "1".into(),
                    item: p("0"),
                }),
            ),
            (
                "{\"type\":3,\"invocationId\":\"0\",\"result\":null}\x1e",
                HubMessage::Completion(Completion {
                    headers: Headers::new(),
                    invocation_id: "0".into(),
                    outcome: Outcome::Result(p("null")),
                }),
            ),
            (
                "{\"type\":3,\"invocationId\":\"1\"}\x1e",
                HubMessage::Completion(Completion {
                    headers: Headers::new(),
                    invocation_id: "1".into(),
                    outcome: Outcome::Void,
                }),
            ),
            (
                "{\"type\":3,\"invocationId\":\"2\",\"error\":\"boom\"}\x1e",
                HubMessage::Completion(Completion {
                    headers: Headers::new(),
                    invocation_id: "2".into(),
                    outcome: Outcome::Error("boom".into()),
                }),
            ),
            (
                "{\"type\":4,\"invocationId\":\"1\",\"target\":\"Counter\",\"arguments\":[10,500]}\x1e",
                HubMessage::StreamInvocation(Invocation {
                    headers: Headers::new(),
                    invocation_id: Some("1".into()),
                    target: "Counter".into(),
                    arguments: p("[10,500]"),
                    stream_ids: vec![],
                }),
            ),
            (
                "{\"type\":5,\"invocationId\":\"1\"}\x1e",
                HubMessage::CancelInvocation(CancelInvocation {
                    headers: Headers::new(),
                    invocation_id: "1".into(),
                }),
            ),
            ("{\"type\":6}\x1e", HubMessage::Ping),
            ("{\"type\":7}\x1e", HubMessage::Close(Close::default())),
            (
                "{\"type\":7,\"error\":\"Connection closed with an error.\",\"allowReconnect\":true}\x1e",
                HubMessage::Close(Close {
                    error: Some("Connection closed with an error.".into()),
                    allow_reconnect: true,
                }),
            ),
            (
                "{\"type\":7,\"allowReconnect\":true}\x1e",
                HubMessage::Close(Close {
                    error: None,
                    allow_reconnect: true,
                }),
            ),
            ("{\"type\":8,\"sequenceId\":5}\x1e", HubMessage::Ack(5)),
            ("{\"type\":9,\"sequenceId\":1}\x1e", HubMessage::Sequence(1)),
        ]
    }

    #[test]
    fn golden_encode() {
        for (text, msg) in golden() {
            assert_eq!(encode(&msg), text);
        }
    }

    #[test]
    fn golden_decode() {
        for (text, msg) in golden() {
            assert_eq!(decode(text).unwrap(), Some(msg), "{text}");
        }
    }

    #[test]
    fn every_type_is_covered() {
        let mut seen: Vec<u8> = golden().iter().map(|(_, m)| m.message_type()).collect();
        seen.dedup();
        assert_eq!(seen, (1..=9).collect::<Vec<_>>());
    }

    #[test]
    fn control_characters_are_escaped() {
        let msg = HubMessage::Completion(Completion {
            headers: Headers::new(),
            invocation_id: "a\u{1e}b".into(),
            outcome: Outcome::Error("q\"\\\n\r\t\u{0}\u{7f}é😀".into()),
        });
        let text = encode(&msg);
        assert_eq!(
            text,
            "{\"type\":3,\"invocationId\":\"a\\u001eb\",\"error\":\"q\\\"\\\\\\n\\r\\t\\u0000\u{7f}é😀\"}\x1e"
        );
        assert_eq!(text.bytes().filter(|&b| b == 0x1E).count(), 1);
        assert_eq!(decode(&text).unwrap(), Some(msg));

        let mut ascii = Vec::new();
        write_str(&mut ascii, "é😀\u{1}", true);
        assert_eq!(ascii, b"\"\\u00e9\\ud83d\\ude00\\u0001\"");
    }

    #[test]
    fn any_property_order_and_unknown_properties() {
        let text = "{\"arguments\":[1, {\"x\":[2]}],\"extra\":{\"deep\":[[[]]]},\"target\":\"T\",\"invocationId\":\"7\",\"type\":1}\x1e";
        let Some(HubMessage::Invocation(inv)) = decode(text).unwrap() else {
            panic!()
        };
        assert_eq!(inv.target, "T");
        assert_eq!(inv.invocation_id.as_deref(), Some("7"));
        assert_eq!(&inv.arguments.0[..], b"[1, {\"x\":[2]}]");
    }

    #[test]
    fn lenient_shapes() {
        // Empty id = non-blocking; null optional properties = absent.
        let text = "{\"type\":1,\"invocationId\":\"\",\"target\":\"T\",\"arguments\":[],\"headers\":null,\"streamIds\":null}\x1e";
        let Some(HubMessage::Invocation(inv)) = decode(text).unwrap() else {
            panic!()
        };
        assert_eq!(inv.invocation_id, None);
        assert_eq!(
            decode("{\"type\":3,\"invocationId\":\"1\",\"error\":null,\"result\":1}\x1e").unwrap(),
            Some(HubMessage::Completion(Completion {
                headers: Headers::new(),
                invocation_id: "1".into(),
                outcome: Outcome::Result(p("1")),
            }))
        );
        assert_eq!(
            decode("{\"type\":7,\"error\":null,\"allowReconnect\":false}\x1e").unwrap(),
            Some(HubMessage::Close(Close::default()))
        );
        assert_eq!(
            decode(" {\"type\":2,\"invocationId\":\"1\",\"item\":null} \x1e").unwrap(),
            Some(HubMessage::StreamItem(StreamItem {
                headers: Headers::new(),
                invocation_id: "1".into(),
                item: p("null"),
            }))
        );
    }

    #[test]
    fn several_messages_in_one_buffer() {
        let mut buf = BytesMut::new();
        for (text, _) in golden() {
            buf.extend_from_slice(text.as_bytes());
        }
        for (_, msg) in golden() {
            assert_eq!(parse_message(&mut buf, Some(1024)).unwrap(), Some(msg));
        }
        assert_eq!(parse_message(&mut buf, Some(1024)).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn byte_by_byte() {
        let (text, msg) = golden().swap_remove(2);
        let mut buf = BytesMut::new();
        for (i, &b) in text.as_bytes().iter().enumerate() {
            buf.extend_from_slice(&[b]);
            let got = parse_message(&mut buf, None).unwrap();
            if i + 1 < text.len() {
                assert_eq!(got, None);
            } else {
                assert_eq!(got, Some(msg.clone()));
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn size_limit() {
        let text = "{\"type\":8,\"sequenceId\":5}\x1e"; // 25 bytes + separator
        let mut buf = BytesMut::from(text.as_bytes());
        assert!(parse_message(&mut buf, Some(25)).unwrap().is_some());
        let mut buf = BytesMut::from(text.as_bytes());
        assert_eq!(
            parse_message(&mut buf, Some(24)),
            Err(ProtocolError::MessageTooLarge { limit: 24 })
        );
        // Detected before the separator arrives.
        let mut buf = BytesMut::from(&b"{\"type\":1,\"target\":\"aaaaaaaa"[..]);
        assert_eq!(parse_message(&mut buf, Some(30)).unwrap(), None);
        buf.extend_from_slice(b"aaa");
        assert_eq!(
            parse_message(&mut buf, Some(30)),
            Err(ProtocolError::MessageTooLarge { limit: 30 })
        );
    }

    #[test]
    fn bad_input() {
        let cases: &[(&str, &str)] = &[
            ("\x1e", "Empty JSON message."),
            ("{\"type\":1,\"target\":\x1e", "Invalid JSON"),
            ("{\"type\":6}}\x1e", "Invalid JSON"),
            ("[6]\x1e", "Expected a JSON object."),
            ("\"secret\"\x1e", "Expected a JSON object."),
            ("{}\x1e", "Missing required property 'type'."),
            ("{\"type\":\"1\"}\x1e", "Expected 'type' to be an integer."),
            ("{\"type\":1.5}\x1e", "Expected 'type' to be an integer."),
            ("{\"type\":0}\x1e", "Unknown message type 0"),
            ("{\"type\":10}\x1e", "Unknown message type 10"),
            ("{\"type\":-3}\x1e", "Unknown message type -3"),
            (
                "{\"type\":1,\"arguments\":[]}\x1e",
                "Missing required property 'target'.",
            ),
            (
                "{\"type\":1,\"target\":\"T\"}\x1e",
                "Missing required property 'arguments'.",
            ),
            (
                "{\"type\":1,\"target\":5,\"arguments\":[]}\x1e",
                "Expected 'target' to be a string.",
            ),
            (
                "{\"type\":1,\"target\":\"T\",\"arguments\":{}}\x1e",
                "Expected 'arguments' to be an array.",
            ),
            (
                "{\"type\":1,\"target\":\"T\",\"arguments\":[],\"invocationId\":1}\x1e",
                "Expected 'invocationId' to be a string.",
            ),
            (
                "{\"type\":1,\"target\":\"T\",\"arguments\":[],\"streamIds\":[1]}\x1e",
                "Expected 'streamIds' to be an array of strings.",
            ),
            (
                "{\"type\":1,\"target\":\"T\",\"arguments\":[],\"headers\":{\"a\":1}}\x1e",
                "Expected 'headers' to be an object of strings.",
            ),
            (
                "{\"type\":1,\"target\":\"T\",\"arguments\":[],\"headers\":[]}\x1e",
                "Expected 'headers' to be an object of strings.",
            ),
            (
                "{\"type\":4,\"target\":\"T\",\"arguments\":[]}\x1e",
                "Missing required property 'invocationId'.",
            ),
            (
                "{\"type\":2,\"invocationId\":\"1\"}\x1e",
                "Missing required property 'item'.",
            ),
            (
                "{\"type\":2,\"item\":1}\x1e",
                "Missing required property 'invocationId'.",
            ),
            (
                "{\"type\":3}\x1e",
                "Missing required property 'invocationId'.",
            ),
            (
                "{\"type\":3,\"invocationId\":\"1\",\"result\":1,\"error\":\"e\"}\x1e",
                "The 'error' and 'result' properties are mutually exclusive.",
            ),
            (
                "{\"type\":3,\"invocationId\":\"1\",\"error\":5}\x1e",
                "Expected 'error' to be a string.",
            ),
            (
                "{\"type\":5}\x1e",
                "Missing required property 'invocationId'.",
            ),
            (
                "{\"type\":7,\"allowReconnect\":\"yes\"}\x1e",
                "Expected 'allowReconnect' to be a boolean.",
            ),
            (
                "{\"type\":8}\x1e",
                "Missing required property 'sequenceId'.",
            ),
            (
                "{\"type\":8,\"sequenceId\":-1}\x1e",
                "Expected 'sequenceId' to be a non-negative integer.",
            ),
            (
                "{\"type\":9,\"sequenceId\":\"1\"}\x1e",
                "Expected 'sequenceId' to be a non-negative integer.",
            ),
            ("{\"type\":6,\"type\":6}\x1e", "duplicate property 'type'"),
        ];
        for (text, expected) in cases {
            let why = invalid(text);
            assert!(why.contains(expected), "{text:?}: {why}");
            assert!(!why.contains("secret"));
        }
        let mut buf = BytesMut::from(&b"{\"type\":6,\"x\":\"\xff\"}\x1e"[..]);
        assert_eq!(
            parse_message(&mut buf, None),
            Err(ProtocolError::Invalid("Message is not valid UTF-8.".into()))
        );
    }

    #[test]
    fn depth_limits() {
        let nested = |n: usize| {
            format!(
                "{{\"type\":2,\"invocationId\":\"1\",\"item\":{}1{}}}\x1e",
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(decode(&nested(MAX_DEPTH)).unwrap().is_some());
        assert_eq!(invalid(&nested(MAX_DEPTH + 1)), too_deep().to_string());
        // Brackets inside strings do not count.
        let text = format!(
            "{{\"type\":2,\"invocationId\":\"1\",\"item\":\"{}\\\"[\"}}\x1e",
            "[".repeat(1000)
        );
        assert!(decode(&text).unwrap().is_some());
        // 10 000 levels, in the envelope and in a payload, on a small stack.
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                // serde_json captures `RawValue`s and skips unknown properties iteratively and
                // without a depth limit, so the payload scan is what refuses this.
                assert_eq!(invalid(&nested(10_000)), too_deep().to_string());
                let unknown = format!(
                    "{{\"type\":6,\"x\":{}1{}}}\x1e",
                    "{\"a\":[".repeat(10_000),
                    "]}".repeat(10_000)
                );
                assert_eq!(decode(&unknown).unwrap(), Some(HubMessage::Ping));
                let unclosed = format!("{{\"type\":6,\"x\":{}\x1e", "[".repeat(10_000));
                assert!(invalid(&unclosed).contains("Invalid JSON"));
                // Structured headers do go through serde_json's recursion limit.
                let headers = format!(
                    "{{\"type\":5,\"invocationId\":\"1\",\"headers\":{}1{}}}\x1e",
                    "[".repeat(10_000),
                    "]".repeat(10_000)
                );
                assert!(invalid(&headers).contains("'headers'"));
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn splitter_searches_each_byte_once() {
        // A 1 MiB record dribbled one byte per read: with a rescan from the start on every
        // read this is 2^39 byte comparisons (hours); remembering the offset makes it 2^20.
        let mut splitter = RecordSplitter::new();
        let mut buf = BytesMut::new();
        let n = 1 << 20;
        let head: &[u8] = b"{\"type\":2,\"invocationId\":\"1\",\"item\":\"";
        buf.extend_from_slice(head);
        let started = std::time::Instant::now();
        for _ in 0..n {
            buf.extend_from_slice(b"a");
            assert_eq!(splitter.split(&mut buf, None).unwrap(), None);
            // The next search starts where this one stopped.
            assert_eq!(splitter.scanned(), buf.len());
        }
        buf.extend_from_slice(b"\"}\x1e{\"type\":6}\x1e");
        let record = splitter.split(&mut buf, None).unwrap().unwrap();
        assert_eq!(record.len(), head.len() + n + 2);
        assert_eq!(splitter.scanned(), 0);
        assert_eq!(
            parse_message_with(&mut splitter, &mut buf, None).unwrap(),
            Some(HubMessage::Ping)
        );
        assert!(buf.is_empty());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn splitter_enforces_the_limit_while_dribbling() {
        let mut splitter = RecordSplitter::new();
        let mut buf = BytesMut::new();
        let limit = 32 * 1024;
        for i in 1..=limit + 1 {
            buf.extend_from_slice(b"x");
            let got = splitter.split(&mut buf, Some(limit));
            if i <= limit {
                assert_eq!(got, Ok(None));
            } else {
                assert_eq!(got, Err(ProtocolError::MessageTooLarge { limit }));
            }
        }
        // A reset after the buffer was replaced searches it again.
        let mut buf = BytesMut::from(&b"{\"type\":6}\x1e"[..]);
        splitter.reset();
        assert!(splitter.split(&mut buf, Some(limit)).unwrap().is_some());
    }

    // ---- property tests, shared with the MessagePack tests ----

    fn any_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-zA-Z]{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn any_headers() -> impl Strategy<Value = Headers> {
        prop::collection::btree_map("[a-z-]{1,6}", ".{0,6}", 0..3)
    }

    /// Arbitrary messages whose payloads are valid in `protocol`.
    pub(crate) fn any_message(protocol: Protocol) -> impl Strategy<Value = HubMessage> {
        let payload = move || any_value().prop_map(move |v| protocol.encode_value(&v).unwrap());
        let arguments = move || {
            prop::collection::vec(any_value(), 0..4)
                .prop_map(move |v| protocol.encode_value(&v).unwrap())
        };
        let id = || ".{0,6}";
        let invocation = move |required_id: bool| {
            (
                any_headers(),
                if required_id {
                    ".{1,6}".prop_map(Some).boxed()
                } else {
                    prop::option::weighted(0.7, ".{1,6}").boxed()
                },
                ".{0,10}",
                arguments(),
                prop::collection::vec(".{0,4}", 0..3),
            )
                .prop_map(|(headers, invocation_id, target, arguments, stream_ids)| {
                    Invocation {
                        headers,
                        invocation_id,
                        target,
                        arguments,
                        stream_ids,
                    }
                })
        };
        prop_oneof![
            invocation(false).prop_map(HubMessage::Invocation),
            invocation(true).prop_map(HubMessage::StreamInvocation),
            (any_headers(), id(), payload()).prop_map(|(headers, invocation_id, item)| {
                HubMessage::StreamItem(StreamItem {
                    headers,
                    invocation_id,
                    item,
                })
            }),
            (
                any_headers(),
                id(),
                prop_oneof![
                    Just(Outcome::Void),
                    payload().prop_map(Outcome::Result),
                    ".{0,8}".prop_map(Outcome::Error),
                ]
            )
                .prop_map(|(headers, invocation_id, outcome)| {
                    HubMessage::Completion(Completion {
                        headers,
                        invocation_id,
                        outcome,
                    })
                }),
            (any_headers(), id()).prop_map(|(headers, invocation_id)| {
                HubMessage::CancelInvocation(CancelInvocation {
                    headers,
                    invocation_id,
                })
            }),
            Just(HubMessage::Ping),
            (prop::option::of(".{0,8}"), any::<bool>()).prop_map(|(error, allow_reconnect)| {
                HubMessage::Close(Close {
                    error,
                    allow_reconnect,
                })
            }),
            any::<u64>().prop_map(HubMessage::Ack),
            any::<u64>().prop_map(HubMessage::Sequence),
        ]
    }

    /// Feeds `bytes` to `protocol`'s parser in chunks cut at `cuts`, collecting every message.
    pub(crate) fn parse_chunked(
        protocol: Protocol,
        bytes: &[u8],
        cuts: &[usize],
    ) -> Vec<HubMessage> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut from = 0;
        for cut in cuts {
            buf.extend_from_slice(&bytes[from..cut]);
            from = cut;
            while let Some(msg) = protocol.parse_message(&mut buf, Some(1 << 20)).unwrap() {
                got.push(msg);
            }
        }
        assert!(buf.is_empty());
        got
    }

    proptest! {
        #[test]
        fn round_trip(msg in any_message(Protocol::Json)) {
            let bytes = Protocol::Json.encode_message(&msg);
            let mut buf = BytesMut::from(&bytes[..]);
            prop_assert_eq!(parse_message(&mut buf, None).unwrap(), Some(msg));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn chunking(
            msgs in prop::collection::vec(any_message(Protocol::Json), 1..6),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut bytes = Vec::new();
            for msg in &msgs {
                write_message(msg, &mut bytes);
            }
            prop_assert_eq!(parse_chunked(Protocol::Json, &bytes, &cuts), msgs);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = parse_message(&mut buf, Some(32));
        }

        #[test]
        fn incremental_parser_agrees_with_stateless(
            msgs in prop::collection::vec(any_message(Protocol::Json), 1..6),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut bytes = Vec::new();
            for msg in &msgs {
                write_message(msg, &mut bytes);
            }
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut parser = crate::protocol::MessageParser::new(Protocol::Json);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut from = 0;
            for cut in cuts {
                buf.extend_from_slice(&bytes[from..cut]);
                from = cut;
                while let Some(msg) = parser.parse(&mut buf, Some(1 << 20)).unwrap() {
                    got.push(msg);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, msgs);
        }
    }
}
