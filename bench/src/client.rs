//! The load generator: one thread (tokio current_thread), raw frames built once, 64 KiB reads
//! into one shared buffer, deliveries counted by payload marker, hdrhistogram latencies.
//!
//! `tidings-bench client --kind signalr|sio|raw --addr IP:PORT --path /bench [--proto json|msgpack]
//!   [--server-pid PID] [--src-base N] [--label TEXT] PHASE...`
//!
//! Phases run in order, each printing one JSON line:
//! - `connect:N`: open N WebSocket subscribers, 64 handshakes at a time; connections/s, then
//!   server memory per connection (RSS delta and Pss) after 0.6 s;
//! - `sse:N` / `lp:N`: the same subscribers over Server-Sent Events / long polling (SignalR);
//! - `fanout:W:SIZE:SECS`: broadcasts from one extra (not subscribed) connection, W in flight;
//! - `fanlat:SECS`: one 20 B broadcast at a time: completion and per-copy latency;
//! - `close`: drops the subscribers;
//! - `echo:C:SECS`: C connections, one Echo invocation in flight each (round trip);
//! - `pipe:C:D:SECS`: C connections × D fire-and-forget sends answered by the server.

use std::cell::{Cell, RefCell};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, LocalSet, spawn_local};

use crate::wire::{self, Counter, Kind, Op, Proto};

/// Concurrent handshakes in `connect`.
const CONCURRENCY: usize = 64;
/// Source addresses 127.0.0.{base..base+SRCS}.
const SRCS: u32 = 8;
/// Warm-up before each measured window.
const WARMUP: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct Target {
    pub kind: Kind,
    pub proto: Proto,
    pub addr: SocketAddr,
    pub path: String,
}

impl Target {
    fn host(&self) -> String {
        self.addr.to_string()
    }
    fn ws_path(&self) -> String {
        match self.kind {
            Kind::Sio => "/socket.io/?EIO=4&transport=websocket".into(),
            _ => self.path.clone(),
        }
    }
}

/// State every task of the process shares (one thread: cells, no locks).
struct Shared {
    /// The marker deliveries of the current phase carry.
    marker: Cell<[u8; 4]>,
    /// The tag of the last phase (each phase takes the next one).
    tag: Cell<u8>,
    received: Cell<u64>,
    /// The publisher wants a wake-up once `received` reaches this.
    wake_at: Cell<u64>,
    notify: Notify,
    buf: RefCell<Vec<u8>>,
    latency_on: Cell<bool>,
    sent_at: Cell<Instant>,
    copy_hist: RefCell<Histogram<u64>>,
    /// Subscribers whose connection ended on its own.
    dropped: Cell<u64>,
    src_next: Cell<u32>,
    src_base: u32,
    stop: Cell<bool>,
    measuring: Cell<bool>,
}

impl Shared {
    fn add(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.received.set(self.received.get() + n);
        if self.latency_on.get() {
            let us = self.sent_at.get().elapsed().as_nanos() as u64;
            let _ = self.copy_hist.borrow_mut().record_n(us.max(1), n);
        }
        if self.received.get() >= self.wake_at.get() {
            self.notify.notify_one();
        }
    }

    /// A fresh marker for a new phase; returns its tag.
    fn next_tag(&self) -> u8 {
        let t = if self.tag.get() >= b'Z' {
            b'A'
        } else {
            self.tag.get() + 1
        };
        self.tag.set(t);
        self.marker.set(wire::marker(t));
        t
    }

    fn next_src(&self) -> Ipv4Addr {
        let i = self.src_next.get();
        self.src_next.set(i.wrapping_add(1));
        let last = 2 + (self.src_base + i % SRCS) % 250;
        Ipv4Addr::new(127, 0, 0, last as u8)
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram bounds")
}

/// Reads `/proc/PID` figures: CPU ticks (utime + stime), RSS and Pss in bytes.
#[derive(Clone, Copy, Default)]
struct ProcSample {
    cpu_us: u64,
    rss: u64,
    pss: u64,
}

fn sample(pid: Option<u32>) -> ProcSample {
    let Some(pid) = pid else {
        return ProcSample::default();
    };
    let mut s = ProcSample::default();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        && let Some(rest) = stat.rsplit(')').next()
    {
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        s.cpu_us = ticks * 10_000; // CLK_TCK = 100
    }
    let kb = |text: &str, key: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |k| k * 1024)
    };
    if let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        s.rss = kb(&st, "VmRSS:");
    }
    if let Ok(sm) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        s.pss = kb(&sm, "Pss:");
    }
    s
}

