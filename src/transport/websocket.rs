//! WebSockets: the upgrade handshake (hyper's `OnUpgrade`) and one task per socket that reads
//! frames into the connection and writes its outbound batches.
//!
//! The socket speaks RFC 6455 through a small codec of its own rather than a general
//! WebSocket library, for two costs that matter at tens of thousands of connections:
//! - **no read buffer while idle**: each read goes through a buffer on the stack and only the
//!   bytes of an incomplete frame are kept per connection (ASP.NET's "zero-byte read" idea);
//! - **one copy and one write per batch**: every frame queued since the last write is framed
//!   straight into one output buffer (consecutive frames of one kind as one WebSocket
//!   message, which SignalR's self-delimiting framing allows) and written at once.

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::manager::{ConnEntry, lock};
use super::{Batch, CloseKind, Frame};

/// Bytes framed into one write at most.
const MAX_BATCH: usize = 64 * 1024;

/// The stack buffer each read goes through.
const READ_CHUNK: usize = 16 * 1024;

/// Whether `headers` ask for a WebSocket upgrade.
pub(crate) fn is_upgrade(headers: &http::HeaderMap) -> bool {
    let has = |name: http::header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    has(http::header::UPGRADE, "websocket") && has(http::header::CONNECTION, "upgrade")
}

/// The `Sec-WebSocket-Accept` value for a valid upgrade request, or why it is not one.
pub(crate) fn accept_key(headers: &http::HeaderMap) -> Result<String, &'static str> {
    if headers
        .get(http::header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err("Unsupported WebSocket version");
    }
    let key = headers
        .get(http::header::SEC_WEBSOCKET_KEY)
        .ok_or("Missing Sec-WebSocket-Key")?;
    Ok(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Close codes this side sends.
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_PROTOCOL: u16 = 1002;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_ERROR: u16 = 1011;

/// Appends a server (unmasked) frame header for a payload of `len` bytes.
fn put_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Frames a batch: each run of consecutive frames of one kind becomes one message. A text run
/// that is not UTF-8 goes out as binary rather than as an invalid text frame.
fn encode_batch(frames: &[Frame], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < frames.len() {
        let binary = frames[i].is_binary();
        let mut j = i;
        let mut len = 0;
        while j < frames.len() && frames[j].is_binary() == binary {
            len += frames[j].data().len();
            j += 1;
        }
        let run = &frames[i..j];
        let opcode = if binary || !run_is_utf8(run) {
            OP_BINARY
        } else {
            OP_TEXT
        };
        put_header(out, opcode, len);
        for f in run {
            out.extend_from_slice(f.data());
        }
        i = j;
    }
}

fn run_is_utf8(run: &[Frame]) -> bool {
    // Runs of whole SignalR JSON messages: each frame is valid on its own when the run is.
    run.iter().all(|f| std::str::from_utf8(f.data()).is_ok())
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

fn control_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 2);
    put_header(&mut out, opcode, payload.len());
    out.extend_from_slice(payload);
    out
}

fn close_frame(kind: CloseKind) -> Vec<u8> {
    let payload = match kind {
        CloseKind::Normal => close_payload(CLOSE_NORMAL, ""),
        CloseKind::MessageTooBig => close_payload(CLOSE_TOO_BIG, "message too big"),
        CloseKind::Error => close_payload(CLOSE_ERROR, ""),
    };
    control_frame(OP_CLOSE, &payload)
}

