//! Shared harness for the hostile-traffic tests: an in-process server (built only from the
//! public library API and served by `tidings::server`), raw WebSocket and HTTP clients, and a
//! canary connection that proves the server still serves others.
//!
//! Everything binds 127.0.0.1:0 and every wait is bounded by [`STEP`].

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, stream};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tidings::server::ServerOptions;
use tidings::service::ResponseBody;
use tidings::transport::{BoxFuture, ConnectionHandler, ConnectionIo};
use tidings::{
    Args, Caller, ClientStream, Clients, Groups, Hub, HubContext, HubError, HubOptions, HubService,
    TransportOptions,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// The longest any single step of a test may take before the test fails.
pub const STEP: Duration = Duration::from_secs(10);

/// The JSON record separator.
pub const RS: char = '\u{1e}';

/// Awaits `f` for at most [`STEP`], panicking with `what` otherwise.
pub async fn step<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// The hub every test talks to: a subset of the TestHub contract plus a few probes.
pub fn test_hub(configure: impl FnOnce(&mut HubOptions)) -> Hub {
    Hub::builder()
        .name("TestHub")
        .configure(configure)
        .method("Echo", |Args(message): Args<String>| async move { message })
        .method("Add", |Args((a, b)): Args<(i64, i64)>| async move { a + b })
        .method("GetCallerConnectionId", |caller: Caller| async move {
            caller.connection_id().to_owned()
        })
        .method(
            "AddToGroup",
            |caller: Caller, groups: Groups, Args(group): Args<String>| async move {
                groups
                    .add(caller.connection_id(), &group)
                    .await
                    .map_err(|e| HubError::new(e.to_string()))?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "SendToAll",
            |clients: Clients, Args(message): Args<String>| async move {
                clients.all().send("Broadcast", (message,)).await?;
                Ok::<(), HubError>(())
            },
        )
        .method(
            "StreamingConcat",
            |mut items: ClientStream<String>| async move {
                let mut out = String::new();
                while let Some(item) = items.next().await {
                    out.push_str(&item?);
                }
                Ok::<_, HubError>(out)
            },
        )
        .stream("Stream", || async { stream::iter(["a", "b", "c"]) })
        // Takes an upload stream and never reads it: once its buffer is full, the
        // connection's reading stops (back-pressure), which the memory tests rely on.
        .method("Stall", |items: ClientStream<String>| async move {
            let _unread = items;
            std::future::pending::<()>().await
        })
        .build()
}

/// The raw `/echo` connection of the contract: every frame back, verbatim.
pub struct Echo;

impl ConnectionHandler for Echo {
    fn on_connected(&self, mut io: ConnectionIo) -> BoxFuture<()> {
        Box::pin(async move {
            while let Some(frame) = io.inbound.recv().await {
                if io.outbound.push(frame).is_err() {
                    break;
                }
            }
        })
    }
}

/// Routes on the first path segment to one `HubService` per hub path (no prefix stripping:
/// `HubService` routes on the path suffix).
#[derive(Clone)]
pub struct PathRouter {
    routes: Vec<(&'static str, HubService)>,
}

impl PathRouter {
    fn find(&self, path: &str) -> Option<HubService> {
        self.routes.iter().find_map(|(prefix, svc)| {
            let rest = path.strip_prefix(prefix)?;
            (rest.is_empty() || rest.starts_with('/')).then(|| svc.clone())
        })
    }
}

impl<B> tower_service::Service<Request<B>> for PathRouter
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.find(req.uri().path()) {
            Some(mut svc) => Box::pin(async move { svc.call(req).await }),
            None => Box::pin(async {
                let mut res = Response::new(Full::new(Bytes::new()).boxed_unsync());
                *res.status_mut() = StatusCode::NOT_FOUND;
                Ok(res)
            }),
        }
    }
}

/// What a test server is made of.
#[derive(Default)]
pub struct Config {
    pub hub: HubOptions,
    pub transport: TransportOptions,
    pub server: ServerOptions,
    pub listen: tidings::server::ListenOptions,
}

/// A server running in this process on 127.0.0.1.
pub struct TestServer {
    pub addr: SocketAddr,
    /// `/hub`: the test hub on every transport.
    pub hub: HubService,
    /// `/lp`: the same hub, long polling and SSE only.
    pub no_ws: HubService,
    /// `/echo`: the raw echo connection.
    pub echo: HubService,
    pub context: HubContext,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(Config::default()).await
    }

    pub async fn with(config: Config) -> Self {
        let hub_options = config.hub.clone();
        let hub = test_hub(move |o| *o = hub_options);
        let context = hub.context();
        let hub_svc = hub.service(config.transport.clone());
        let no_ws = hub.service(TransportOptions {
            transports: vec![
                tidings::transport::TransportType::ServerSentEvents,
                tidings::transport::TransportType::LongPolling,
            ],
            ..config.transport.clone()
        });
        let echo = HubService::new(Echo, config.transport.clone());
        let router = PathRouter {
            routes: vec![
                ("/hub", hub_svc.clone()),
                ("/lp", no_ws.clone()),
                ("/echo", echo.clone()),
            ],
        };
        let listener = tidings::server::bind_with("127.0.0.1:0", &config.listen)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(tidings::server::serve_with(
            listener,
            router,
            config.server,
            shutdown,
        ));
        Self {
            addr,
            hub: hub_svc,
            no_ws,
            echo,
            context,
            stop,
            task: Some(task),
        }
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Stops the server and waits for its loop to end.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            step("server shutdown", task).await.unwrap().unwrap();
        }
    }

    /// Waits until every path's connection table and the hub registry are empty.
    pub async fn wait_no_connections(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let counts = (
                self.hub.connection_count(),
                self.no_ws.connection_count(),
                self.echo.connection_count(),
                self.context.connection_count(),
            );
            if counts == (0, 0, 0, 0) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("connections leaked: (hub, lp, echo, registry) = {counts:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Options that make the reaper quick, so leak checks finish in a second or two.
pub fn quick_reaping() -> TransportOptions {
    TransportOptions {
        disconnect_timeout: Duration::from_millis(300),
        ..TransportOptions::default()
    }
}

// ---------------------------------------------------------------- WebSocket clients

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to `url` (no handshake sent).
pub async fn ws_open(url: &str) -> Ws {
    let (ws, _) = step("websocket connect", tokio_tungstenite::connect_async(url))
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    ws
}

/// Opens a WebSocket and completes the JSON hub handshake.
pub async fn ws_json(url: &str) -> Ws {
    let mut ws = ws_open(url).await;
    send_text(
        &mut ws,
        &format!("{{\"protocol\":\"json\",\"version\":1}}{RS}"),
    )
    .await;
    let reply = next_text(&mut ws).await;
    assert_eq!(reply, format!("{{}}{RS}"), "handshake response");
    ws
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    step("websocket send", ws.send(Message::text(text)))
        .await
        .unwrap();
}

pub async fn send_binary(ws: &mut Ws, data: Vec<u8>) {
    step("websocket send", ws.send(Message::binary(data)))
        .await
        .unwrap();
}

/// What arrived on a WebSocket.
#[derive(Debug)]
pub enum Received {
    Text(String),
    Binary(Bytes),
    /// A close frame (code, reason) or the end of the stream (`None`).
    Closed(Option<(u16, String)>),
}

/// The next data message or the close, skipping pings and pongs.
pub async fn recv(ws: &mut Ws) -> Received {
    loop {
        match step("websocket receive", ws.next()).await {
            Some(Ok(Message::Text(t))) => return Received::Text(t.as_str().to_owned()),
            Some(Ok(Message::Binary(b))) => return Received::Binary(b),
            Some(Ok(Message::Close(frame))) => {
                return Received::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Received::Closed(None),
        }
    }
}

pub async fn next_text(ws: &mut Ws) -> String {
    match recv(ws).await {
        Received::Text(t) => t,
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Reads JSON hub records until one satisfies `pred` (pings skipped), returning it.
pub async fn next_record(
    ws: &mut Ws,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    loop {
        let text = next_text(ws).await;
        for record in text.split(RS).filter(|r| !r.is_empty()) {
            let v: serde_json::Value = serde_json::from_str(record).unwrap();
            if pred(&v) {
                return v;
            }
        }
    }
}

/// Reads until the WebSocket closes; returns every hub record seen and the close frame.
pub async fn read_until_closed(ws: &mut Ws) -> (Vec<serde_json::Value>, Option<(u16, String)>) {
    let mut records = Vec::new();
    loop {
        match recv(ws).await {
            Received::Text(t) => {
                for r in t.split(RS).filter(|r| !r.is_empty()) {
                    if let Ok(v) = serde_json::from_str(r) {
                        records.push(v);
                    }
                }
            }
            Received::Binary(_) => {}
            Received::Closed(frame) => return (records, frame),
        }
    }
}

/// A JSON Invocation record.
pub fn invocation(id: &str, target: &str, args: &str) -> String {
    format!(
        "{{\"type\":1,\"invocationId\":\"{id}\",\"target\":\"{target}\",\"arguments\":{args}}}{RS}"
    )
}

/// Invokes `target` and returns its Completion record.
pub async fn invoke(ws: &mut Ws, id: &str, target: &str, args: &str) -> serde_json::Value {
    send_text(ws, &invocation(id, target, args)).await;
    next_record(ws, |v| v["type"] == 3 && v["invocationId"] == id).await
}

/// A connection opened before the hostile traffic, checked after it: others carry on.
pub struct Canary {
    ws: Ws,
    n: u32,
}

impl Canary {
    pub async fn open(server: &TestServer) -> Self {
        Self {
            ws: ws_json(&server.ws_url("/hub")).await,
            n: 0,
        }
    }

    /// One Echo round trip on the canary, and one on a brand-new connection.
    pub async fn check(&mut self, server: &TestServer) {
        self.n += 1;
        let id = format!("canary{}", self.n);
        let text = format!("still here {}", self.n);
        let done = invoke(&mut self.ws, &id, "Echo", &format!("[\"{text}\"]")).await;
        assert_eq!(done["result"], text, "canary: {done}");
        let mut fresh = ws_json(&server.ws_url("/hub")).await;
        let done = invoke(&mut fresh, "f", "Add", "[2,3]").await;
        assert_eq!(done["result"], 5, "fresh connection: {done}");
        let _ = fresh.close(None).await;
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Let the server see the close frame.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

// ---------------------------------------------------------------- HTTP clients

/// A complete HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request on a fresh connection and returns the streaming response.
pub async fn http_stream(
    addr: SocketAddr,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Response<hyper::body::Incoming> {
    let stream = step("tcp connect", TcpStream::connect(addr)).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).unwrap();
    step("http request", sender.send_request(req))
        .await
        .unwrap()
}

/// Sends one request and reads the whole response.
pub async fn http(
    addr: SocketAddr,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> HttpResponse {
    let res = http_stream(addr, method, uri, headers, body.into()).await;
    let (parts, body) = res.into_parts();
    let body = step("http body", body.collect()).await.unwrap().to_bytes();
    HttpResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// The ids a negotiate returned.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub connection_id: String,
    pub token: String,
}

/// `POST {path}/negotiate?negotiateVersion=1`.
pub async fn negotiate(addr: SocketAddr, path: &str) -> Negotiated {
    let res = http(
        addr,
        Method::POST,
        &format!("{path}/negotiate?negotiateVersion=1"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "negotiate: {}", res.text());
    let v: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    Negotiated {
        connection_id: v["connectionId"].as_str().unwrap().to_owned(),
        token: v["connectionToken"].as_str().unwrap().to_owned(),
    }
}

/// A long-polling JSON hub connection driven by hand.
pub struct LongPoll {
    pub addr: SocketAddr,
    pub path: String,
    pub ids: Negotiated,
}

impl LongPoll {
    /// Negotiates, makes the first poll and completes the JSON handshake.
    pub async fn connect(addr: SocketAddr, path: &str) -> Self {
        let ids = negotiate(addr, path).await;
        let lp = Self {
            addr,
            path: path.to_owned(),
            ids,
        };
        let first = lp.poll().await;
        assert_eq!(first.status, StatusCode::OK, "first poll");
        let res = lp
            .post(format!("{{\"protocol\":\"json\",\"version\":1}}{RS}"))
            .await;
        assert_eq!(res.status, StatusCode::OK, "handshake post: {}", res.text());
        let hs = lp.poll().await;
        assert_eq!(hs.status, StatusCode::OK);
        assert!(
            hs.text().starts_with(&format!("{{}}{RS}")),
            "handshake: {}",
            hs.text()
        );
        lp
    }

    pub fn url(&self) -> String {
        format!("{}?id={}", self.path, self.ids.token)
    }

    pub async fn poll(&self) -> HttpResponse {
        http(self.addr, Method::GET, &self.url(), &[], Bytes::new()).await
    }

    pub async fn post(&self, body: impl Into<Bytes>) -> HttpResponse {
        http(
            self.addr,
            Method::POST,
            &self.url(),
            &[("content-type", "text/plain;charset=UTF-8")],
            body,
        )
        .await
    }

    /// Invokes `target` and polls until its Completion arrives.
    pub async fn invoke(&self, id: &str, target: &str, args: &str) -> serde_json::Value {
        let res = self.post(invocation(id, target, args)).await;
        assert_eq!(res.status, StatusCode::OK, "invoke post: {}", res.text());
        for _ in 0..20 {
            let res = self.poll().await;
            assert_eq!(res.status, StatusCode::OK, "poll");
            for record in res.text().split(RS).filter(|r| !r.is_empty()) {
                let v: serde_json::Value = serde_json::from_str(record).unwrap();
                if v["type"] == 3 && v["invocationId"] == id {
                    return v;
                }
            }
        }
        panic!("no completion for {id}");
    }

    pub async fn delete(&self) -> HttpResponse {
        http(self.addr, Method::DELETE, &self.url(), &[], Bytes::new()).await
    }
}

/// Counts a process's open file descriptors (Linux).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A Server-Sent Events JSON hub connection driven by hand.
pub struct Sse {
    pub addr: SocketAddr,
    pub path: String,
    pub ids: Negotiated,
    body: hyper::body::Incoming,
    pending: String,
}

impl Sse {
    /// Opens the event stream for an already negotiated connection (no handshake).
    pub async fn open(addr: SocketAddr, path: &str, ids: Negotiated) -> Result<Self, HttpResponse> {
        let res = http_stream(
            addr,
            Method::GET,
            &format!("{path}?id={}", ids.token),
            &[("accept", "text/event-stream")],
            Bytes::new(),
        )
        .await;
        if res.status() != StatusCode::OK {
            let (parts, body) = res.into_parts();
            let body = step("http body", body.collect()).await.unwrap().to_bytes();
            return Err(HttpResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            });
        }
        Ok(Self {
            addr,
            path: path.to_owned(),
            ids,
            body: res.into_body(),
            pending: String::new(),
        })
    }

    /// Negotiates, opens the stream and completes the JSON handshake.
    pub async fn connect(addr: SocketAddr, path: &str) -> Self {
        let ids = negotiate(addr, path).await;
        let mut sse = Self::open(addr, path, ids).await.expect("sse stream");
        let res = sse
            .post(format!("{{\"protocol\":\"json\",\"version\":1}}{RS}"))
            .await;
        assert_eq!(res.status, StatusCode::OK);
        let hs = sse.next_event().await.expect("handshake event");
        assert_eq!(hs, format!("{{}}{RS}"));
        sse
    }

    pub fn url(&self) -> String {
        format!("{}?id={}", self.path, self.ids.token)
    }

    pub async fn post(&self, body: impl Into<Bytes>) -> HttpResponse {
        http(
            self.addr,
            Method::POST,
            &self.url(),
            &[("content-type", "text/plain;charset=UTF-8")],
            body,
        )
        .await
    }

    /// The next event's data (comment lines skipped), or `None` when the stream ends.
    pub async fn next_event(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.pending.find("\r\n\r\n") {
                let event: String = self.pending.drain(..end + 4).collect();
                let data: Vec<&str> = event
                    .split("\r\n")
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                if data.is_empty() {
                    continue;
                }
                return Some(data.join("\n"));
            }
            // The opening comment is ":\r\n" alone.
            if self.pending == ":\r\n" {
                self.pending.clear();
            }
            match step("sse frame", self.body.frame()).await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending.push_str(&String::from_utf8_lossy(&data));
                        if let Some(rest) = self.pending.strip_prefix(":\r\n") {
                            self.pending = rest.to_owned();
                        }
                    }
                }
                _ => return None,
            }
        }
    }

    /// Invokes `target` and reads events until its Completion arrives.
    pub async fn invoke(&mut self, id: &str, target: &str, args: &str) -> serde_json::Value {
        let res = self.post(invocation(id, target, args)).await;
        assert_eq!(res.status, StatusCode::OK, "invoke post: {}", res.text());
        loop {
            let event = self.next_event().await.expect("stream ended");
            for record in event.split(RS).filter(|r| !r.is_empty()) {
                let v: serde_json::Value = serde_json::from_str(record).unwrap();
                if v["type"] == 3 && v["invocationId"] == id {
                    return v;
                }
            }
        }
    }
}

/// Tries a WebSocket upgrade; the status code when the server refuses it.
pub async fn ws_try(url: &str) -> Result<Ws, StatusCode> {
    match step("websocket connect", tokio_tungstenite::connect_async(url)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(res.status()),
        Err(e) => panic!("websocket connect {url}: {e}"),
    }
}

/// Writes raw bytes on a fresh TCP connection and reads the response head (up to the blank
/// line) with its status code.
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = step("tcp connect", TcpStream::connect(addr)).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = step("raw read", s.read(&mut buf)).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}
