//! A hardened HTTP/1.1 server loop for any tower `Service`: what `axum::serve` does, plus the
//! defences a public SignalR endpoint needs.
//!
//! `axum::serve` (0.8) installs no timer in hyper, which silently disables hyper's header-read
//! timeout: a client that opens a socket and never finishes its request headers holds it (and a
//! file descriptor) forever. [`serve`] builds the accept loop on hyper's HTTP/1.1 connection
//! builder with a timer, so that:
//!
//! - a connection that does not deliver complete request headers within
//!   [`ServerOptions::header_read_timeout`] is closed (silent sockets, one-byte dribblers, and
//!   idle keep-alive connections alike);
//! - a request body that has not arrived whole within [`ServerOptions::body_read_timeout`]
//!   fails, so a stalled upload cannot pin a request (and a connection) forever;
//! - requests have at most [`ServerOptions::max_headers`] headers and the read buffer is
//!   capped at [`ServerOptions::max_buf_size`] (hyper answers `431` beyond);
//! - `TCP_NODELAY` is set on every accepted socket (small hub messages go out at once);
//! - HTTP/1.1 upgrades (WebSockets) work;
//! - [`bind`] asks for a listen backlog of 4 096 instead of tokio's 128, so a reconnect storm
//!   does not overflow the kernel's accept queue;
//! - accept errors such as `EMFILE` back off instead of spinning or ending the server;
//! - [`ServerOptions::max_connections`] optionally bounds concurrent HTTP connections (further
//!   clients wait in the listen backlog);
//! - on shutdown the listener closes, idle connections close, in-flight requests get
//!   [`ServerOptions::graceful_shutdown_timeout`] to finish, and whatever remains is dropped.
//!
//! Upgraded connections (WebSockets) leave hyper once the upgrade completes; they are ended by
//! the application (for a hub: `HubContext::close_all`), not by this loop.
//!
//! ```no_run
//! # async fn run(service: tidings::HubService) -> std::io::Result<()> {
//! let listener = tidings::server::bind("127.0.0.1:0").await?;
//! let shutdown = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! tidings::server::serve(listener, service, shutdown).await
//! # }
//! ```

use std::error::Error as StdError;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A boxed error, as request bodies and services report them.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Settings of [`serve_with`]. [`Default`] gives the hardened defaults documented per field.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerOptions {
    /// How long a connection may take to deliver a request's complete headers, counted from
    /// the connection's start or from the end of the previous response (so it also closes
    /// idle keep-alive connections). Defaults to 10 s (Kestrel uses 30 s).
    pub header_read_timeout: Duration,
    /// How long a request body may take to arrive whole, counted from the first read of it;
    /// `None` = no limit. Defaults to 30 s.
    pub body_read_timeout: Option<Duration>,
    /// The most headers one request may carry; more get `431`. Defaults to 100.
    pub max_headers: usize,
    /// The largest read buffer of one connection, which bounds the request line plus headers.
    /// Defaults to 64 KiB (hyper's minimum is 8 KiB).
    pub max_buf_size: usize,
    /// Whether to set `TCP_NODELAY` on accepted sockets. Defaults to true.
    pub tcp_nodelay: bool,
    /// Concurrent HTTP connections served at most; `None` = no limit. Upgraded WebSockets stop
    /// counting once the upgrade completes. Defaults to `None`.
    pub max_connections: Option<usize>,
    /// How long in-flight requests may take to finish after shutdown is signalled, before their
    /// connections are dropped. Defaults to 10 s.
    pub graceful_shutdown_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Some(Duration::from_secs(30)),
            max_headers: 100,
            max_buf_size: 64 * 1024,
            tcp_nodelay: true,
            max_connections: None,
            graceful_shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl ServerOptions {
    /// Sets [`ServerOptions::header_read_timeout`].
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Sets [`ServerOptions::body_read_timeout`].
    pub fn body_read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.body_read_timeout = timeout;
        self
    }

    /// Sets [`ServerOptions::max_headers`].
    pub fn max_headers(mut self, max: usize) -> Self {
        self.max_headers = max;
        self
    }

    /// Sets [`ServerOptions::max_buf_size`] (at least 8 KiB).
    pub fn max_buf_size(mut self, max: usize) -> Self {
        self.max_buf_size = max.max(8 * 1024);
        self
    }

    /// Sets [`ServerOptions::tcp_nodelay`].
    pub fn tcp_nodelay(mut self, on: bool) -> Self {
        self.tcp_nodelay = on;
        self
    }

    /// Sets [`ServerOptions::max_connections`].
    pub fn max_connections(mut self, max: Option<usize>) -> Self {
        self.max_connections = max;
        self
    }

    /// Sets [`ServerOptions::graceful_shutdown_timeout`].
    pub fn graceful_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.graceful_shutdown_timeout = timeout;
        self
    }
}

/// The request body handed to the service: hyper's body with the body-read deadline applied.
#[derive(Debug)]
pub struct RequestBody {
    inner: Incoming,
    timeout: Option<Duration>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: bool,
}

/// The error a [`RequestBody`] reports when its deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTimeout;

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body read timed out")
    }
}

impl StdError for BodyTimeout {}