/// One phase's result, printed as a JSON line.
#[derive(Serialize, Default)]
pub struct PhaseResult {
    pub label: String,
    pub phase: String,
    pub conns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_msg: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_p99_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_conn: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pss_per_conn: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss: Option<u64>,
    pub count: u64,
    pub secs: f64,
    pub errors: u64,
}

async fn write_all(s: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        s.writable().await?;
        match s.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads once into `buf` (appending); 0 means the peer closed.
async fn read_some(s: &TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        s.readable().await?;
        match s.try_read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

fn io_err(msg: &str) -> std::io::Error {
    std::io::Error::other(msg.to_owned())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

async fn tcp(sh: &Shared, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    sock.bind(SocketAddr::V4(SocketAddrV4::new(sh.next_src(), 0)))?;
    let s = sock.connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// TCP, the WebSocket upgrade and the protocol's own handshake.
async fn connect_ws(sh: &Shared, t: &Target) -> std::io::Result<TcpStream> {
    let s = tcp(sh, t.addr).await?;
    write_all(&s, &wire::upgrade_request(&t.host(), &t.ws_path())).await?;
    let mut buf = Vec::new();
    let head_end = loop {
        if read_some(&s, &mut buf).await? == 0 {
            return Err(io_err("closed during upgrade"));
        }
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        return Err(io_err("upgrade refused"));
    }
    match t.kind {
        Kind::Raw => {}
        Kind::SignalR => {
            write_all(&s, &wire::handshake(t.proto)).await?;
            while !buf[head_end..].contains(&0x1e) {
                if read_some(&s, &mut buf).await? == 0 {
                    return Err(io_err("closed during handshake"));
                }
            }
        }
        Kind::Sio => {
            let sids = |b: &[u8]| memchr::memmem::find_iter(b, b"\"sid\"").count();
            while sids(&buf[head_end..]) < 1 {
                if read_some(&s, &mut buf).await? == 0 {
                    return Err(io_err("closed before engine.io open"));
                }
            }
            write_all(&s, &wire::ws_frame(1, b"40")).await?;
            while sids(&buf[head_end..]) < 2 {
                if read_some(&s, &mut buf).await? == 0 {
                    return Err(io_err("closed before socket.io connect"));
                }
            }
        }
    }
    Ok(s)
}

/// One whole HTTP/1.1 response off `s` (Content-Length or chunked): status and body.
async fn http_response(s: &TcpStream, buf: &mut Vec<u8>) -> std::io::Result<(u16, Vec<u8>)> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if read_some(s, buf).await? == 0 {
            return Err(io_err("closed before response head"));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    let mut body = Vec::new();
    if let Some(len) = header("content-length:").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < head_end + len {
            if read_some(s, buf).await? == 0 {
                return Err(io_err("closed in body"));
            }
        }
        body.extend_from_slice(&buf[head_end..head_end + len]);
        buf.drain(..head_end + len);
    } else if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        let mut pos = head_end;
        loop {
            let line_end = loop {
                if let Some(i) = find(&buf[pos..], b"\r\n") {
                    break pos + i;
                }
                if read_some(s, buf).await? == 0 {
                    return Err(io_err("closed in chunk size"));
                }
            };
            let size_text = String::from_utf8_lossy(&buf[pos..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io_err("bad chunk size"))?;
            let need = line_end + 2 + size + 2;
            while buf.len() < need {
                if read_some(s, buf).await? == 0 {
                    return Err(io_err("closed in chunk"));
                }
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            pos = need;
            if size == 0 {
                break;
            }
        }
        buf.drain(..pos);
    } else {
        buf.drain(..head_end);
    }
    Ok((status, body))
}

fn post(path: &str, host: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// `POST …/negotiate?negotiateVersion=1` on `s`; returns the connection token.
async fn negotiate(s: &TcpStream, t: &Target, buf: &mut Vec<u8>) -> std::io::Result<String> {
    let path = format!("{}/negotiate?negotiateVersion=1", t.path);
    write_all(s, &post(&path, &t.host(), b"")).await?;
    let (status, body) = http_response(s, buf).await?;
    if status != 200 {
        return Err(io_err("negotiate failed"));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| io_err("negotiate body"))?;
    v.get("connectionToken")
        .or_else(|| v.get("connectionId"))
        .and_then(|t| t.as_str())
        .map(str::to_owned)
        .ok_or_else(|| io_err("no connection token"))
}

const JSON_HANDSHAKE: &[u8] = b"{\"protocol\":\"json\",\"version\":1}\x1e";

/// An SSE subscriber: negotiate, the event stream, the handshake by POST.
async fn connect_sse(sh: &Shared, t: &Target) -> std::io::Result<TcpStream> {
    let ctl = tcp(sh, t.addr).await?;
    let mut cbuf = Vec::new();
    let token = negotiate(&ctl, t, &mut cbuf).await?;
    let s = tcp(sh, t.addr).await?;
    let get = format!(
        "GET {}?id={token} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
        t.path,
        t.host()
    );
    write_all(&s, get.as_bytes()).await?;
    let mut buf = Vec::new();
    let head_end = loop {
        if read_some(&s, &mut buf).await? == 0 {
            return Err(io_err("closed before SSE head"));
        }
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
    };
    if !buf.starts_with(b"HTTP/1.1 200") {
        return Err(io_err("SSE refused"));
    }
    let path = format!("{}?id={token}", t.path);
    write_all(&ctl, &post(&path, &t.host(), JSON_HANDSHAKE)).await?;
    let (status, _) = http_response(&ctl, &mut cbuf).await?;
    if status != 200 {
        return Err(io_err("handshake POST failed"));
    }
    while !buf[head_end..].contains(&0x1e) {
        if read_some(&s, &mut buf).await? == 0 {
            return Err(io_err("closed before SSE handshake"));
        }
    }
    Ok(s)
}

/// A long-polling subscriber: negotiate and handshake; the returned task polls until stopped.
async fn connect_lp(sh: Rc<Shared>, t: &Target) -> std::io::Result<JoinHandle<()>> {
    let s = tcp(&sh, t.addr).await?;
    let mut buf = Vec::new();
    let token = negotiate(&s, t, &mut buf).await?;
    let path = format!("{}?id={token}", t.path);
    let get = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", t.host()).into_bytes();
    // The first poll starts the transport and answers at once (as the stock client expects);
    // then the handshake goes by POST and its answer comes on a poll.
    // (aiosignalr holds the first poll instead: then the POST goes on a second connection.)
    write_all(&s, &get).await?;
    let first = tokio::time::timeout(Duration::from_millis(300), http_response(&s, &mut buf)).await;
    let mut seen = match first {
        Ok(answer) => {
            let (status, body) = answer?;
            if status != 200 {
                return Err(io_err("first poll failed"));
            }
            write_all(&s, &post(&path, &t.host(), JSON_HANDSHAKE)).await?;
            let (status, _) = http_response(&s, &mut buf).await?;
            if status != 200 {
                return Err(io_err(&format!("handshake POST answered {status}")));
            }
            body.contains(&0x1e)
        }
        Err(_) => {
            let ctl = tcp(&sh, t.addr).await?;
            let mut cbuf = Vec::new();
            write_all(&ctl, &post(&path, &t.host(), JSON_HANDSHAKE)).await?;
            let (status, _) = http_response(&ctl, &mut cbuf).await?;
            if status != 200 {
                return Err(io_err(&format!("handshake POST answered {status}")));
            }
            // The held poll answers with the handshake response.
            let (status, body) = http_response(&s, &mut buf).await?;
            if status != 200 {
                return Err(io_err("poll failed"));
            }
            body.contains(&0x1e)
        }
    };
    while !seen {
        write_all(&s, &get).await?;
        let (status, body) = http_response(&s, &mut buf).await?;
        if status != 200 {
            return Err(io_err("poll failed"));
        }
        seen = body.contains(&0x1e);
    }
    Ok(spawn_local(async move {
        let mut counter = Counter::default();
        loop {
            if write_all(&s, &get).await.is_err() {
                break;
            }
            match http_response(&s, &mut buf).await {
                Ok((200, body)) => sh.add(counter.count(&body, &sh.marker.get())),
                _ => break,
            }
            if sh.stop.get() {
                return;
            }
        }
        sh.dropped.set(sh.dropped.get() + 1);
    }))
}

/// Counts deliveries on a subscriber socket until it ends.
fn spawn_reader(sh: Rc<Shared>, s: TcpStream, counted: bool) -> JoinHandle<()> {
    spawn_local(async move {
        let mut counter = Counter::default();
        loop {
            if s.readable().await.is_err() {
                break;
            }
            let n = {
                let mut b = sh.buf.borrow_mut();
                match s.try_read(&mut b[..]) {
                    Ok(0) => break,
                    Ok(n) => counter.count(&b[..n], &sh.marker.get()),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => break,
                }
            };
            if counted {
                sh.add(n);
            }
        }
        if counted {
            sh.dropped.set(sh.dropped.get() + 1);
        }
    })
}

/// Opens `n` connections with `CONCURRENCY` handshakes in flight; returns them and the errors.
async fn open_many<F, Fut, T>(n: usize, deadline: Instant, open: F) -> (Vec<T>, u64)
where
    F: Fn() -> Fut + 'static,
    Fut: std::future::Future<Output = std::io::Result<T>> + 'static,
    T: 'static,
{
    let open = Rc::new(open);
    let next = Rc::new(Cell::new(0usize));
    let out: Rc<RefCell<Vec<T>>> = Rc::new(RefCell::new(Vec::with_capacity(n)));
    let errors = Rc::new(Cell::new(0u64));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY.min(n.max(1)) {
        let (open, next, out, errors) = (open.clone(), next.clone(), out.clone(), errors.clone());
        workers.push(spawn_local(async move {
            loop {
                let i = next.get();
                if i >= n || Instant::now() >= deadline {
                    break;
                }
                next.set(i + 1);
                match tokio::time::timeout(Duration::from_secs(5), open()).await {
                    Ok(Ok(c)) => out.borrow_mut().push(c),
                    other => {
                        if errors.get() == 0 {
                            let why = match other {
                                Ok(Err(e)) => e.to_string(),
                                _ => "timed out".to_owned(),
                            };
                            eprintln!("connect error (first of this phase): {why}");
                        }
                        errors.set(errors.get() + 1);
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let v = std::mem::take(&mut *out.borrow_mut());
    (v, errors.get())
}

struct Session {
    sh: Rc<Shared>,
    t: Target,
    pid: Option<u32>,
    label: String,
    subs: Vec<JoinHandle<()>>,
    publisher: Option<Rc<TcpStream>>,
    publisher_reader: Option<JoinHandle<()>>,
}

fn secs_arg(v: Option<&&str>, default: f64) -> Duration {
    Duration::from_secs_f64(v.and_then(|s| s.parse().ok()).unwrap_or(default))
}

fn num_arg(v: Option<&&str>, default: usize) -> usize {
    v.and_then(|s| s.parse().ok()).unwrap_or(default)
}

impl Session {
    fn result(&self, phase: &str) -> PhaseResult {
        PhaseResult {
            label: self.label.clone(),
            phase: phase.to_owned(),
            ..Default::default()
        }
    }

    fn live_subs(&self) -> u64 {
        (self.subs.len() as u64).saturating_sub(self.sh.dropped.get())
    }

    async fn run(&mut self, spec: &str) -> PhaseResult {
        let parts: Vec<&str> = spec.split(':').collect();
        match parts[0] {
            "connect" | "sse" | "lp" => self.connect(parts[0], num_arg(parts.get(1), 1000)).await,
            "fanout" => {
                let w = num_arg(parts.get(1), 64) as u64;
                let size = num_arg(parts.get(2), 20);
                self.fanout(spec, w, size, secs_arg(parts.get(3), 2.0))
                    .await
            }
            "fanlat" => self.fanlat(spec, secs_arg(parts.get(1), 1.0)).await,
            "close" => {
                self.close_subs().await;
                self.result(spec)
            }
            "echo" => {
                self.echo(
                    spec,
                    num_arg(parts.get(1), 1),
                    1,
                    secs_arg(parts.get(2), 1.0),
                )
                .await
            }
            "pipe" => {
                let c = num_arg(parts.get(1), 100);
                let d = num_arg(parts.get(2), 16);
                self.echo(spec, c, d, secs_arg(parts.get(3), 1.0)).await
            }
            _ => {
                let mut r = self.result(spec);
                r.errors = 1;
                r
            }
        }
    }

    async fn close_subs(&mut self) {
        for s in self.subs.drain(..) {
            s.abort();
        }
        if let Some(r) = self.publisher_reader.take() {
            r.abort();
        }
        self.publisher = None;
        self.sh.dropped.set(0);
        self.settle().await;
    }

    /// Waits (at most 2 s) until the server is idle: closes processed, backlogs written.
    async fn settle(&self) {
        let until = Instant::now() + Duration::from_secs(2);
        let mut last = sample(self.pid).cpu_us;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = sample(self.pid).cpu_us;
            // Less than 20 % of a core over the last 100 ms (or no pid to watch).
            if self.pid.is_none() || now.saturating_sub(last) < 20_000 || Instant::now() >= until {
                break;
            }
            last = now;
        }
    }

    async fn connect(&mut self, how: &str, n: usize) -> PhaseResult {
        self.close_subs().await;
        let before = sample(self.pid);
        let start = Instant::now();
        let deadline = start + Duration::from_secs(120);
        let (handles, errors) = match how {
            "connect" | "sse" => {
                let (sh, t, sse) = (self.sh.clone(), self.t.clone(), how == "sse");
                let (conns, errors) = open_many(n, deadline, move || {
                    let (sh, t) = (sh.clone(), t.clone());
                    async move {
                        if sse {
                            connect_sse(&sh, &t).await
                        } else {
                            connect_ws(&sh, &t).await
                        }
                    }
                })
                .await;
                let handles = conns
                    .into_iter()
                    .map(|s| spawn_reader(self.sh.clone(), s, true))
                    .collect();
                (handles, errors)
            }
            _ => {
                let (sh, t) = (self.sh.clone(), self.t.clone());
                open_many(n, deadline, move || {
                    let (sh, t) = (sh.clone(), t.clone());
                    async move { connect_lp(sh, &t).await }
                })
                .await
            }
        };
        let secs = start.elapsed().as_secs_f64();
        let mid = sample(self.pid);
        self.subs = handles;
        let opened = self.subs.len() as u64;
        let mut r = self.result(&format!("{how}:{n}"));
        r.conns = opened;
        r.count = opened;
        r.secs = secs;
        r.errors = errors;
        r.rate = Some(opened as f64 / secs.max(1e-9));
        if opened > 0 {
            r.cpu_us_per_msg =
                Some(mid.cpu_us.saturating_sub(before.cpu_us) as f64 / opened as f64);
        }
        // Idle memory: settle, then the delta against the server before connecting.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let after = sample(self.pid);
        if self.pid.is_some() && opened > 0 {
            r.rss_per_conn = Some((after.rss as f64 - before.rss as f64) / opened as f64);
            r.pss_per_conn = Some((after.pss as f64 - before.pss as f64) / opened as f64);
            r.server_rss = Some(after.rss);
        }
        r
    }

    async fn ensure_publisher(&mut self) -> Option<Rc<TcpStream>> {
        if self.publisher.is_none() {
            let s = connect_ws(&self.sh, &self.t).await.ok()?;
            let s = Rc::new(s);
            // The publisher reads (and ignores) whatever the server sends it.
            let reader = s.clone();
            let sh = self.sh.clone();
            self.publisher_reader = Some(spawn_local(async move {
                loop {
                    if reader.readable().await.is_err() {
                        break;
                    }
                    let mut b = sh.buf.borrow_mut();
                    match reader.try_read(&mut b[..]) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => break,
                    }
                }
            }));
            self.publisher = Some(s);
        }
        self.publisher.clone()
    }

    /// Waits until `received` reaches `target` or `until`; true if reached.
    async fn wait_received(&self, target: u64, until: Instant) -> bool {
        let sh = &self.sh;
        while sh.received.get() < target {
            sh.wake_at.set(target);
            let now = Instant::now();
            if now >= until {
                return false;
            }
            let _ = tokio::time::timeout(until - now, sh.notify.notified()).await;
        }
        true
    }

    async fn fanout(&mut self, spec: &str, w: u64, size: usize, secs: Duration) -> PhaseResult {
        let mut r = self.result(spec);
        let Some(publ) = self.ensure_publisher().await else {
            r.errors = 1;
            return r;
        };
        let n = self.live_subs();
        r.conns = n;
        if n == 0 {
            r.errors = 1;
            return r;
        }
        let frame = wire::message(
            self.t.kind,
            self.t.proto,
            Op::Broadcast,
            &wire::payload(size, self.sh.next_tag()),
        );
        let batch = frame.repeat(w as usize);
        let sh = self.sh.clone();
        let base = sh.received.get();
        let mut sent = 0u64;
        let start = Instant::now();
        let measure_at = start + WARMUP;
        let end = measure_at + secs;
        let mut first: Option<(Instant, u64, ProcSample)> = None;
        loop {
            let now = Instant::now();
            if first.is_none() && now >= measure_at {
                first = Some((now, sh.received.get(), sample(self.pid)));
            }
            // The window lasts `secs`, longer (up to 2 s more) until it has seen one whole
            // window of broadcasts (W × subscribers): slow servers start delivering late.
            if now >= end {
                let seen = first.map_or(0, |(_, rec0, _)| sh.received.get() - rec0);
                if seen >= w * n || now >= end + Duration::from_secs(2) {
                    break;
                }
            }
            let n_live = self.live_subs().max(1);
            let done = (sh.received.get() - base) / n_live;
            let outstanding = sent - done.min(sent);
            if outstanding < w {
                let k = (w - outstanding) as usize;
                if write_all(&publ, &batch[..k * frame.len()]).await.is_err() {
                    r.errors += 1;
                    break;
                }
                sent += k as u64;
            } else {
                // Wake when the oldest outstanding broadcast has (about) arrived everywhere.
                sh.wake_at.set(base + (sent - w + 1) * n_live);
                let wait = end
                    .saturating_duration_since(now)
                    .clamp(Duration::from_millis(1), Duration::from_millis(50));
                let _ = tokio::time::timeout(wait, sh.notify.notified()).await;
            }
        }
        let t1 = Instant::now();
        let rec1 = sh.received.get();
        let s1 = sample(self.pid);
        let (t0, rec0, s0) = first.unwrap_or((start, base, s1));
        let delivered = rec1 - rec0;
        r.count = delivered;
        r.secs = (t1 - t0).as_secs_f64();
        r.rate = Some(delivered as f64 / r.secs.max(1e-9));
        if delivered > 0 && self.pid.is_some() {
            r.cpu_us_per_msg = Some(s1.cpu_us.saturating_sub(s0.cpu_us) as f64 / delivered as f64);
        }
        r.server_rss = self.pid.map(|_| s1.rss);
        // Drain what is still in flight so that the next phase starts clean.
        let target = base + sent * self.live_subs();
        let _ = self
            .wait_received(target, Instant::now() + Duration::from_millis(1500))
            .await;
        r.errors += self.sh.dropped.get();
        r
    }

    async fn fanlat(&mut self, spec: &str, secs: Duration) -> PhaseResult {
        let mut r = self.result(spec);
        let Some(publ) = self.ensure_publisher().await else {
            r.errors = 1;
            return r;
        };
        let n = self.live_subs();
        r.conns = n;
        if n == 0 {
            r.errors = 1;
            return r;
        }
        let tag = self.sh.next_tag();
        let frame = wire::message(
            self.t.kind,
            self.t.proto,
            Op::Broadcast,
            &wire::payload(20, tag),
        );
        let sh = self.sh.clone();
        let mut completion = hist();
        *sh.copy_hist.borrow_mut() = hist();
        let end = Instant::now() + secs;
        let mut count = 0u64;
        let start = Instant::now();
        while Instant::now() < end && count < 100_000 {
            let target = sh.received.get() + self.live_subs();
            let t0 = Instant::now();
            sh.sent_at.set(t0);
            sh.latency_on.set(true);
            if write_all(&publ, &frame).await.is_err() {
                r.errors += 1;
                break;
            }
            let ok = self
                .wait_received(target, Instant::now() + Duration::from_secs(2))
                .await;
            sh.latency_on.set(false);
            if !ok {
                r.errors += 1;
                break;
            }
            let _ = completion.record(t0.elapsed().as_nanos() as u64);
            count += 1;
        }
        r.count = count;
        r.secs = start.elapsed().as_secs_f64();
        r.rate = Some(count as f64 / r.secs.max(1e-9));
        let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        r.p50_us = Some(us(&completion, 0.5));
        r.p99_us = Some(us(&completion, 0.99));
        r.p999_us = Some(us(&completion, 0.999));
        let copies = sh.copy_hist.borrow();
        r.copy_p50_us = Some(us(&copies, 0.5));
        r.copy_p99_us = Some(us(&copies, 0.99));
        r
    }

    /// Closed-loop echo (`depth` 1, Echo invocations with a Completion) or pipelined echo
    /// (`depth` > 1, sends answered by the server's `send`).
    async fn echo(
        &mut self,
        spec: &str,
        conns: usize,
        depth: usize,
        secs: Duration,
    ) -> PhaseResult {
        let mut r = self.result(spec);
        let (sh, t) = (self.sh.clone(), self.t.clone());
        let (streams, errors) =
            open_many(conns, Instant::now() + Duration::from_secs(60), move || {
                let (sh, t) = (sh.clone(), t.clone());
                async move { connect_ws(&sh, &t).await }
            })
            .await;
        r.errors = errors;
        r.conns = streams.len() as u64;
        let op = if depth > 1 { Op::Send } else { Op::Echo };
        let frame = Rc::new(wire::message(
            self.t.kind,
            self.t.proto,
            op,
            &wire::payload(20, self.sh.next_tag()),
        ));
        let lat = Rc::new(RefCell::new(hist()));
        let done = Rc::new(Cell::new(0u64));
        let sh = self.sh.clone();
        sh.stop.set(false);
        sh.measuring.set(false);
        let mut tasks = Vec::new();
        for s in streams {
            let (sh, frame, lat, done) = (sh.clone(), frame.clone(), lat.clone(), done.clone());
            tasks.push(spawn_local(async move {
                let batch = frame.repeat(depth);
                let mut counter = Counter::default();
                let mut inflight = depth as u64;
                if write_all(&s, &batch).await.is_err() {
                    return;
                }
                let mut t0 = Instant::now();
                loop {
                    if s.readable().await.is_err() {
                        return;
                    }
                    let got = {
                        let mut b = sh.buf.borrow_mut();
                        match s.try_read(&mut b[..]) {
                            Ok(0) => return,
                            Ok(n) => counter.count(&b[..n], &sh.marker.get()),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                            Err(_) => return,
                        }
                    };
                    if got == 0 {
                        continue;
                    }
                    if sh.measuring.get() {
                        done.set(done.get() + got);
                        if depth == 1 {
                            let _ = lat.borrow_mut().record(t0.elapsed().as_nanos() as u64);
                        }
                    }
                    inflight = inflight.saturating_sub(got);
                    if sh.stop.get() {
                        if inflight == 0 {
                            return;
                        }
                        continue;
                    }
                    let k = (depth as u64 - inflight) as usize;
                    t0 = Instant::now();
                    if write_all(&s, &batch[..k * frame.len()]).await.is_err() {
                        return;
                    }
                    inflight += k as u64;
                }
            }));
        }
        tokio::time::sleep(WARMUP).await;
        let s0 = sample(self.pid);
        let t0 = Instant::now();
        sh.measuring.set(true);
        tokio::time::sleep(secs).await;
        sh.measuring.set(false);
        let elapsed = t0.elapsed().as_secs_f64();
        let s1 = sample(self.pid);
        sh.stop.set(true);
        let stop_by = Instant::now() + Duration::from_secs(2);
        for task in tasks {
            let left = stop_by.saturating_duration_since(Instant::now());
            let abort = task.abort_handle();
            if tokio::time::timeout(left, task).await.is_err() {
                abort.abort();
            }
        }
        sh.stop.set(false);
        let n = done.get();
        r.count = n;
        r.secs = elapsed;
        r.rate = Some(n as f64 / elapsed.max(1e-9));
        if n > 0 && self.pid.is_some() {
            r.cpu_us_per_msg = Some(s1.cpu_us.saturating_sub(s0.cpu_us) as f64 / n as f64);
        }
        if depth == 1 {
            let h = lat.borrow();
            r.p50_us = Some(h.value_at_quantile(0.5) as f64 / 1000.0);
            r.p99_us = Some(h.value_at_quantile(0.99) as f64 / 1000.0);
            r.p999_us = Some(h.value_at_quantile(0.999) as f64 / 1000.0);
        }
        r
    }
}

pub fn main(args: &[String]) -> std::io::Result<()> {
    let mut kind = Kind::SignalR;
    let mut proto = Proto::Json;
    let mut addr: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
    let mut path = "/bench".to_owned();
    let mut pid = None;
    let mut src_base = 0u32;
    let mut label = String::new();
    let mut phases = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_default();
        match a.as_str() {
            "--kind" => kind = Kind::parse(&val()).ok_or_else(|| io_err("bad --kind"))?,
            "--proto" => {
                proto = match val().as_str() {
                    "msgpack" | "messagepack" => Proto::MsgPack,
                    _ => Proto::Json,
                }
            }
            "--addr" => addr = val().parse().map_err(|_| io_err("bad --addr"))?,
            "--path" => path = val(),
            "--server-pid" => pid = val().parse().ok(),
            "--src-base" => src_base = val().parse().unwrap_or(0),
            "--label" => label = val(),
            p => phases.push(p.to_owned()),
        }
    }
    let t = Target {
        kind,
        proto,
        addr,
        path,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = LocalSet::new();
    local.block_on(&rt, async move {
        let sh = Rc::new(Shared {
            marker: Cell::new(wire::marker(b'A')),
            tag: Cell::new(b'A'),
            received: Cell::new(0),
            wake_at: Cell::new(u64::MAX),
            notify: Notify::new(),
            buf: RefCell::new(vec![0u8; 64 * 1024]),
            latency_on: Cell::new(false),
            sent_at: Cell::new(Instant::now()),
            copy_hist: RefCell::new(hist()),
            dropped: Cell::new(0),
            src_next: Cell::new(0),
            src_base,
            stop: Cell::new(false),
            measuring: Cell::new(false),
        });
        let mut session = Session {
            sh,
            t,
            pid,
            label,
            subs: Vec::new(),
            publisher: None,
            publisher_reader: None,
        };
        for p in &phases {
            // `NAME=SPEC` labels the phase NAME (the runner's scenario names).
            let (name, spec) = p.split_once('=').unwrap_or((p.as_str(), p.as_str()));
            let mut r = session.run(spec).await;
            r.phase = name.to_owned();
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
        }
        session.close_subs().await;
    });
    Ok(())
}
