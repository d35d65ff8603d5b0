//! What the load generator puts on the wire: client WebSocket frames built once (fixed mask
//! key), the upgrade and HTTP requests, and the marker counter that finds deliveries in raw
//! received bytes whatever the framing (WebSocket, SSE, long polling, SignalR, socket.io).

use memchr::memmem;

/// Every payload starts with a 4-byte marker: this prefix and a tag byte that changes from
/// phase to phase (so that late deliveries of one phase never count in the next). Each
/// occurrence in received bytes is one delivery.
pub const MARKER_PREFIX: &[u8] = b"#@!";

/// The marker of phase tag `tag`.
pub fn marker(tag: u8) -> [u8; 4] {
    [MARKER_PREFIX[0], MARKER_PREFIX[1], MARKER_PREFIX[2], tag]
}

/// Which protocol family a server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// SignalR hub (tidings, aiosignalr): handshake, then invocations.
    SignalR,
    /// socket.io v4 (EIO=4) over WebSocket: `40` connect, `42[...]` events.
    Sio,
    /// Plain WebSocket: `b…` broadcasts, anything else is echoed.
    Raw,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "signalr" => Some(Self::SignalR),
            "sio" => Some(Self::Sio),
            "raw" => Some(Self::Raw),
            _ => None,
        }
    }
}

/// SignalR hub protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Json,
    MsgPack,
}

/// What a message asks the server to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Round trip answered once (SignalR Invoke→Completion, socket.io ack, raw echo).
    Echo,
    /// Fire-and-forget answered with a `send` back to the caller (pipelined echo).
    Send,
    /// To every other connection.
    Broadcast,
}

/// `size` bytes of payload text: the marker of `tag`, then filler.
pub fn payload(size: usize, tag: u8) -> String {
    let mut s = String::from_utf8(marker(tag).to_vec()).expect("ascii");
    while s.len() < size.max(4) {
        s.push('x');
    }
    s
}

/// One masked client frame (`opcode` 1 text, 2 binary).
pub fn ws_frame(opcode: u8, data: &[u8]) -> Vec<u8> {
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = Vec::with_capacity(data.len() + 14);
    out.push(0x80 | opcode);
    let len = data.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len < 65536 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&KEY);
    out.extend(data.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    out
}

fn msgpack_str(s: &str, out: &mut Vec<u8>) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n < 256 {
        out.push(0xd9);
        out.push(n as u8);
    } else {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
}

/// The WebSocket frame a client sends for `op` with `payload`.
pub fn message(kind: Kind, proto: Proto, op: Op, payload: &str) -> Vec<u8> {
    match kind {
        Kind::SignalR => {
            let (target, id) = match op {
                Op::Echo => ("Echo", Some("0")),
                Op::Send => ("Send", None),
                Op::Broadcast => ("Broadcast", None),
            };
            match proto {
                Proto::Json => {
                    let id = id
                        .map(|i| format!("\"invocationId\":\"{i}\","))
                        .unwrap_or_default();
                    let text = format!(
                        "{{\"type\":1,{id}\"target\":\"{target}\",\"arguments\":[\"{payload}\"]}}\u{1e}"
                    );
                    ws_frame(1, text.as_bytes())
                }
                Proto::MsgPack => {
                    let mut body = vec![0x96, 0x01, 0x80];
                    match id {
                        Some(i) => msgpack_str(i, &mut body),
                        None => body.push(0xc0),
                    }
                    msgpack_str(target, &mut body);
                    body.push(0x91);
                    msgpack_str(payload, &mut body);
                    body.push(0x90);
                    let mut framed = Vec::new();
                    varint(body.len(), &mut framed);
                    framed.extend_from_slice(&body);
                    ws_frame(2, &framed)
                }
            }
        }
        Kind::Sio => {
            let text = match op {
                Op::Echo => format!("421[\"echo\",\"{payload}\"]"),
                Op::Send => format!("42[\"send\",\"{payload}\"]"),
                Op::Broadcast => format!("42[\"broadcast\",\"{payload}\"]"),
            };
            ws_frame(1, text.as_bytes())
        }
        Kind::Raw => {
            let first = if op == Op::Broadcast { 'b' } else { 'e' };
            ws_frame(1, format!("{first}{payload}").as_bytes())
        }
    }
}

/// The SignalR handshake request frame.
pub fn handshake(proto: Proto) -> Vec<u8> {
    let name = match proto {
        Proto::Json => "json",
        Proto::MsgPack => "messagepack",
    };
    ws_frame(
        1,
        format!("{{\"protocol\":\"{name}\",\"version\":1}}\u{1e}").as_bytes(),
    )
}

/// The HTTP/1.1 upgrade request.
pub fn upgrade_request(host: &str, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Counts occurrences of a [`marker`] in a byte stream read in pieces.
#[derive(Default, Clone, Copy)]
pub struct Counter {
    tail: [u8; 3],
    tail_len: u8,
}

impl Counter {
    pub fn count(&mut self, data: &[u8], marker: &[u8; 4]) -> u64 {
        let finder = memmem::Finder::new(marker);
        let mut n = 0u64;
        let t = self.tail_len as usize;
        if t > 0 {
            // Occurrences straddling the previous piece and this one.
            let mut joint = [0u8; 6];
            joint[..t].copy_from_slice(&self.tail[..t]);
            let k = data.len().min(3);
            joint[t..t + k].copy_from_slice(&data[..k]);
            n += finder.find_iter(&joint[..t + k]).count() as u64;
        }
        n += finder.find_iter(data).count() as u64;
        // Keep the last 3 bytes of everything seen.
        if data.len() >= 3 {
            self.tail.copy_from_slice(&data[data.len() - 3..]);
            self.tail_len = 3;
        } else {
            let mut all = Vec::with_capacity(t + data.len());
            all.extend_from_slice(&self.tail[..t]);
            all.extend_from_slice(data);
            let keep = all.len().min(3);
            self.tail[..keep].copy_from_slice(&all[all.len() - keep..]);
            self.tail_len = keep as u8;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_markers_split_anywhere() {
        let stream: Vec<u8> = [b"ab#@!~cd".as_slice(), b"#@!~", b"x#@!~#@!~"].concat();
        for split in 0..stream.len() {
            for split2 in split..stream.len() {
                let mut c = Counter::default();
                let m = marker(b'~');
                let n = c.count(&stream[..split], &m)
                    + c.count(&stream[split..split2], &m)
                    + c.count(&stream[split2..], &m);
                assert_eq!(n, 4, "{split} {split2}");
            }
        }
    }

    #[test]
    fn frames_have_expected_lengths() {
        assert_eq!(ws_frame(1, b"abc").len(), 2 + 4 + 3);
        assert_eq!(ws_frame(1, &[0; 200]).len(), 4 + 4 + 200);
        let p = payload(20, b'~');
        assert_eq!(p.len(), 20);
        assert!(p.starts_with("#@!~"));
        let m = message(Kind::SignalR, Proto::MsgPack, Op::Echo, &p);
        assert_eq!(m[0], 0x82);
    }
}