impl RequestBody {
    fn new(inner: Incoming, timeout: Option<Duration>) -> Self {
        Self {
            inner,
            timeout,
            deadline: None,
            timed_out: false,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.timed_out {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let Some(timeout) = this.timeout else {
            return Poll::Pending;
        };
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.timed_out = true;
                Poll::Ready(Some(Err(Box::new(BodyTimeout))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How [`bind_with`] sets up the listening socket.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ListenOptions {
    /// The listen backlog asked for (the kernel caps it at `net.core.somaxconn`).
    /// Defaults to 4 096.
    pub backlog: u32,
    /// `SO_SNDBUF` of the listener, which accepted sockets inherit; `None` leaves the kernel's
    /// autotuning (on Linux up to `net.ipv4.tcp_wmem`'s maximum, often 4 MiB per socket).
    ///
    /// A small value bounds the kernel memory one client that stops reading can pin and lets
    /// the transport send timeout notice the stall sooner; too small a value slows fast
    /// clients on long, high-latency links. Defaults to `None`.
    pub send_buffer_size: Option<u32>,
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self {
            backlog: 4096,
            send_buffer_size: None,
        }
    }
}

impl ListenOptions {
    /// Sets [`ListenOptions::backlog`].
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// Sets [`ListenOptions::send_buffer_size`].
    pub fn send_buffer_size(mut self, size: Option<u32>) -> Self {
        self.send_buffer_size = size;
        self
    }
}

/// Binds a listener for [`serve`] with [`ListenOptions::default`]: `SO_REUSEADDR` (a restart
/// does not wait for `TIME_WAIT`) and a listen backlog of 4 096.
///
/// `tokio::net::TcpListener::bind` asks for a backlog of 128: a burst of more connections than
/// that (a reconnect storm after a deploy) overflows the kernel's accept queue, and the
/// overflowing clients see their handshake stall for seconds of SYN-ACK retries.
pub async fn bind(addr: impl tokio::net::ToSocketAddrs) -> std::io::Result<TcpListener> {
    bind_with(addr, &ListenOptions::default()).await
}

/// [`bind`] with explicit options.
pub async fn bind_with(
    addr: impl tokio::net::ToSocketAddrs,
    options: &ListenOptions,
) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if let Some(size) = options.send_buffer_size {
            socket.set_send_buffer_size(size)?;
        }
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(options.backlog))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind")
    }))
}

/// Serves `service` on `listener` with [`ServerOptions::default`] until `shutdown` completes,
/// then drains gracefully (see the module docs).
///
/// The service is cloned for every request. Both `axum::Router` and [`crate::HubService`] fit.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    S: tower_service::Service<Request<RequestBody>, Response = Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    serve_with(listener, service, ServerOptions::default(), shutdown).await
}

/// [`serve`] with explicit options.
pub async fn serve_with<S, B>(
    listener: TcpListener,
    service: S,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    S: tower_service::Service<Request<RequestBody>, Response = Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_headers(options.max_headers)
        .max_buf_size(options.max_buf_size.max(8 * 1024))
        .keep_alive(true);
    let http = Arc::new(http);
    let limit = options.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    let tracker = TaskTracker::new();
    let graceful = CancellationToken::new();
    let force = CancellationToken::new();
    let mut backoff = Duration::from_millis(5);
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let permit = match &limit {
            Some(sem) => tokio::select! {
                p = sem.clone().acquire_owned() => p.ok(),
                () = &mut shutdown => break,
            },
            None => None,
        };
        let stream = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let stream = match stream {
            Ok((stream, _remote)) => {
                backoff = Duration::from_millis(5);
                stream
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS…: resources run out. Wait for some to free up
                // rather than spin on the error or give up serving.
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut shutdown => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if options.tcp_nodelay {
            let _ = stream.set_nodelay(true);
        }
        let adapter = Adapter {
            inner: service.clone(),
            body_timeout: options.body_read_timeout,
        };
        let http = http.clone();
        let graceful = graceful.clone();
        let force = force.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let conn = http
                .serve_connection(TokioIo::new(stream), adapter)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = graceful.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        r = conn.as_mut() => r,
                        () = force.cancelled() => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }

    drop(listener);
    graceful.cancel();
    tracker.close();
    if tokio::time::timeout(options.graceful_shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::debug!(
            remaining = tracker.len(),
            "graceful shutdown timed out; dropping connections"
        );
        force.cancel();
        tracker.wait().await;
    }
    Ok(())
}

/// A service taking requests whose body is [`RequestBody`], made from one that wants another
/// body type; see [`map_request_body`].
#[derive(Debug, Clone)]
pub struct MapRequestBody<S, F> {
    service: S,
    map: F,
}

/// Adapts `service` to [`serve`] by converting each request body with `map`.
///
/// An `axum::Router` takes any body and needs no adapter, but a router wrapped in axum
/// middleware (`middleware::from_fn`) wants `axum::body::Body`:
///
/// ```ignore
/// let app = tower_layer::Layer::layer(&axum::middleware::from_fn(my_middleware), router);
/// tidings::server::serve(listener, map_request_body(app, axum::body::Body::new), shutdown).await
/// ```
pub fn map_request_body<S, F, B>(service: S, map: F) -> MapRequestBody<S, F>
where
    S: tower_service::Service<Request<B>>,
    F: Fn(RequestBody) -> B + Clone,
{
    MapRequestBody { service, map }
}

impl<S, F, B> tower_service::Service<Request<RequestBody>> for MapRequestBody<S, F>
where
    S: tower_service::Service<Request<B>>,
    F: Fn(RequestBody) -> B + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        self.service.call(req.map(&self.map))
    }
}

/// Errors of one incoming connection, not of the listener: try the next one at once.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// A tower service as a hyper service, with the request body wrapped in its deadline.
struct Adapter<S> {
    inner: S,
    body_timeout: Option<Duration>,
}

type AdapterFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for Adapter<S>
where
    S: tower_service::Service<Request<RequestBody>, Response = Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = AdapterFuture<Response<B>, BoxError>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let mut svc = self.inner.clone();
        let timeout = self.body_timeout;
        let req = req.map(|body| RequestBody::new(body, timeout));
        Box::pin(async move {
            poll_fn(|cx| svc.poll_ready(cx)).await.map_err(Into::into)?;
            svc.call(req).await.map_err(Into::into)
        })
    }
}
