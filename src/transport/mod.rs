//! Transports: HTTP mechanics turned into frames, behind one connection abstraction.
//!
//! Whatever the transport (WebSockets, Server-Sent Events, long polling), the application
//! side of a connection sees the same [`ConnectionIo`]: a bounded stream of inbound [`Frame`]s
//! and an [`Outbound`] buffer. Transports move bytes; they never parse hub messages, so the hub
//! runtime and raw connection handlers (such as an echo endpoint) run unchanged on all three.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::{Notify, mpsc};

pub use crate::protocol::negotiate::TransportType;

pub(crate) mod long_polling;
pub(crate) mod manager;
pub(crate) mod sse;
pub(crate) mod websocket;

/// One delivery: a WebSocket message, a POST body, an SSE event, part of a poll response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// UTF-8 text (a WebSocket text frame).
    Text(Bytes),
    /// Bytes (a WebSocket binary frame).
    Binary(Bytes),
}

impl Frame {
    /// The frame's bytes.
    pub fn data(&self) -> &Bytes {
        match self {
            Self::Text(b) | Self::Binary(b) => b,
        }
    }

    /// The frame's bytes, by value.
    pub fn into_data(self) -> Bytes {
        match self {
            Self::Text(b) | Self::Binary(b) => b,
        }
    }

    fn is_binary(&self) -> bool {
        matches!(self, Self::Binary(_))
    }
}

/// How the transport should end the connection once every queued frame is out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// A normal close (WebSocket 1000).
    Normal,
    /// The peer sent a message larger than allowed (WebSocket 1009).
    MessageTooBig,
    /// The connection failed (WebSocket 1011).
    Error,
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The connection is closing or closed.
    Closed,
    /// The connection's outbound buffer is full: the client does not read fast enough.
    Full,
}

#[derive(Debug)]
struct OutboundState {
    frames: VecDeque<Frame>,
    bytes: usize,
    closed: Option<CloseKind>,
    high_water: usize,
    /// A wake-up of the writer is scheduled and it has not taken the frames yet.
    wake_pending: bool,
}

/// A connection's outbound buffer: frames queued by any task, written by the transport.
///
/// This is a buffer, not a channel of tasks: every frame queued while the transport was busy
/// goes out in one write ([`Outbound::next_batch`] coalesces them), which is what keeps a
/// fan-out to thousands of connections cheap. It is bounded in bytes; a push that would exceed
/// the bound fails with [`SendError::Full`] instead of waiting, so one slow reader can never
/// stall a broadcast to everyone else.
///
/// Inside a tokio runtime, the writer is woken at the end of the current round of work
/// rather than at once (see [`flush`]): the frames of a burst of broadcasts then reach each
/// connection in one write, as uWebSockets' corking does.
#[derive(Debug)]
pub struct Outbound {
    state: Mutex<OutboundState>,
    notify: Arc<Notify>,
    /// Signalled whenever the transport takes frames out (room for waiting senders).
    space: Notify,
    limit: usize,
}

/// What [`Outbound::next_batch`] hands the transport.
#[derive(Debug)]
pub enum Batch {
    /// Frames to write, in order; consecutive frames of one kind are already merged.
    Frames(Vec<Frame>),
    /// Nothing more will come: close the transport this way.
    Closed(CloseKind),
}