/// XORs `data` with the 4-byte mask `key` (the frame's payload starts at mask offset 0).
fn unmask(data: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// What the reader found in the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
enum Incoming {
    /// A whole text or binary message.
    Data(Frame),
    Ping(Bytes),
    Pong,
    /// The client's Close, with its code (if any).
    Close(Option<u16>),
}

/// Why the client's bytes cannot be read on.
#[derive(Debug, PartialEq, Eq)]
enum ReadError {
    /// A message larger than the limit (close 1009).
    TooBig,
    /// Not a valid WebSocket stream from a client (close 1002).
    Protocol,
}

/// The receiving half of the codec: bytes of incomplete frames, and a fragmented message.
/// Both are empty (no allocation) between messages.
struct FrameReader {
    buf: BytesMut,
    fragments: Option<(bool, BytesMut)>,
    max_message: usize,
}

impl FrameReader {
    fn new(max_message: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            fragments: None,
            max_message,
        }
    }

    /// Reads what the socket has into the buffer; `Ok(0)` is the end of the stream.
    fn poll_fill<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        let mut chunk = [const { MaybeUninit::<u8>::uninit() }; READ_CHUNK];
        let mut rb = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(io).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        self.buf.extend_from_slice(rb.filled());
        Poll::Ready(Ok(n))
    }

    /// The next whole message or control frame, if the buffer holds one.
    fn next(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            let Some(frame) = self.next_frame()? else {
                if self.buf.is_empty() {
                    // Idle: give the allocation back.
                    self.buf = BytesMut::new();
                }
                return Ok(None);
            };
            let (fin, opcode, payload) = frame;
            match opcode {
                OP_TEXT | OP_BINARY => {
                    if self.fragments.is_some() {
                        return Err(ReadError::Protocol);
                    }
                    let binary = opcode == OP_BINARY;
                    if fin {
                        return Self::message(binary, payload.freeze()).map(Some);
                    }
                    self.fragments = Some((binary, payload));
                }
                OP_CONTINUATION => {
                    let Some((binary, mut data)) = self.fragments.take() else {
                        return Err(ReadError::Protocol);
                    };
                    if data.len() + payload.len() > self.max_message {
                        return Err(ReadError::TooBig);
                    }
                    data.extend_from_slice(&payload);
                    if fin {
                        return Self::message(binary, data.freeze()).map(Some);
                    }
                    self.fragments = Some((binary, data));
                }
                OP_PING => return Ok(Some(Incoming::Ping(payload.freeze()))),
                OP_PONG => return Ok(Some(Incoming::Pong)),
                OP_CLOSE => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return Ok(Some(Incoming::Close(code)));
                }
                _ => return Err(ReadError::Protocol),
            }
        }
    }

    fn message(binary: bool, data: Bytes) -> Result<Incoming, ReadError> {
        if binary {
            Ok(Incoming::Data(Frame::Binary(data)))
        } else if std::str::from_utf8(&data).is_ok() {
            Ok(Incoming::Data(Frame::Text(data)))
        } else {
            Err(ReadError::Protocol)
        }
    }

    /// One whole frame off the buffer: (fin, opcode, unmasked payload).
    fn next_frame(&mut self) -> Result<Option<(bool, u8, BytesMut)>, ReadError> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(ReadError::Protocol); // no extension was negotiated
        }
        let opcode = b[0] & 0x0f;
        if b[1] & 0x80 == 0 {
            return Err(ReadError::Protocol); // client frames must be masked
        }
        let (len, mut at) = match b[1] & 0x7f {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([b[2], b[3]]) as u64, 4)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            n => (n as u64, 2),
        };
        if opcode >= 0x8 && (!fin || len > 125) {
            return Err(ReadError::Protocol);
        }
        if len > self.max_message as u64 {
            return Err(ReadError::TooBig);
        }
        let len = len as usize;
        if b.len() < at + 4 + len {
            // Reserve for the rest of this frame only (never more than the message limit).
            self.buf.reserve(at + 4 + len - b.len());
            return Ok(None);
        }
        let key = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        at += 4;
        self.buf.advance(at);
        let mut payload = self.buf.split_to(len);
        unmask(&mut payload, key);
        Ok(Some((fin, opcode, payload)))
    }
}

/// How a socket's life ended.
enum End {
    /// The application closed the connection (close frame sent).
    Application,
    /// The client closed the socket cleanly.
    ClientClosed,
    /// The socket broke (reset, timeout, protocol error).
    Dropped,
    /// A stateful reconnect replaced this socket.
    Replaced,
}

enum Event {
    Replaced,
    Batch(Batch),
    Read(std::io::Result<usize>),
}

async fn write_within<W: AsyncWrite + Unpin>(io: &mut W, data: &[u8], limit: Duration) -> bool {
    let write = async {
        io.write_all(data).await?;
        io.flush().await
    };
    matches!(tokio::time::timeout(limit, write).await, Ok(Ok(())))
}

