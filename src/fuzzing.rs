//! Entry points for the fuzz targets (`fuzz/`) and property tests: crate-private parsers and
//! state machines exposed as plain functions over bytes. Not a stable API.

use bytes::BytesMut;

use crate::connection::reconnect::{InboundCursor, ReplayBuffer};

/// Appends `payload` as one Server-Sent Event, exactly as the SSE transport writes it.
pub fn sse_write_event(payload: &[u8], out: &mut BytesMut) {
    crate::transport::sse::write_event(payload, out);
}

/// Reads a Server-Sent Events stream the way `EventSource` does (lines end with CRLF, LF or a
/// lone CR; `data` fields of one event are joined with LF; comments and other fields ignored)
/// and returns each event's data.
pub fn sse_parse_events(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut events = Vec::new();
    let mut data: Option<Vec<u8>> = None;
    let mut line_start = 0;
    let mut i = 0;
    let on_line = |line: &[u8], data: &mut Option<Vec<u8>>, events: &mut Vec<Vec<u8>>| {
        if line.is_empty() {
            if let Some(d) = data.take() {
                events.push(d);
            }
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return, // a comment
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            let d = data.get_or_insert_with(Vec::new);
            d.extend_from_slice(value);
            d.push(b'\n');
        }
    };
    while i < stream.len() {
        match stream[i] {
            b'\n' => {
                on_line(&stream[line_start..i], &mut data, &mut events);
                i += 1;
                line_start = i;
            }
            b'\r' => {
                on_line(&stream[line_start..i], &mut data, &mut events);
                i += 1;
                if stream.get(i) == Some(&b'\n') {
                    i += 1;
                }
                line_start = i;
            }
            _ => i += 1,
        }
    }
    // EventSource drops the trailing LF of the joined data.
    for e in &mut events {
        e.pop();
    }
    events
}

/// One step of the stateful-reconnect state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconnectOp {
    /// The server sends a trackable message of this many bytes.
    Send(u16),
    /// The client acknowledges up to this sequence id.
    Ack(u64),
    /// The client announces its next sequence id (after a reconnect).
    Sequence(u64),
    /// A trackable message from the client arrives.
    Receive,
    /// The server's ack timer fires.
    TakeAck,
}

impl ReconnectOp {
    /// Decodes a list of operations from arbitrary bytes (the fuzzer's input).
    pub fn decode(mut data: &[u8]) -> Vec<Self> {
        let mut ops = Vec::new();
        let take = |n: usize, data: &mut &[u8]| -> u64 {
            let (head, rest) = data.split_at(n.min(data.len()));
            *data = rest;
            head.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        };
        while let Some((&op, rest)) = data.split_first() {
            data = rest;
            ops.push(match op % 5 {
                0 => Self::Send(take(2, &mut data) as u16),
                // Small ids most of the time, any u64 sometimes.
                1 => Self::Ack(if op & 0x80 == 0 {
                    take(1, &mut data)
                } else {
                    take(8, &mut data)
                }),
                2 => Self::Sequence(if op & 0x80 == 0 {
                    take(1, &mut data)
                } else {
                    take(8, &mut data)
                }),
                3 => Self::Receive,
                _ => Self::TakeAck,
            });
        }
        ops
    }
}

/// Runs `ops` through the replay buffer and the inbound cursor, checking their invariants
/// after every step against a model; panics on a violation.
///
/// Replay buffer: it holds exactly the messages sent after the highest Ack seen (in order),
/// the `Sequence` id it would announce is the first of them, their bytes never exceed `limit`
/// (but for a single larger message alone), messages that do not fit are held back in order
/// and released, numbered, as Acks make room, and only a held backlog over its own cap is a
/// slow consumer. Inbound cursor: messages are processed exactly once, in order, never
/// skipping one (ids 1, 2, 3, …), whatever Sequence ids the client announces; an Ack never
/// goes backwards nor beyond what was processed.
pub fn check_reconnect(ops: &[ReconnectOp], limit: usize) {
    use crate::connection::reconnect::Admit;
    use std::collections::VecDeque;

    let held_limit = (limit * 10).max(1 << 20);
    let mut buffer = ReplayBuffer::new(limit);
    // (sequence id, length) of the numbered messages not yet acknowledged.
    let mut sent: VecDeque<(u64, usize)> = VecDeque::new();
    let mut sent_bytes = 0usize;
    let mut held: VecDeque<usize> = VecDeque::new();
    let mut held_bytes = 0usize;
    let mut next_seq = 1u64;

    let mut cursor = InboundCursor::new();
    let mut processed = 0u64;
    let mut last_ack = 0u64;

    for op in ops {
        match *op {
            ReconnectOp::Send(len) => {
                let len = usize::from(len);
                let got = buffer.admit(bytes::Bytes::from(vec![0u8; len]));
                let fits = sent.is_empty() || sent_bytes + len <= limit;
                let expected = if held.is_empty() && fits {
                    sent.push_back((next_seq, len));
                    sent_bytes += len;
                    next_seq += 1;
                    Admit::Send
                } else if held_bytes + len > held_limit {
                    Admit::Overflow
                } else {
                    held.push_back(len);
                    held_bytes += len;
                    Admit::Held
                };
                assert_eq!(got, expected, "admit({len})");
            }
            ReconnectOp::Ack(id) => {
                let released: Vec<usize> = buffer.ack(id).iter().map(|b| b.len()).collect();
                while sent.front().is_some_and(|(seq, _)| *seq <= id) {
                    let (_, len) = sent.pop_front().expect("front exists");
                    sent_bytes -= len;
                }
                let mut expected = Vec::new();
                while let Some(&len) = held.front() {
                    if !(sent.is_empty() || sent_bytes + len <= limit) {
                        break;
                    }
                    held.pop_front();
                    held_bytes -= len;
                    sent.push_back((next_seq, len));
                    sent_bytes += len;
                    next_seq += 1;
                    expected.push(len);
                }
                assert_eq!(released, expected, "released by Ack({id})");
            }
            ReconnectOp::Sequence(id) => {
                let accepted = cursor.sequence(id).is_ok();
                assert_eq!(
                    accepted,
                    id >= 1 && id <= processed + 1,
                    "Sequence({id}) with {processed} processed"
                );
            }
            ReconnectOp::Receive => {
                if cursor.receive() {
                    processed += 1;
                }
            }
            ReconnectOp::TakeAck => {
                if let Some(ack) = cursor.take_ack() {
                    assert!(ack > last_ack, "Ack went backwards: {ack} after {last_ack}");
                    assert!(ack <= processed, "Ack {ack} beyond processed {processed}");
                    last_ack = ack;
                }
            }
        }
        let first = sent.front().map_or(next_seq, |(seq, _)| *seq);
        assert_eq!(buffer.first_unacked(), first, "first unacked after {op:?}");
        let pending: Vec<usize> = buffer.pending().map(|b| b.len()).collect();
        let expected: Vec<usize> = sent.iter().map(|(_, len)| *len).collect();
        assert_eq!(pending, expected, "replay buffer after {op:?}");
        assert!(
            sent_bytes <= limit || sent.len() == 1,
            "{sent_bytes} unacknowledged bytes over the limit {limit}"
        );
        assert!(held_bytes <= held_limit);
    }
}