impl Outbound {
    /// A buffer holding at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(OutboundState {
                frames: VecDeque::new(),
                bytes: 0,
                closed: None,
                high_water: 0,
                wake_pending: false,
            }),
            notify: Arc::new(Notify::new()),
            space: Notify::new(),
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboundState> {
        // A panic while holding this lock cannot leave the queue inconsistent (every update
        // is a single push or drain), so a poisoned lock is still safe to use.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues one frame.
    pub fn push(&self, frame: Frame) -> Result<(), SendError> {
        let wake = {
            let mut st = self.lock();
            if st.closed.is_some() {
                return Err(SendError::Closed);
            }
            let len = frame.data().len();
            if st.bytes + len > self.limit && !st.frames.is_empty() {
                return Err(SendError::Full);
            }
            st.bytes += len;
            st.high_water = st.high_water.max(st.bytes);
            st.frames.push_back(frame);
            !std::mem::replace(&mut st.wake_pending, true)
        };
        if wake {
            flush::defer(&self.notify);
        }
        Ok(())
    }

    /// Waits until `len` more bytes fit (or the buffer is empty), for senders that should
    /// slow down with their client rather than overflow it (ASP.NET's pipe back-pressure).
    pub async fn wait_for_space(&self, len: usize) -> Result<(), SendError> {
        loop {
            let notified = self.space.notified();
            {
                let st = self.lock();
                if st.closed.is_some() {
                    return Err(SendError::Closed);
                }
                if st.frames.is_empty() || st.bytes + len <= self.limit {
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// Queues one frame even past the byte limit (Close messages, handshake answers).
    pub fn push_unbounded(&self, frame: Frame) -> Result<(), SendError> {
        let wake = {
            let mut st = self.lock();
            if st.closed.is_some() {
                return Err(SendError::Closed);
            }
            st.bytes += frame.data().len();
            st.frames.push_back(frame);
            !std::mem::replace(&mut st.wake_pending, true)
        };
        if wake {
            flush::defer(&self.notify);
        }
        Ok(())
    }

    /// Marks the buffer closed: queued frames still go out, then the transport closes.
    /// The first close wins.
    pub fn close(&self, kind: CloseKind) {
        {
            let mut st = self.lock();
            if st.closed.is_none() {
                st.closed = Some(kind);
            }
        }
        self.notify.notify_one();
    }

    /// Whether [`Outbound::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The most bytes ever queued at once.
    pub fn high_water_mark(&self) -> usize {
        self.lock().high_water
    }

    /// Takes every queued frame at once, merged, or `None` when there is none.
    pub fn try_batch(&self, max_bytes: usize) -> Option<Batch> {
        let mut st = self.lock();
        st.wake_pending = false;
        if st.frames.is_empty() {
            return st.closed.map(Batch::Closed);
        }
        let mut out: Vec<Frame> = Vec::new();
        let mut taken = 0;
        let mut merging: Option<(bool, BytesMut)> = None;
        while let Some(front) = st.frames.front() {
            let len = front.data().len();
            if taken > 0 && taken + len > max_bytes {
                break;
            }
            let frame = st.frames.pop_front().expect("front exists");
            taken += len;
            let binary = frame.is_binary();
            match &mut merging {
                Some((b, buf)) if *b == binary => buf.extend_from_slice(frame.data()),
                _ => {
                    if let Some((b, buf)) = merging.take() {
                        out.push(make_frame(b, buf.freeze()));
                    }
                    // Most batches are a single frame: keep its Bytes without copying.
                    if st.frames.front().is_none_or(|f| f.is_binary() != binary) {
                        out.push(frame);
                    } else {
                        let mut buf = BytesMut::with_capacity(len * 2);
                        buf.extend_from_slice(frame.data());
                        merging = Some((binary, buf));
                    }
                }
            }
        }
        if let Some((b, buf)) = merging {
            out.push(make_frame(b, buf.freeze()));
        }
        st.bytes -= taken;
        drop(st);
        self.space.notify_waiters();
        Some(Batch::Frames(out))
    }

    /// Takes the queued frames as they are (not merged), up to `max_bytes` (at least one
    /// frame), or `None` when there is none: for a transport that frames them itself.
    pub fn try_batch_unmerged(&self, max_bytes: usize) -> Option<Batch> {
        let mut st = self.lock();
        st.wake_pending = false;
        if st.frames.is_empty() {
            return st.closed.map(Batch::Closed);
        }
        let mut taken = 0;
        let mut n = 0;
        for f in &st.frames {
            let len = f.data().len();
            if n > 0 && taken + len > max_bytes {
                break;
            }
            taken += len;
            n += 1;
        }
        let out: Vec<Frame> = if n == st.frames.len() {
            // Hand the whole queue over; the buffer starts empty again (no capacity kept).
            std::mem::take(&mut st.frames).into()
        } else {
            st.frames.drain(..n).collect()
        };
        st.bytes -= taken;
        drop(st);
        self.space.notify_waiters();
        Some(Batch::Frames(out))
    }

    /// [`Outbound::next_batch`] without merging (see [`Outbound::try_batch_unmerged`]).
    pub async fn next_batch_unmerged(&self, max_bytes: usize) -> Batch {
        loop {
            let notified = self.notify.notified();
            if let Some(batch) = self.try_batch_unmerged(max_bytes) {
                return batch;
            }
            notified.await;
        }
    }

    /// Waits for the next batch of frames (or the close).
    pub async fn next_batch(&self, max_bytes: usize) -> Batch {
        loop {
            let notified = self.notify.notified();
            if let Some(batch) = self.try_batch(max_bytes) {
                return batch;
            }
            notified.await;
        }
    }

    /// Drops every queued frame and queues `frames` instead, atomically (stateful reconnect:
    /// what the old socket never wrote is replayed from the sequence buffer).
    pub fn replace_queue(&self, frames: impl IntoIterator<Item = Frame>) {
        {
            let mut st = self.lock();
            st.frames.clear();
            st.bytes = 0;
            for f in frames {
                st.bytes += f.data().len();
                st.frames.push_back(f);
            }
        }
        self.notify.notify_one();
    }
}

/// Wake-ups deferred to the end of the current round of work.
///
/// A push wakes the writer of its connection through [`defer`]: inside a tokio runtime the
/// wake-up is queued on this thread's list, and one flusher task (spawned when the list goes
/// from empty to non-empty) yields once, which tokio defers until the tasks that are runnable
/// now have run and the IO driver has been polled, then wakes every queued writer. A burst of
/// broadcasts handled in one round (a publisher's pipelined invocations) then leaves each
/// connection with all of its frames before its writer runs: one write per connection instead
/// of one per message. Outside a runtime the wake-up is immediate.
mod flush {
    use std::cell::RefCell;
    use std::sync::{Arc, Mutex};

    use tokio::sync::Notify;

    #[derive(Default)]
    struct Pending {
        wakers: Vec<Arc<Notify>>,
        armed: bool,
    }

    type List = Arc<Mutex<Pending>>;

    thread_local! {
        static LOCAL: RefCell<Option<List>> = const { RefCell::new(None) };
    }

    fn lock(list: &List) -> std::sync::MutexGuard<'_, Pending> {
        list.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes `notify` once the work runnable now has run.
    pub(super) fn defer(notify: &Arc<Notify>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            notify.notify_one();
            return;
        };
        let queued = LOCAL.try_with(|local| {
            let list = local.borrow_mut().get_or_insert_with(List::default).clone();
            let arm = {
                let mut p = lock(&list);
                p.wakers.push(notify.clone());
                !std::mem::replace(&mut p.armed, true)
            };
            if arm {
                let flusher = Flusher(list);
                handle.spawn(async move {
                    tokio::task::yield_now().await;
                    drop(flusher);
                });
            }
        });
        if queued.is_err() {
            notify.notify_one();
        }
    }

    /// Wakes the list when dropped: after its yield, or if the runtime drops the task unrun.
    struct Flusher(List);

    impl Drop for Flusher {
        fn drop(&mut self) {
            let wakers = {
                let mut p = lock(&self.0);
                p.armed = false;
                std::mem::take(&mut p.wakers)
            };
            for w in wakers {
                w.notify_one();
            }
        }
    }
}

fn make_frame(binary: bool, data: Bytes) -> Frame {
    if binary {
        Frame::Binary(data)
    } else {
        Frame::Text(data)
    }
}

/// What the application learns about a connection's HTTP side.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// The request's URI (path and query) as the server received it.
    pub uri: http::Uri,
    /// The request headers (cookies included) of the request that opened the transport.
    pub headers: http::HeaderMap,
}

impl RequestInfo {
    /// The URI and headers of a request, copied into allocations of their own.
    ///
    /// hyper's parsed URI and header values are slices of its connection read buffer (8 KiB
    /// or more); a connection that kept them would keep that whole buffer alive for its
    /// lifetime (16 KB per idle WebSocket, measured), so the copies are made here, once.
    pub fn detached(uri: &http::Uri, headers: &http::HeaderMap) -> Self {
        let text = match (uri.scheme(), uri.path_and_query()) {
            (None, Some(pq)) => pq.as_str().to_owned(),
            _ => uri.to_string(),
        };
        let uri = http::Uri::try_from(text).unwrap_or_else(|_| uri.clone());
        let mut copy = http::HeaderMap::with_capacity(headers.len());
        for (name, value) in headers {
            let mut v =
                http::HeaderValue::from_maybe_shared(Bytes::copy_from_slice(value.as_bytes()))
                    .unwrap_or_else(|_| value.clone());
            v.set_sensitive(value.is_sensitive());
            copy.append(name.clone(), v);
        }
        Self { uri, headers: copy }
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A query parameter (case-insensitive name, percent-decoded).
    pub fn query(&self, name: &str) -> Option<String> {
        let q = self.uri.query()?;
        crate::protocol::negotiate::query_param(q, name).map(|c| c.into_owned())
    }

    /// A cookie's value from the `Cookie` headers.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    }
}

/// Who the connection is, once authenticated (see the `auth` hook of the service).
#[derive(Debug, Clone, Default)]
pub struct Principal {
    /// The user id (`User`/`Users` targets), if any.
    pub user_id: Option<String>,
    /// Claims as (type, value) pairs.
    pub claims: Vec<(String, String)>,
}

impl Principal {
    /// The first value of claim `kind`.
    pub fn claim(&self, kind: &str) -> Option<&str> {
        self.claims
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, v)| v.as_str())
    }
}

/// Facts about one connection that do not change while it lives.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// The public connection id.
    pub connection_id: String,
    /// The transport carrying it.
    pub transport: TransportType,
    /// The HTTP request that opened the transport.
    pub request: RequestInfo,
    /// Whether negotiate granted stateful reconnect.
    pub stateful_reconnect: bool,
    /// The authenticated principal, when the path authenticates.
    pub principal: Option<Principal>,
}

