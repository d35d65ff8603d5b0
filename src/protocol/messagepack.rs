//! The MessagePack hub protocol: `VarInt(length) || msgpack array` per message.
//!
//! The envelope is read by hand with a bounds-checked cursor, and payload values are only
//! *skipped* (their extent validated marker by marker, nesting capped at [`MAX_DEPTH`]) and kept as
//! zero-copy slices of the frame. Nothing here allocates in proportion to a length the peer
//! claims before the bytes backing it are present.

use bytes::{Bytes, BytesMut};

use super::{
    CancelInvocation, Close, Completion, Headers, HubMessage, Invocation, MAX_DEPTH, Outcome,
    Payload, ProtocolError, StreamItem, json::too_deep,
};

/// The largest frame length a VarInt prefix may announce (2 GiB − 1).
pub const MAX_FRAME_LENGTH: usize = 0x7FFF_FFFF;

/// Appends the VarInt encoding of `value` (7 bits per byte, least significant group first).
///
/// Values above [`MAX_FRAME_LENGTH`] cannot be framed; they are clamped, which only matters for a
/// message no peer would accept anyway.
pub fn write_varint(value: usize, out: &mut Vec<u8>) {
    let mut value = value.min(MAX_FRAME_LENGTH);
    loop {
        let low = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// Reads a VarInt length prefix from the front of `input`.
///
/// Returns `Ok(Some((value, prefix_len)))`, `Ok(None)` if more bytes are needed, and
/// [`ProtocolError::Invalid`] for a prefix longer than 5 bytes or a value above
/// [`MAX_FRAME_LENGTH`].
pub fn read_varint(input: &[u8]) -> Result<Option<(usize, usize)>, ProtocolError> {
    let mut value = 0usize;
    for i in 0..5 {
        let Some(&byte) = input.get(i) else {
            return Ok(None);
        };
        if i == 4 && byte > 0x07 {
            // A 5th byte may only carry bits 28..30; anything else (including a 6th byte)
            // exceeds 2^31 - 1.
            return Err(ProtocolError::invalid(
                "Messages over 2GB in size are not supported.",
            ));
        }
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    unreachable!("the 5th byte either ends the prefix or is rejected")
}

/// Appends `msg` as one length-prefixed MessagePack frame to `out`, with the .NET layouts.
///
/// Payloads are copied verbatim: they must already be single MessagePack values (the arguments
/// an array).
pub fn write_message(msg: &HubMessage, out: &mut Vec<u8>) {
    // Reserve one prefix byte (enough below 128 bytes, the common case) and widen afterwards.
    let start = out.len();
    out.push(0);
    write_body(msg, out);
    let len = out.len() - start - 1;
    if len < 0x80 {
        out[start] = len as u8;
    } else {
        let mut prefix = Vec::with_capacity(5);
        write_varint(len, &mut prefix);
        out.splice(start..=start, prefix);
    }
}

fn write_body(msg: &HubMessage, out: &mut Vec<u8>) {
    match msg {
        HubMessage::Invocation(inv) | HubMessage::StreamInvocation(inv) => {
            write_array_len(out, 6);
            write_uint(out, u64::from(msg.message_type()));
            write_headers(out, &inv.headers);
            match &inv.invocation_id {
                Some(id) => write_str(out, id),
                None => out.push(NIL),
            }
            write_str(out, &inv.target);
            out.extend_from_slice(&inv.arguments.0);
            write_array_len(out, inv.stream_ids.len());
            for id in &inv.stream_ids {
                write_str(out, id);
            }
        }
        HubMessage::StreamItem(item) => {
            write_array_len(out, 4);
            write_uint(out, 2);
            write_headers(out, &item.headers);
            write_str(out, &item.invocation_id);
            out.extend_from_slice(&item.item.0);
        }
        HubMessage::Completion(completion) => {
            let len = if completion.outcome == Outcome::Void {
                4
            } else {
                5
            };
            write_array_len(out, len);
            write_uint(out, 3);
            write_headers(out, &completion.headers);
            write_str(out, &completion.invocation_id);
            match &completion.outcome {
                Outcome::Error(error) => {
                    write_uint(out, ERROR_RESULT);
                    write_str(out, error);
                }
                Outcome::Void => write_uint(out, VOID_RESULT),
                Outcome::Result(value) => {
                    write_uint(out, NON_VOID_RESULT);
                    out.extend_from_slice(&value.0);
                }
            }
        }
        HubMessage::CancelInvocation(cancel) => {
            write_array_len(out, 3);
            write_uint(out, 5);
            write_headers(out, &cancel.headers);
            write_str(out, &cancel.invocation_id);
        }
        HubMessage::Ping => {
            write_array_len(out, 1);
            write_uint(out, 6);
        }
        HubMessage::Close(close) => {
            write_array_len(out, 3);
            write_uint(out, 7);
            match &close.error {
                Some(error) => write_str(out, error),
                None => out.push(NIL),
            }
            out.push(if close.allow_reconnect { TRUE } else { FALSE });
        }
        HubMessage::Ack(id) | HubMessage::Sequence(id) => {
            write_array_len(out, 2);
            write_uint(out, u64::from(msg.message_type()));
            write_uint(out, *id);
        }
    }
}

const NIL: u8 = 0xC0;
const FALSE: u8 = 0xC2;
const TRUE: u8 = 0xC3;
const ERROR_RESULT: u64 = 1;
const VOID_RESULT: u64 = 2;
const NON_VOID_RESULT: u64 = 3;

fn write_uint(out: &mut Vec<u8>, n: u64) {
    if n < 0x80 {
        out.push(n as u8);
    } else if n <= 0xFF {
        out.extend_from_slice(&[0xCC, n as u8]);
    } else if n <= 0xFFFF {
        out.push(0xCD);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= 0xFFFF_FFFF {
        out.push(0xCE);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(0xCF);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    let len = s.len();
    if len < 32 {
        out.push(0xA0 | len as u8);
    } else if len <= 0xFF {
        out.extend_from_slice(&[0xD9, len as u8]);
    } else if len <= 0xFFFF {
        out.push(0xDA);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0xDB);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

fn write_array_len(out: &mut Vec<u8>, len: usize) {
    write_container_len(out, len, 0x90, 0xDC);
}

fn write_container_len(out: &mut Vec<u8>, len: usize, fix: u8, marker16: u8) {
    if len < 16 {
        out.push(fix | len as u8);
    } else if len <= 0xFFFF {
        out.push(marker16);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        // The 32-bit marker always follows the 16-bit one.
        out.push(marker16 + 1);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

fn write_headers(out: &mut Vec<u8>, headers: &Headers) {
    // Always a map, even when empty (0x80): the JS client rejects anything else.
    write_container_len(out, headers.len(), 0x80, 0xDE);
    for (key, value) in headers {
        write_str(out, key);
        write_str(out, value);
    }
}

/// Takes one whole frame off the front of `buf` and parses it.
///
/// `Ok(None)` means the prefix or the body is still incomplete. A length above `max_size` is
/// [`ProtocolError::MessageTooLarge`] as soon as the prefix is read, before the body arrives.
pub fn parse_message(
    buf: &mut BytesMut,
    max_size: Option<usize>,
) -> Result<Option<HubMessage>, ProtocolError> {
    let Some((len, prefix)) = read_varint(buf)? else {
        return Ok(None);
    };
    if let Some(limit) = max_size
        && len > limit
    {
        return Err(ProtocolError::MessageTooLarge { limit });
    }
    if buf.len() - prefix < len {
        return Ok(None);
    }
    let frame = buf.split_to(prefix + len).freeze();
    parse_body(&frame.slice(prefix..)).map(Some)
}

fn parse_body(body: &Bytes) -> Result<HubMessage, ProtocolError> {
    let mut r = Reader { buf: body, pos: 0 };
    let count = r.array_len("message")?;
    if count == 0 {
        return Err(ProtocolError::invalid("Message is an empty array."));
    }
    let ty = r.int("message type")?;
    let need = |n: usize, what: &str| {
        if count < n {
            Err(ProtocolError::Invalid(format!(
                "Invalid payload for {what} message."
            )))
        } else {
            Ok(())
        }
    };
    // How many items of the array were read; the rest are skipped.
    let read;
    let message = match ty {
        1 | 4 => {
            let what = if ty == 1 {
                "Invocation"
            } else {
                "StreamInvocation"
            };
            need(5, what)?;
            let headers = r.headers()?;
            let invocation_id = r
                .opt_str("invocation id")?
                .filter(|id| !id.is_empty())
                .map(str::to_owned);
            if ty == 4 && invocation_id.is_none() {
                return Err(ProtocolError::invalid(
                    "A StreamInvocation needs an invocation id.",
                ));
            }
            let target = r.str("target")?.to_owned();
            if !matches!(r.peek()?, 0x90..=0x9F | 0xDC | 0xDD) {
                return Err(ProtocolError::invalid(
                    "Reading 'arguments' as Array failed.",
                ));
            }
            let arguments = Payload(r.value(body)?);
            let stream_ids = if count > 5 {
                let n = r.array_len("stream ids")?;
                let mut ids = Vec::new();
                for _ in 0..n {
                    ids.push(r.str("stream id")?.to_owned());
                }
                ids
            } else {
                Vec::new()
            };
            read = count.min(6);
            let invocation = Invocation {
                headers,
                invocation_id,
                target,
                arguments,
                stream_ids,
            };
            if ty == 1 {
                HubMessage::Invocation(invocation)
            } else {
                HubMessage::StreamInvocation(invocation)
            }
        }
        2 => {
            need(4, "StreamItem")?;
            read = 4;
            HubMessage::StreamItem(StreamItem {
                headers: r.headers()?,
                invocation_id: r.str("invocation id")?.to_owned(),
                item: Payload(r.value(body)?),
            })
        }
        3 => {
            need(4, "Completion")?;
            let headers = r.headers()?;
            let invocation_id = r.str("invocation id")?.to_owned();
            let outcome = match r.int("result kind")? {
                1 => {
                    need(5, "Completion")?;
                    Outcome::Error(r.str("error")?.to_owned())
                }
                2 => Outcome::Void,
                3 => {
                    need(5, "Completion")?;
                    Outcome::Result(Payload(r.value(body)?))
                }
                _ => return Err(ProtocolError::invalid("Invalid invocation result kind.")),
            };
            read = if outcome == Outcome::Void { 4 } else { 5 };
            HubMessage::Completion(Completion {
                headers,
                invocation_id,
                outcome,
            })
        }
        5 => {
            need(3, "CancelInvocation")?;
            read = 3;
            HubMessage::CancelInvocation(CancelInvocation {
                headers: r.headers()?,
                invocation_id: r.str("invocation id")?.to_owned(),
            })
        }
        6 => {
            read = 1;
            HubMessage::Ping
        }
        7 => {
            need(2, "Close")?;
            let error = r.opt_str("error")?.map(str::to_owned);
            let allow_reconnect = if count > 2 {
                r.bool("allowReconnect")?
            } else {
                false
            };
            read = count.min(3);
            HubMessage::Close(Close {
                error,
                allow_reconnect,
            })
        }
        8 | 9 => {
            need(2, if ty == 8 { "Ack" } else { "Sequence" })?;
            read = 2;
            let id = u64::try_from(r.int("sequence id")?)
                .map_err(|_| ProtocolError::invalid("Invalid sequence id."))?;
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
    // Newer peers may append items; they must still be well-formed.
    for _ in read..count {
        r.value(body)?;
    }
    if r.pos != body.len() {
        return Err(ProtocolError::invalid(
            "Unexpected bytes after the message.",
        ));
    }
    Ok(message)
}

/// A bounds-checked cursor over one frame body.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn truncated() -> ProtocolError {
    ProtocolError::invalid("Incomplete MessagePack value.")
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Result<u8, ProtocolError> {
        self.buf.get(self.pos).copied().ok_or_else(truncated)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, ProtocolError> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    fn be(&mut self, n: usize) -> Result<u64, ProtocolError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn mismatch(what: &str, expected: &str) -> ProtocolError {
        ProtocolError::Invalid(format!("Reading '{what}' as {expected} failed."))
    }

    /// An array header; the count is checked against the bytes left (one byte per item at least).
    fn array_len(&mut self, what: &str) -> Result<usize, ProtocolError> {
        let len = match self.byte()? {
            b @ 0x90..=0x9F => usize::from(b & 0x0F),
            0xDC => self.be(2)? as usize,
            0xDD => self.be(4)? as usize,
            _ => return Err(Self::mismatch(what, "Array")),
        };
        if len > self.buf.len() - self.pos {
            return Err(truncated());
        }
        Ok(len)
    }

    fn headers(&mut self) -> Result<Headers, ProtocolError> {
        let len = match self.byte()? {
            b @ 0x80..=0x8F => usize::from(b & 0x0F),
            0xDE => self.be(2)? as usize,
            0xDF => self.be(4)? as usize,
            _ => return Err(Self::mismatch("headers", "Map")),
        };
        if len > (self.buf.len() - self.pos) / 2 {
            return Err(truncated());
        }
        let mut headers = Headers::new();
        for _ in 0..len {
            let key = self.str("header name")?.to_owned();
            let value = self.str("header value")?.to_owned();
            headers.insert(key, value);
        }
        Ok(headers)
    }

    /// Any integer width, signed or not.
    fn int(&mut self, what: &str) -> Result<i128, ProtocolError> {
        let b = self.byte()?;
        Ok(match b {
            0x00..=0x7F => i128::from(b),
            0xE0..=0xFF => i128::from(b as i8),
            0xCC => i128::from(self.be(1)?),
            0xCD => i128::from(self.be(2)?),
            0xCE => i128::from(self.be(4)?),
            0xCF => i128::from(self.be(8)?),
            0xD0 => i128::from(self.be(1)? as u8 as i8),
            0xD1 => i128::from(self.be(2)? as u16 as i16),
            0xD2 => i128::from(self.be(4)? as u32 as i32),
            0xD3 => i128::from(self.be(8)? as i64),
            _ => return Err(Self::mismatch(what, "Int32")),
        })
    }

    fn bool(&mut self, what: &str) -> Result<bool, ProtocolError> {
        match self.byte()? {
            FALSE => Ok(false),
            TRUE => Ok(true),
            _ => Err(Self::mismatch(what, "Boolean")),
        }
    }

    fn opt_str(&mut self, what: &str) -> Result<Option<&'a str>, ProtocolError> {
        if self.peek()? == NIL {
            self.pos += 1;
            return Ok(None);
        }
        self.str(what).map(Some)
    }

    fn str(&mut self, what: &str) -> Result<&'a str, ProtocolError> {
        let len = match self.byte()? {
            b @ 0xA0..=0xBF => usize::from(b & 0x1F),
            0xD9 => self.be(1)? as usize,
            0xDA => self.be(2)? as usize,
            0xDB => self.be(4)? as usize,
            _ => return Err(Self::mismatch(what, "String")),
        };
        std::str::from_utf8(self.take(len)?).map_err(|_| {
            ProtocolError::Invalid(format!("Reading '{what}' as String failed: invalid UTF-8."))
        })
    }

    /// Skips one complete value, returning it as a zero-copy slice of `frame`.
    fn value(&mut self, frame: &Bytes) -> Result<Bytes, ProtocolError> {
        let len = skip_value(&self.buf[self.pos..], 0)?;
        let start = self.pos;
        self.pos += len;
        Ok(frame.slice(start..self.pos))
    }
}

/// What one marker introduces.
enum Item {
    /// A scalar with this many bytes after its header.
    Scalar(usize),
    /// An array or map with this many values (keys and values counted separately).
    Container(usize),
}

/// Decodes the header at the front of `input`: (header length, what follows).
fn header(input: &[u8]) -> Result<(usize, Item), ProtocolError> {
    let Some(&marker) = input.first() else {
        return Err(truncated());
    };
    let be = |n: usize| -> Result<usize, ProtocolError> {
        let bytes = input.get(1..1 + n).ok_or_else(truncated)?;
        Ok(bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b)))
    };
    Ok(match marker {
        0x00..=0x7F | 0xE0..=0xFF | NIL | FALSE | TRUE => (1, Item::Scalar(0)),
        0x80..=0x8F => (1, Item::Container(2 * usize::from(marker & 0x0F))),
        0x90..=0x9F => (1, Item::Container(usize::from(marker & 0x0F))),
        0xA0..=0xBF => (1, Item::Scalar(usize::from(marker & 0x1F))),
        0xC1 => return Err(ProtocolError::invalid("Invalid MessagePack marker 0xC1.")),
        // bin8/16/32, str8/16/32
        0xC4 | 0xD9 => (2, Item::Scalar(be(1)?)),
        0xC5 | 0xDA => (3, Item::Scalar(be(2)?)),
        0xC6 | 0xDB => (5, Item::Scalar(be(4)?)),
        // ext8/16/32: length, then the type byte
        0xC7 => (3, Item::Scalar(be(1)?)),
        0xC8 => (4, Item::Scalar(be(2)?)),
        0xC9 => (6, Item::Scalar(be(4)?)),
        0xCA => (1, Item::Scalar(4)),
        0xCB => (1, Item::Scalar(8)),
        0xCC | 0xD0 => (1, Item::Scalar(1)),
        0xCD | 0xD1 => (1, Item::Scalar(2)),
        0xCE | 0xD2 => (1, Item::Scalar(4)),
        0xCF | 0xD3 => (1, Item::Scalar(8)),
        // fixext1/2/4/8/16: the type byte, then the data
        0xD4 => (1, Item::Scalar(2)),
        0xD5 => (1, Item::Scalar(3)),
        0xD6 => (1, Item::Scalar(5)),
        0xD7 => (1, Item::Scalar(9)),
        0xD8 => (1, Item::Scalar(17)),
        0xDC => (3, Item::Container(be(2)?)),
        0xDD => (5, Item::Container(be(4)?)),
        0xDE => (3, Item::Container(2 * be(2)?)),
        0xDF => (5, Item::Container(2 * be(4)?)),
    })
}

/// Returns how many bytes the MessagePack value at the front of `input` occupies.
///
/// Iterative, so hostile nesting costs no stack; containers may nest at most [`MAX_DEPTH`] levels
/// counting from `depth` (the depth of the value's parent). Every length and element count is
/// checked against the bytes present before it is used, so a lying header fails at once.
pub(crate) fn skip_value(input: &[u8], depth: usize) -> Result<usize, ProtocolError> {
    // Values still to read in each open container, innermost last.
    let mut open = [0usize; MAX_DEPTH];
    let mut levels = 0;
    let mut pos = 0;
    loop {
        let (header_len, item) = header(&input[pos..])?;
        // Ext headers end with a type byte that `header` does not read.
        if header_len > input.len() - pos {
            return Err(truncated());
        }
        pos += header_len;
        let remaining = input.len() - pos;
        match item {
            Item::Scalar(len) => {
                if len > remaining {
                    return Err(truncated());
                }
                pos += len;
            }
            Item::Container(count) => {
                if depth + levels >= MAX_DEPTH {
                    return Err(too_deep());
                }
                if count > remaining {
                    return Err(truncated());
                }
                if count > 0 {
                    open[levels] = count;
                    levels += 1;
                    continue;
                }
            }
        }
        // One value is complete: count it against its container(s).
        loop {
            if levels == 0 {
                return Ok(pos);
            }
            open[levels - 1] -= 1;
            if open[levels - 1] > 0 {
                break;
            }
            levels -= 1;
        }
    }
}

/// Splits an encoded array into the byte ranges of its elements.
pub(crate) fn array_elements(input: &[u8]) -> Result<Vec<std::ops::Range<usize>>, ProtocolError> {
    let mut r = Reader { buf: input, pos: 0 };
    let count = r.array_len("arguments")?;
    // `count` is bounded by the bytes present, so this allocation is too.
    let mut ranges = Vec::with_capacity(count);
    for _ in 0..count {
        let len = skip_value(&input[r.pos..], 1)?;
        ranges.push(r.pos..r.pos + len);
        r.pos += len;
    }
    if r.pos != input.len() {
        return Err(ProtocolError::invalid(
            "Unexpected bytes after the arguments.",
        ));
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        Protocol,
        json::tests::{any_message, parse_chunked},
    };
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    fn p(bytes: &str) -> Payload {
        Payload(Bytes::from(hex(bytes)))
    }

    fn encode(msg: &HubMessage) -> Vec<u8> {
        let mut out = Vec::new();
        write_message(msg, &mut out);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Option<HubMessage>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        let result = parse_message(&mut buf, None);
        if let Ok(Some(_)) = result {
            assert!(buf.is_empty(), "frame not fully consumed");
        }
        result
    }

    fn invalid(bytes: &[u8]) -> String {
        match decode(bytes) {
            Err(ProtocolError::Invalid(why)) => why,
            other => panic!("expected Invalid for {bytes:02X?}, got {other:?}"),
        }
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_varint(body.len(), &mut out);
        out.extend_from_slice(body);
        out
    }

    fn completion(id: &str, outcome: Outcome) -> HubMessage {
        HubMessage::Completion(Completion {
            headers: Headers::new(),
            invocation_id: id.into(),
            outcome,
        })
    }

    /// Frames the server writes (protocol-notes §B.9), encoded and decoded both ways.
    fn golden() -> Vec<(&'static str, HubMessage)> {
        vec![
            ("02 91 06", HubMessage::Ping),
            ("04 93 07 C0 C2", HubMessage::Close(Close::default())),
            (
                "08 93 07 A4 62 6F 6F 6D C3",
                HubMessage::Close(Close {
                    error: Some("boom".into()),
                    allow_reconnect: true,
                }),
            ),
            ("03 92 08 05", HubMessage::Ack(5)),
            ("03 92 09 01", HubMessage::Sequence(1)),
            ("06 94 03 80 A1 31 02", completion("1", Outcome::Void)),
            (
                "07 95 03 80 A1 30 03 C0",
                completion("0", Outcome::Result(p("C0"))),
            ),
            (
                "07 95 03 80 A1 33 03 2A",
                completion("3", Outcome::Result(p("2A"))),
            ),
            (
                "0B 95 03 80 A1 32 01 A4 62 6F 6F 6D",
                completion("2", Outcome::Error("boom".into())),
            ),
            (
                "1C 96 01 80 C0 AE 52 65 63 65 69 76 65 4D 65 73 73 61 67 65 92 A3 62 6F 62 A2 68 69 90",
                HubMessage::Invocation(Invocation {
                    headers: Headers::new(),
                    invocation_id: None,
                    target: "ReceiveMessage".into(),
                    arguments: p("92 A3 62 6F 62 A2 68 69"),
                    stream_ids: vec![],
                }),
            ),
            (
                "13 96 04 80 A1 31 A7 43 6F 75 6E 74 65 72 92 0A CD 01 F4 90",
                HubMessage::StreamInvocation(Invocation {
                    headers: Headers::new(),
                    invocation_id: Some("1".into()),
                    target: "Counter".into(),
                    arguments: p("92 0A CD 01 F4"),
                    stream_ids: vec![],
                }),
            ),
            (
                "0F 96 01 81 A1 61 A1 62 A1 35 A1 54 90 91 A1 37",
                HubMessage::Invocation(Invocation {
                    headers: [("a".into(), "b".into())].into(),
                    invocation_id: Some("5".into()),
                    target: "T".into(),
                    arguments: p("90"),
                    stream_ids: vec!["7".into()],
                }),
            ),
            (
                "06 94 02 80 A1 31 00",
                HubMessage::StreamItem(StreamItem {
                    headers: Headers::new(),
                    invocation_id: "1".into(),
                    item: p("00"),
                }),
            ),
            (
                "05 93 05 80 A1 31",
                HubMessage::CancelInvocation(CancelInvocation {
                    headers: Headers::new(),
                    invocation_id: "1".into(),
                }),
            ),
        ]
    }

    #[test]
    fn golden_encode() {
        for (bytes, msg) in golden() {
            assert_eq!(encode(&msg), hex(bytes), "{msg:?}");
        }
    }

    #[test]
    fn golden_decode() {
        for (bytes, msg) in golden() {
            assert_eq!(decode(&hex(bytes)).unwrap(), Some(msg), "{bytes}");
        }
    }

    #[test]
    fn every_type_is_covered() {
        let mut seen: Vec<u8> = golden().iter().map(|(_, m)| m.message_type()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, (1..=9).collect::<Vec<_>>());
    }

    /// What the JS client sends, which differs from what the server writes.
    #[test]
    fn client_shapes() {
        // Close (JS): 2 items.
        assert_eq!(
            decode(&hex("03 92 07 C0")).unwrap(),
            Some(HubMessage::Close(Close::default()))
        );
        // invoke SendMessage("bob","hi"), 5 items.
        assert_eq!(
            decode(&hex(
                "19 95 01 80 A1 30 AB 53 65 6E 64 4D 65 73 73 61 67 65 92 A3 62 6F 62 A2 68 69"
            ))
            .unwrap(),
            Some(HubMessage::Invocation(Invocation {
                headers: Headers::new(),
                invocation_id: Some("0".into()),
                target: "SendMessage".into(),
                arguments: p("92 A3 62 6F 62 A2 68 69"),
                stream_ids: vec![],
            }))
        );
        // stream Counter(10,500), 5 items.
        assert_eq!(
            decode(&hex(
                "12 95 04 80 A1 31 A7 43 6F 75 6E 74 65 72 92 0A CD 01 F4"
            ))
            .unwrap(),
            Some(HubMessage::StreamInvocation(Invocation {
                headers: Headers::new(),
                invocation_id: Some("1".into()),
                target: "Counter".into(),
                arguments: p("92 0A CD 01 F4"),
                stream_ids: vec![],
            }))
        );
        // Empty-string id = non-blocking.
        let Some(HubMessage::Invocation(inv)) = decode(&hex("06 95 01 80 A0 A0 90")).unwrap()
        else {
            panic!()
        };
        assert_eq!(inv.invocation_id, None);
        // Wide integers for the type, result kind and sequence id; extra trailing items.
        assert_eq!(
            decode(&hex("0F 92 D3 00 00 00 00 00 00 00 08 CE 00 00 01 00")).unwrap(),
            Some(HubMessage::Ack(256))
        );
        assert_eq!(
            decode(&hex("0A 96 CC 03 80 A1 31 D0 02 C0 90")).unwrap(),
            Some(completion("1", Outcome::Void))
        );
        assert_eq!(
            decode(&hex("05 93 06 C0 91 01")).unwrap(),
            Some(HubMessage::Ping)
        );
        assert_eq!(
            decode(&hex("0B 92 09 CF FF FF FF FF FF FF FF FF")).unwrap(),
            Some(HubMessage::Sequence(u64::MAX))
        );
    }

    #[test]
    fn varint() {
        for (value, bytes) in [
            (0, "00"),
            (127, "7F"),
            (128, "80 01"),
            (300, "AC 02"),
            (0x7FFF_FFFF, "FF FF FF FF 07"),
        ] {
            let mut out = Vec::new();
            write_varint(value, &mut out);
            assert_eq!(out, hex(bytes));
            assert_eq!(read_varint(&out), Ok(Some((value, out.len()))));
            assert_eq!(read_varint(&out[..out.len() - 1]), Ok(None));
        }
        assert!(read_varint(&hex("FF FF FF FF 08")).is_err());
        assert!(read_varint(&hex("80 80 80 80 80 01")).is_err());
        assert!(matches!(
            parse_message(&mut BytesMut::from(&hex("80 80 80 80 80 80")[..]), None),
            Err(ProtocolError::Invalid(_))
        ));
        // Large bodies get a multi-byte prefix.
        let msg = HubMessage::StreamItem(StreamItem {
            headers: Headers::new(),
            invocation_id: "x".repeat(300),
            item: p("C0"),
        });
        let bytes = encode(&msg);
        assert_eq!(read_varint(&bytes), Ok(Some((bytes.len() - 2, 2))));
        assert_eq!(decode(&bytes).unwrap(), Some(msg));
    }

    #[test]
    fn several_messages_in_one_buffer() {
        let mut buf = BytesMut::new();
        for (bytes, _) in golden() {
            buf.extend_from_slice(&hex(bytes));
        }
        for (_, msg) in golden() {
            assert_eq!(parse_message(&mut buf, Some(64)).unwrap(), Some(msg));
        }
        assert_eq!(parse_message(&mut buf, Some(64)).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn byte_by_byte() {
        let bytes = hex(golden()[9].0);
        let mut buf = BytesMut::new();
        for (i, &b) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[b]);
            let got = parse_message(&mut buf, None).unwrap();
            assert_eq!(got.is_some(), i + 1 == bytes.len());
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn size_limit_before_the_body() {
        let mut buf = BytesMut::from(&hex("80 01 96")[..]);
        assert_eq!(
            parse_message(&mut buf, Some(127)),
            Err(ProtocolError::MessageTooLarge { limit: 127 })
        );
        let mut buf = BytesMut::from(&hex("FF FF FF FF 07")[..]);
        assert_eq!(
            parse_message(&mut buf, Some(32 * 1024)),
            Err(ProtocolError::MessageTooLarge { limit: 32 * 1024 })
        );
        let mut buf = BytesMut::from(&hex("02 91 06")[..]);
        assert_eq!(
            parse_message(&mut buf, Some(2)).unwrap(),
            Some(HubMessage::Ping)
        );
    }

    #[test]
    fn bad_input() {
        // Frame bodies (the prefix is added here).
        let cases: &[(&str, &str)] = &[
            ("", "Incomplete"),
            ("C1", "Reading 'message' as Array failed."),
            ("90", "empty array"),
            ("91 0A", "Unknown message type 10"),
            ("91 00", "Unknown message type 0"),
            ("91 FF", "Unknown message type -1"),
            ("91 A1", "Reading 'message type' as Int32 failed."),
            ("92 01 80", "Invalid payload for Invocation message."),
            ("95 01 90 C0 A1 54 90", "Reading 'headers' as Map failed."),
            (
                "95 01 81 A1 61 01 A1 54 90",
                "Reading 'header value' as String failed.",
            ),
            (
                "95 01 80 01 A1 54 90",
                "Reading 'invocation id' as String failed.",
            ),
            ("95 01 80 C0 01 90", "Reading 'target' as String failed."),
            (
                "95 01 80 C0 A1 54 80",
                "Reading 'arguments' as Array failed.",
            ),
            ("95 04 80 C0 A1 54 90", "needs an invocation id"),
            (
                "96 01 80 C0 A1 54 90 01",
                "Reading 'stream ids' as Array failed.",
            ),
            ("96 01 80 C0 A1 54 90 91", "Incomplete"),
            (
                "96 01 80 C0 A1 54 90 91 01",
                "Reading 'stream id' as String failed.",
            ),
            ("93 02 80 A1 31", "Invalid payload for StreamItem message."),
            ("94 02 80 A1", "Incomplete"),
            (
                "94 02 80 C0 01",
                "Reading 'invocation id' as String failed.",
            ),
            (
                "94 03 80 A1 31 01",
                "Invalid payload for Completion message.",
            ),
            (
                "94 03 80 A1 31 03",
                "Invalid payload for Completion message.",
            ),
            ("95 03 80 A1 31 04 C0", "Invalid invocation result kind."),
            ("95 03 80 A1 31 01 C0", "Reading 'error' as String failed."),
            ("92 05 80", "Invalid payload for CancelInvocation message."),
            ("91 07", "Invalid payload for Close message."),
            ("93 07 C0 01", "Reading 'allowReconnect' as Boolean failed."),
            ("93 07 01 C2", "Reading 'error' as String failed."),
            ("91 08", "Invalid payload for Ack message."),
            ("92 08 FF", "Invalid sequence id."),
            ("92 08 C0", "Reading 'sequence id' as Int32 failed."),
            ("91 06 00", "Unexpected bytes after the message."),
            ("95 03 80 A1 31 02 C1", "Invalid MessagePack marker 0xC1."),
            ("94 02 80 A2 FF FE 00", "invalid UTF-8"),
        ];
        for (body, expected) in cases {
            let why = invalid(&frame(&hex(body)));
            assert!(why.contains(expected), "{body}: {why}");
        }
    }

    #[test]
    fn lying_lengths_fail_fast() {
        // A 32-bit count or length claiming ~4 GiB inside a short frame must fail at once:
        // as the message, in headers, in an item, nested inside the arguments.
        for body in [
            "DD FF FF FF FF",
            "93 05 DF FF FF FF FF",
            "94 02 80 A1 31 DD FF FF FF FF",
            "95 01 80 C0 A1 54 91 91 DD FF FF FF FF",
            "94 02 80 A1 31 DF FF FF FF FF",
            "94 02 80 A1 31 DB FF FF FF FF",
            "94 02 80 A1 31 C6 FF FF FF FF",
            "94 02 80 A1 31 C9 FF FF FF FF 01",
            "96 01 80 C0 A1 54 90 DD FF FF FF FF",
        ] {
            assert!(invalid(&frame(&hex(body))).contains("Incomplete"), "{body}");
        }
    }

    #[test]
    fn every_marker_is_skipped() {
        let values = [
            "00",
            "7F",
            "E0",
            "FF",
            "C0",
            "C2",
            "C3",
            "CA 00 00 00 00",
            "CB 00 00 00 00 00 00 00 00",
            "CC 01",
            "CD 01 02",
            "CE 01 02 03 04",
            "CF 01 02 03 04 05 06 07 08",
            "D0 01",
            "D1 01 02",
            "D2 01 02 03 04",
            "D3 01 02 03 04 05 06 07 08",
            "A0",
            "A3 61 62 63",
            "D9 01 61",
            "DA 00 01 61",
            "DB 00 00 00 01 61",
            "C4 01 00",
            "C5 00 01 00",
            "C6 00 00 00 01 00",
            "D4 01 00",
            "D5 01 00 00",
            "D6 FF 00 00 00 00",
            "D7 FF 00 00 00 00 00 00 00 00",
            "D8 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
            "C7 0C FF 00 00 00 00 00 00 00 00 00 00 00 00",
            "C8 00 01 05 00",
            "C9 00 00 00 01 05 00",
            "90",
            "80",
            "92 01 02",
            "82 A1 61 01 A1 62 92 01 02",
            "DC 00 01 00",
            "DD 00 00 00 01 00",
            "DE 00 01 00 01",
            "DF 00 00 00 01 00 01",
        ];
        for value in values {
            let bytes = hex(value);
            assert_eq!(skip_value(&bytes, 0), Ok(bytes.len()), "{value}");
            // Truncated at every point: an error, never a panic.
            for cut in 0..bytes.len() {
                assert!(
                    skip_value(&bytes[..cut], 0).is_err(),
                    "{value} cut at {cut}"
                );
            }
            // Round-trips as a StreamItem payload, byte for byte.
            let msg = HubMessage::StreamItem(StreamItem {
                headers: Headers::new(),
                invocation_id: "1".into(),
                item: Payload(Bytes::from(bytes)),
            });
            assert_eq!(decode(&encode(&msg)).unwrap(), Some(msg));
        }
    }

    #[test]
    fn depth_limits() {
        let nested = |n: usize| {
            let mut v = vec![0x91; n];
            v.push(0x00);
            v
        };
        // The arguments array is level 1: MAX_DEPTH levels in all are fine, one more is not.
        let invocation = |args: Vec<u8>| {
            let mut body = hex("95 01 80 C0 A1 54");
            body.extend(args);
            frame(&body)
        };
        assert!(decode(&invocation(nested(MAX_DEPTH))).unwrap().is_some());
        assert_eq!(
            invalid(&invocation(nested(MAX_DEPTH + 1))),
            too_deep().to_string()
        );
        assert_eq!(skip_value(&nested(MAX_DEPTH), 0), Ok(MAX_DEPTH + 1));
        assert!(skip_value(&nested(MAX_DEPTH + 1), 0).is_err());
        // Empty containers count too.
        let mut deep_empty = vec![0x91; MAX_DEPTH];
        deep_empty.push(0x90);
        assert!(skip_value(&deep_empty, 0).is_err());
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                assert_eq!(invalid(&invocation(nested(10_000))), too_deep().to_string());
                let mut maps = [0x81, 0xA1, 0x61].repeat(10_000);
                maps.push(0xC0);
                assert_eq!(skip_value(&maps, 0), Err(too_deep()));
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn array_elements_splits() {
        let args = hex("93 A3 62 6F 62 92 01 02 C0");
        assert_eq!(array_elements(&args).unwrap(), vec![1..5, 5..8, 8..9]);
        assert!(array_elements(&hex("93 01 02")).is_err());
        assert!(array_elements(&hex("91 01 02")).is_err());
        assert!(array_elements(&hex("A1 01")).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(msg in any_message(Protocol::MessagePack)) {
            let bytes = Protocol::MessagePack.encode_message(&msg);
            let mut buf = BytesMut::from(&bytes[..]);
            prop_assert_eq!(parse_message(&mut buf, None).unwrap(), Some(msg));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn chunking(
            msgs in prop::collection::vec(any_message(Protocol::MessagePack), 1..6),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut bytes = Vec::new();
            for msg in &msgs {
                write_message(msg, &mut bytes);
            }
            prop_assert_eq!(parse_chunked(Protocol::MessagePack, &bytes, &cuts), msgs);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = parse_message(&mut buf, Some(48));
            let _ = skip_value(&bytes, 0);
        }

        #[test]
        fn skip_agrees_with_rmpv(value in any_rmpv()) {
            let mut bytes = Vec::new();
            rmpv::encode::write_value(&mut bytes, &value).unwrap();
            prop_assert_eq!(skip_value(&bytes, 0), Ok(bytes.len()));
        }
    }

    fn any_rmpv() -> impl Strategy<Value = rmpv::Value> {
        use rmpv::Value;
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<bool>().prop_map(Value::Boolean),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f32>().prop_map(Value::F32),
            any::<f64>().prop_map(Value::F64),
            ".{0,40}".prop_map(Value::from),
            prop::collection::vec(any::<u8>(), 0..300).prop_map(Value::Binary),
            (any::<i8>(), prop::collection::vec(any::<u8>(), 0..20))
                .prop_map(|(t, d)| Value::Ext(t, d)),
        ];
        leaf.prop_recursive(4, 40, 20, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..20).prop_map(Value::Array),
                prop::collection::vec((inner.clone(), inner), 0..20).prop_map(Value::Map),
            ]
        })
    }
}