/// Serves one upgraded socket for `entry` until either side ends it.
pub(crate) async fn serve<IO>(
    io: IO,
    entry: Arc<ConnEntry>,
    max_message: usize,
    send_timeout: Duration,
) where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut io = TokioIo::new(io);
    let mut reader = FrameReader::new(max_message);
    let cancel = lock(&entry.socket_cancel).clone();
    let inbound = entry.inbound();
    let outbound = entry.outbound.clone();
    let end = 'conn: loop {
        let event = tokio::select! {
            biased;
            () = cancel.cancelled() => Event::Replaced,
            batch = outbound.next_batch_unmerged(MAX_BATCH) => Event::Batch(batch),
            read = poll_fn(|cx| reader.poll_fill(&mut io, cx)) => Event::Read(read),
        };
        match event {
            Event::Replaced => break End::Replaced,
            Event::Batch(Batch::Frames(frames)) => {
                let mut out =
                    Vec::with_capacity(frames.iter().map(|f| f.data().len() + 10).sum::<usize>());
                encode_batch(&frames, &mut out);
                drop(frames);
                if !write_within(&mut io, &out, send_timeout).await {
                    tracing::debug!(connection_id = %entry.id, "websocket write failed or timed out");
                    break End::Dropped;
                }
            }
            Event::Batch(Batch::Closed(kind)) => {
                let _ = write_within(&mut io, &close_frame(kind), Duration::from_secs(5)).await;
                break End::Application;
            }
            Event::Read(Err(_)) | Event::Read(Ok(0)) => break End::Dropped,
            Event::Read(Ok(_)) => loop {
                match reader.next() {
                    Ok(None) => break,
                    Ok(Some(Incoming::Data(frame))) => {
                        let Some(tx) = &inbound else {
                            break 'conn End::ClientClosed;
                        };
                        // Waiting here is the back-pressure: a client that sends faster than
                        // its messages are processed stops being read.
                        if tx.send(frame).await.is_err() {
                            break 'conn End::ClientClosed;
                        }
                    }
                    Ok(Some(Incoming::Ping(payload))) => {
                        let pong = control_frame(OP_PONG, &payload);
                        if !write_within(&mut io, &pong, send_timeout).await {
                            break 'conn End::Dropped;
                        }
                    }
                    Ok(Some(Incoming::Pong)) => {}
                    Ok(Some(Incoming::Close(code))) => {
                        // Answer with the same code, as RFC 6455 §5.5.1 asks.
                        let reply = match code {
                            Some(c) => close_payload(c, ""),
                            None => Vec::new(),
                        };
                        let _ = write_within(
                            &mut io,
                            &control_frame(OP_CLOSE, &reply),
                            Duration::from_secs(5),
                        )
                        .await;
                        break 'conn End::ClientClosed;
                    }
                    Err(ReadError::TooBig) => {
                        let _ = write_within(
                            &mut io,
                            &close_frame(CloseKind::MessageTooBig),
                            Duration::from_secs(5),
                        )
                        .await;
                        break 'conn End::ClientClosed;
                    }
                    Err(ReadError::Protocol) => {
                        let _ = write_within(
                            &mut io,
                            &control_frame(OP_CLOSE, &close_payload(CLOSE_PROTOCOL, "")),
                            Duration::from_secs(1),
                        )
                        .await;
                        break 'conn End::Dropped;
                    }
                }
            },
        }
    };
    drop(inbound);
    match end {
        End::Replaced => {}
        End::Dropped if entry.stateful && !outbound.is_closed() => {
            // Keep the logical connection for a stateful reconnect; the reaper disposes of
            // it after the disconnect timeout if the client never comes back.
            entry.set_inactive();
        }
        End::Application | End::ClientClosed | End::Dropped => {
            entry.set_inactive();
            entry.close_inbound();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let key = [1, 2, 3, 4];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    fn reader_with(bytes: &[u8]) -> FrameReader {
        let mut r = FrameReader::new(1024);
        r.buf.extend_from_slice(bytes);
        r
    }

    #[test]
    fn reads_text_and_binary_split_anywhere() {
        let stream = [
            client_frame(true, OP_TEXT, b"{\"type\":6}\x1e"),
            client_frame(true, OP_BINARY, &[1, 2, 3]),
            client_frame(true, OP_TEXT, &[b'a'; 300]),
        ]
        .concat();
        for split in 0..stream.len() {
            let mut r = FrameReader::new(1024);
            let mut got = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                r.buf.extend_from_slice(part);
                while let Some(m) = r.next().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(
                got,
                vec![
                    Incoming::Data(Frame::Text(Bytes::from_static(b"{\"type\":6}\x1e"))),
                    Incoming::Data(Frame::Binary(Bytes::from_static(&[1, 2, 3]))),
                    Incoming::Data(Frame::Text(Bytes::from(vec![b'a'; 300]))),
                ],
                "split at {split}"
            );
            assert!(r.buf.is_empty());
        }
    }

    #[test]
    fn joins_fragments_and_answers_control_frames_between_them() {
        let stream = [
            client_frame(false, OP_TEXT, b"ab"),
            client_frame(true, OP_PING, b"p"),
            client_frame(true, OP_CONTINUATION, b"cd"),
        ]
        .concat();
        let mut r = reader_with(&stream);
        assert_eq!(
            r.next().unwrap(),
            Some(Incoming::Ping(Bytes::from_static(b"p")))
        );
        assert_eq!(
            r.next().unwrap(),
            Some(Incoming::Data(Frame::Text(Bytes::from_static(b"abcd"))))
        );
        assert_eq!(r.next().unwrap(), None);
    }

    #[test]
    fn refuses_oversized_unmasked_and_invalid_frames() {
        let mut r = reader_with(&client_frame(true, OP_BINARY, &[0; 2000]));
        assert_eq!(r.next(), Err(ReadError::TooBig));
        // Too big is known from the header alone, before the payload arrives.
        let mut r = reader_with(&client_frame(true, OP_BINARY, &[0; 2000])[..8]);
        assert_eq!(r.next(), Err(ReadError::TooBig));
        let fragments = [
            client_frame(false, OP_BINARY, &[0; 600]),
            client_frame(true, OP_CONTINUATION, &[0; 600]),
        ]
        .concat();
        assert_eq!(reader_with(&fragments).next(), Err(ReadError::TooBig));
        let mut unmasked = client_frame(true, OP_TEXT, b"x");
        unmasked[1] &= 0x7f;
        assert_eq!(reader_with(&unmasked).next(), Err(ReadError::Protocol));
        assert_eq!(
            reader_with(&client_frame(true, OP_TEXT, &[0xff, 0xfe])).next(),
            Err(ReadError::Protocol)
        );
        assert_eq!(
            reader_with(&client_frame(true, OP_CONTINUATION, b"x")).next(),
            Err(ReadError::Protocol)
        );
        assert_eq!(
            reader_with(&client_frame(false, OP_PING, b"x")).next(),
            Err(ReadError::Protocol)
        );
        assert_eq!(
            reader_with(&client_frame(true, 0x3, b"x")).next(),
            Err(ReadError::Protocol)
        );
        assert_eq!(
            reader_with(&client_frame(true, OP_CLOSE, &[0x03, 0xe8])).next(),
            Ok(Some(Incoming::Close(Some(1000))))
        );
    }

    #[test]
    fn encodes_runs_of_one_kind_as_one_message() {
        let frames = vec![
            Frame::Text(Bytes::from_static(b"a\x1e")),
            Frame::Text(Bytes::from_static(b"b\x1e")),
            Frame::Binary(Bytes::from_static(&[9])),
            Frame::Text(Bytes::from_static(&[0xff])),
        ];
        let mut out = Vec::new();
        encode_batch(&frames, &mut out);
        assert_eq!(
            out,
            [
                &[0x81, 4][..],
                b"a\x1eb\x1e",
                &[0x82, 1, 9],
                // Not UTF-8: sent as binary rather than as an invalid text frame.
                &[0x82, 1, 0xff],
            ]
            .concat()
        );
        let mut big = Vec::new();
        encode_batch(&[Frame::Binary(Bytes::from(vec![0; 70_000]))], &mut big);
        assert_eq!(&big[..2], &[0x82, 127]);
        assert_eq!(big.len(), 10 + 70_000);
    }

    #[test]
    fn unmask_matches_bytewise_xor() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let data: Vec<u8> = (0..37u8).collect();
        let mut fast = data.clone();
        unmask(&mut fast, key);
        let slow: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(fast, slow);
    }
}