/// The application side of one connection, whatever its transport.
#[derive(Debug)]
pub struct ConnectionIo {
    /// Data from the client, in order. `None` once the client is gone for good.
    pub inbound: mpsc::Receiver<Frame>,
    /// Data to the client.
    pub outbound: Arc<Outbound>,
    /// Facts about the connection.
    pub info: Arc<ConnectionInfo>,
    /// Signalled each time the transport is replaced by a stateful reconnect.
    pub reconnected: mpsc::Receiver<()>,
}

/// A boxed future, as handlers return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Serves connections on a path: the hub runtime is one, a raw echo endpoint another
/// (ASP.NET's `ConnectionHandler`).
pub trait ConnectionHandler: Send + Sync + 'static {
    /// Runs one connection until it ends; the connection closes when the future completes.
    fn on_connected(&self, io: ConnectionIo) -> BoxFuture<()>;

    /// Whether new connections are accepted; false while draining (negotiate answers 503).
    fn accepting(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_runs_of_one_kind() {
        let out = Outbound::new(1 << 20);
        out.push(Frame::Text(Bytes::from_static(b"a"))).unwrap();
        out.push(Frame::Text(Bytes::from_static(b"b"))).unwrap();
        out.push(Frame::Binary(Bytes::from_static(b"c"))).unwrap();
        out.push(Frame::Text(Bytes::from_static(b"d"))).unwrap();
        let Some(Batch::Frames(frames)) = out.try_batch(usize::MAX) else {
            panic!("expected frames")
        };
        assert_eq!(
            frames,
            vec![
                Frame::Text(Bytes::from_static(b"ab")),
                Frame::Binary(Bytes::from_static(b"c")),
                Frame::Text(Bytes::from_static(b"d")),
            ]
        );
        assert_eq!(out.queued_bytes(), 0);
    }

    #[test]
    fn full_buffer_refuses_instead_of_waiting() {
        let out = Outbound::new(4);
        out.push(Frame::Binary(Bytes::from_static(b"123"))).unwrap();
        assert_eq!(
            out.push(Frame::Binary(Bytes::from_static(b"45"))),
            Err(SendError::Full)
        );
        // A single oversized frame on an empty buffer still goes (server messages have no
        // size limit); the bound is about backlog, not message size.
        let big = Outbound::new(4);
        big.push(Frame::Binary(Bytes::from(vec![0; 10]))).unwrap();
    }

    #[test]
    fn close_after_frames_drains_then_reports_close() {
        let out = Outbound::new(100);
        out.push(Frame::Text(Bytes::from_static(b"x"))).unwrap();
        out.close(CloseKind::MessageTooBig);
        assert_eq!(
            out.push(Frame::Text(Bytes::from_static(b"y"))),
            Err(SendError::Closed)
        );
        assert!(matches!(out.try_batch(100), Some(Batch::Frames(_))));
        assert!(matches!(
            out.try_batch(100),
            Some(Batch::Closed(CloseKind::MessageTooBig))
        ));
    }

    #[test]
    fn batch_respects_byte_budget() {
        let out = Outbound::new(1 << 20);
        for _ in 0..10 {
            out.push(Frame::Text(Bytes::from(vec![b'a'; 10]))).unwrap();
        }
        let Some(Batch::Frames(frames)) = out.try_batch(35) else {
            panic!()
        };
        assert_eq!(frames[0].data().len(), 30);
        assert_eq!(out.queued_bytes(), 70);
    }

    #[test]
    fn unmerged_batches_keep_frames_and_respect_the_budget() {
        let out = Outbound::new(1 << 20);
        for b in [&b"ab"[..], b"cd", b"ef"] {
            out.push(Frame::Text(Bytes::copy_from_slice(b))).unwrap();
        }
        let Some(Batch::Frames(first)) = out.try_batch_unmerged(4) else {
            panic!()
        };
        assert_eq!(first.len(), 2);
        assert_eq!(out.queued_bytes(), 2);
        let Some(Batch::Frames(rest)) = out.try_batch_unmerged(1) else {
            panic!()
        };
        assert_eq!(rest, vec![Frame::Text(Bytes::from_static(b"ef"))]);
        assert!(out.try_batch_unmerged(1).is_none());
        out.close(CloseKind::Normal);
        assert!(matches!(
            out.try_batch_unmerged(1),
            Some(Batch::Closed(CloseKind::Normal))
        ));
    }

    #[test]
    fn detached_request_info_keeps_every_value() {
        let mut headers = http::HeaderMap::new();
        headers.append("x-a", "1".parse().unwrap());
        headers.append("x-a", "2".parse().unwrap());
        headers.insert(http::header::COOKIE, "c=3".parse().unwrap());
        let uri: http::Uri = "/hub?id=abc&x=%20y".parse().unwrap();
        let info = RequestInfo::detached(&uri, &headers);
        assert_eq!(info.uri, uri);
        assert_eq!(info.headers, headers);
        assert_eq!(info.query("x").as_deref(), Some(" y"));
        assert_eq!(info.cookie("c").as_deref(), Some("3"));
    }

    #[test]
    fn request_info_reads_cookies_and_query() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            "a=1; testCookie=testValue".parse().unwrap(),
        );
        let info = RequestInfo {
            uri: "/hub?numRedirects=3&x=%20y".parse().unwrap(),
            headers,
        };
        assert_eq!(info.cookie("testCookie").as_deref(), Some("testValue"));
        assert_eq!(info.cookie("missing"), None);
        assert_eq!(info.query("NUMREDIRECTS").as_deref(), Some("3"));
        assert_eq!(info.query("x").as_deref(), Some(" y"));
    }
}
