//! Opt-in soak (`scripts/soak.sh`, or `cargo test --release --test soak -- --ignored
//! --nocapture`): thousands of WebSocket, SSE and long-polling clients with churn, a steady
//! broadcast and group traffic, then everyone leaves. Reports the live heap (a counting
//! allocator in this binary), RSS, threads, open descriptors and the server runtime's live tasks
//! before, during and after, and fails on leaks or on errors seen by a canary.
//!
//! Sizes come from the environment: `SOAK_SECS` (60), `SOAK_WS` (2000), `SOAK_SSE` (200),
//! `SOAK_LP` (200), `SOAK_RATE` broadcasts per second (50), `SOAK_CHURN` clients replaced per
//! second (20). Server and clients share this process on separate runtimes.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use support::{Config, RS, TestServer};
use tidings::TransportOptions;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Live heap bytes of the whole process.
struct LiveHeap;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator; only counts sizes.
unsafe impl GlobalAlloc for LiveHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: LiveHeap = LiveHeap;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One reading of the process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    live_heap: isize,
    rss_kib: u64,
    threads: u64,
    fds: usize,
    server_tasks: usize,
}

fn status_field(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn sample(server_rt: &tokio::runtime::Handle) -> Sample {
    Sample {
        live_heap: LIVE.load(Ordering::Relaxed),
        rss_kib: status_field("VmRSS:"),
        threads: status_field("Threads:"),
        fds: support::open_fds(),
        server_tasks: server_rt.metrics().num_alive_tasks(),
    }
}

#[derive(Default)]
struct Counters {
    /// Hub messages (records) received, per transport.
    ws_messages: AtomicU64,
    sse_events: AtomicU64,
    lp_messages: AtomicU64,
    connects: AtomicU64,
    client_errors: AtomicU64,
    canary_calls: AtomicU64,
    canary_errors: AtomicU64,
    /// Broadcast latency histogram, 1 ms buckets up to 1 s (last bucket: more).
    latency_ms: Vec<AtomicU64>,
}

impl Counters {
    fn new() -> Self {
        Self {
            latency_ms: (0..1001).map(|_| AtomicU64::new(0)).collect(),
            ..Default::default()
        }
    }

    fn p99(&self) -> Option<u64> {
        let counts: Vec<u64> = self
            .latency_ms
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let mut seen = 0;
        for (ms, c) in counts.iter().enumerate() {
            seen += c;
            if seen * 100 >= total * 99 {
                return Some(ms as u64);
            }
        }
        None
    }
}

/// The broadcast's argument: microseconds since `epoch` when it was sent.
fn record_latency(text: &str, epoch: Instant, counters: &Counters) {
    for record in text.split(RS).filter(|r| !r.is_empty()) {
        if let Some(at) = record.find("\"arguments\":[") {
            let rest = &record[at + 13..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if let Ok(sent) = rest[..end].parse::<u64>() {
                let now = epoch.elapsed().as_micros() as u64;
                let ms = (now.saturating_sub(sent) / 1000).min(1000) as usize;
                counters.latency_ms[ms].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

const HANDSHAKE: &str = "{\"protocol\":\"json\",\"version\":1}\u{1e}";

/// One WebSocket client's life: connect, handshake, join a group, read until told to leave.
async fn ws_client(
    addr: SocketAddr,
    group: usize,
    epoch: Instant,
    counters: Arc<Counters>,
    leave: tokio_util::sync::CancellationToken,
) {
    let url = format!("ws://{addr}/hub");
    let Ok(Ok((mut ws, _))) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async(url),
    )
    .await
    else {
        counters.client_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    counters.connects.fetch_add(1, Ordering::Relaxed);
    let join = format!(
        "{HANDSHAKE}{{\"type\":1,\"target\":\"AddToGroup\",\"arguments\":[\"g{group}\"]}}\u{1e}"
    );
    if ws.send(Message::text(join)).await.is_err() {
        counters.client_errors.fetch_add(1, Ordering::Relaxed);
        return;
    }
    loop {
        tokio::select! {
            () = leave.cancelled() => {
                let _ = ws.send(Message::text("{\"type\":7}\u{1e}")).await;
                let _ = ws.close(None).await;
                return;
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let records = t.as_bytes().iter().filter(|&&b| b == 0x1e).count();
                    counters.ws_messages.fetch_add(records as u64, Ordering::Relaxed);
                    record_latency(t.as_str(), epoch, &counters);
                }
                Some(Ok(_)) => {}
                _ => {
                    if !leave.is_cancelled() {
                        counters.client_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
    }
}

async fn request(
    addr: SocketAddr,
    method: Method,
    uri: &str,
    accept_sse: bool,
    body: Bytes,
) -> Option<http::Response<hyper::body::Incoming>> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", addr.to_string());
    if accept_sse {
        req = req.header("accept", "text/event-stream");
    }
    sender
        .send_request(req.body(Full::new(body)).ok()?)
        .await
        .ok()
}

async fn negotiate(addr: SocketAddr) -> Option<String> {
    let res = request(
        addr,
        Method::POST,
        "/hub/negotiate?negotiateVersion=1",
        false,
        Bytes::new(),
    )
    .await?;
    let body = res.into_body().collect().await.ok()?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v["connectionToken"].as_str().map(str::to_owned)
}

async fn sse_client(
    addr: SocketAddr,
    counters: Arc<Counters>,
    leave: tokio_util::sync::CancellationToken,
) {
    let run = async {
        let token = negotiate(addr).await?;
        let url = format!("/hub?id={token}");
        let res = request(addr, Method::GET, &url, true, Bytes::new()).await?;
        let mut body = res.into_body();
        let post = request(addr, Method::POST, &url, false, Bytes::from(HANDSHAKE)).await?;
        if !post.status().is_success() {
            return None;
        }
        counters.connects.fetch_add(1, Ordering::Relaxed);
        loop {
            tokio::select! {
                () = leave.cancelled() => return Some(()),
                frame = body.frame() => match frame {
                    Some(Ok(f)) => {
                        if let Ok(data) = f.into_data() {
                            let n = data.iter().filter(|&&b| b == 0x1e).count();
                            counters.sse_events.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                    _ => return if leave.is_cancelled() { Some(()) } else { None },
                }
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(3600), run)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        counters.client_errors.fetch_add(1, Ordering::Relaxed);
    }
}

async fn lp_client(
    addr: SocketAddr,
    counters: Arc<Counters>,
    leave: tokio_util::sync::CancellationToken,
) {
    let run = async {
        let token = negotiate(addr).await?;
        let url = format!("/hub?id={token}");
        let first = request(addr, Method::GET, &url, false, Bytes::new()).await?;
        let _ = first.into_body().collect().await;
        let post = request(addr, Method::POST, &url, false, Bytes::from(HANDSHAKE)).await?;
        if !post.status().is_success() {
            return None;
        }
        counters.connects.fetch_add(1, Ordering::Relaxed);
        loop {
            let poll = async {
                let res = request(addr, Method::GET, &url, false, Bytes::new()).await?;
                let status = res.status();
                let body = res.into_body().collect().await.ok()?.to_bytes();
                Some((status, body))
            };
            tokio::select! {
                () = leave.cancelled() => {
                    let _ = request(addr, Method::DELETE, &url, false, Bytes::new()).await;
                    return Some(());
                }
                r = poll => {
                    let (status, body) = r?;
                    if status != http::StatusCode::OK {
                        return None;
                    }
                    let n = body.iter().filter(|&&b| b == 0x1e).count();
                    counters.lp_messages.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(3600), run)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        counters.client_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// A client slot: a kind and the token that makes its current client leave.
struct Slot {
    kind: u8,
    leave: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn spawn_client(
    rt: &tokio::runtime::Handle,
    kind: u8,
    index: usize,
    addr: SocketAddr,
    epoch: Instant,
    counters: &Arc<Counters>,
) -> Slot {
    let leave = tokio_util::sync::CancellationToken::new();
    let counters = counters.clone();
    let l = leave.clone();
    let task = match kind {
        0 => rt.spawn(ws_client(addr, index % 20, epoch, counters, l)),
        1 => rt.spawn(sse_client(addr, counters, l)),
        _ => rt.spawn(lp_client(addr, counters, l)),
    };
    Slot { kind, leave, task }
}

#[test]
#[ignore = "opt-in soak: scripts/soak.sh"]
fn soak() {
    let secs = env("SOAK_SECS", 60);
    let n_ws = env("SOAK_WS", 2000) as usize;
    let n_sse = env("SOAK_SSE", 200) as usize;
    let n_lp = env("SOAK_LP", 200) as usize;
    let rate = env("SOAK_RATE", 50).max(1);
    let churn = env("SOAK_CHURN", 20) as usize;

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("clients")
        .enable_all()
        .build()
        .unwrap();
    let server = server_rt.block_on(TestServer::with(Config {
        transport: TransportOptions {
            disconnect_timeout: Duration::from_secs(2),
            ..TransportOptions::default()
        },
        ..Config::default()
    }));
    let addr = server.addr;
    let context = server.context.clone();
    std::thread::sleep(Duration::from_millis(200));
    let baseline = sample(server_rt.handle());
    eprintln!("baseline: {baseline:?}");

    let counters = Arc::new(Counters::new());
    let epoch = Instant::now();
    let ch = client_rt.handle().clone();

    // Ramp up in batches, so the accept loop and the handshakes keep pace.
    let mut slots: Vec<Slot> = Vec::new();
    let kinds: Vec<u8> = std::iter::repeat_n(0u8, n_ws)
        .chain(std::iter::repeat_n(1u8, n_sse))
        .chain(std::iter::repeat_n(2u8, n_lp))
        .collect();
    for (i, &kind) in kinds.iter().enumerate() {
        slots.push(spawn_client(&ch, kind, i, addr, epoch, &counters));
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let total = kinds.len();
    let ramp = Instant::now();
    while context.connection_count() < total && ramp.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "ramped to {} hub connections in {:?}",
        context.connection_count(),
        epoch.elapsed()
    );

    // The canary: an Echo round trip ten times a second, on its own connection.
    let stop = Arc::new(AtomicBool::new(false));
    let canary = {
        let counters = counters.clone();
        let stop = stop.clone();
        ch.spawn(async move {
            let url = format!("ws://{addr}/hub");
            let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
                counters.canary_errors.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let _ = ws.send(Message::text(HANDSHAKE)).await;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let call = format!(
                    "{{\"type\":1,\"invocationId\":\"{i}\",\"target\":\"Echo\",\"arguments\":[\"c{i}\"]}}\u{1e}"
                );
                if ws.send(Message::text(call)).await.is_err() {
                    counters.canary_errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let want = format!("\"result\":\"c{i}\"");
                let got = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Some(Ok(m)) = ws.next().await {
                        if let Message::Text(t) = m
                            && t.as_str().contains(&want)
                        {
                            return true;
                        }
                    }
                    false
                })
                .await;
                if got != Ok(true) {
                    counters.canary_errors.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.canary_calls.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = ws.close(None).await;
        })
    };

    // The load: broadcasts to everyone at `rate`, a group message every tenth tick, and
    // `churn` clients replaced every second.
    let sent = Arc::new(AtomicU64::new(0));
    let broadcaster = {
        let context = context.clone();
        let stop = stop.clone();
        let sent = sent.clone();
        server_rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let now = epoch.elapsed().as_micros() as u64;
                let _ = context.clients().all().send("Broadcast", (now,)).await;
                if n.is_multiple_of(10) {
                    let group = format!("g{}", n % 20);
                    let _ = context
                        .clients()
                        .group(&group)
                        .send("GroupMessage", (now,))
                        .await;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let warmup = Duration::from_secs((secs / 10).clamp(5, 120));
    let run_for = Duration::from_secs(secs);
    let started = Instant::now();
    let mut after_warmup = None;
    let mut next_churn = 0usize;
    let mut peak = sample(server_rt.handle());
    while started.elapsed() < run_for {
        std::thread::sleep(Duration::from_secs(1));
        for _ in 0..churn {
            let i = next_churn % slots.len();
            next_churn = next_churn.wrapping_mul(7919).wrapping_add(104_729) % slots.len().max(1);
            let kind = slots[i].kind;
            slots[i].leave.cancel();
            slots[i] = spawn_client(&ch, kind, i, addr, epoch, &counters);
        }
        let s = sample(server_rt.handle());
        if s.live_heap > peak.live_heap {
            peak = s;
        }
        if after_warmup.is_none() && started.elapsed() >= warmup {
            after_warmup = Some(s);
            eprintln!("after warm-up: {s:?}");
        }
        if started.elapsed().as_secs().is_multiple_of(60) {
            eprintln!(
                "t={:?} {s:?} hub connections {} ws msgs {} sse events {} lp msgs {} errors {}",
                started.elapsed(),
                context.connection_count(),
                counters.ws_messages.load(Ordering::Relaxed),
                counters.sse_events.load(Ordering::Relaxed),
                counters.lp_messages.load(Ordering::Relaxed),
                counters.client_errors.load(Ordering::Relaxed),
            );
        }
    }
    let end = sample(server_rt.handle());
    let connections_at_end = context.connection_count();
    eprintln!("end of load: {end:?}, {connections_at_end} hub connections");

    // Everyone leaves.
    stop.store(true, Ordering::Relaxed);
    for s in &slots {
        s.leave.cancel();
    }
    client_rt.block_on(async {
        for s in slots.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), s.task).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), canary).await;
    });
    server_rt.block_on(async {
        let _ = broadcaster.await;
        server.wait_no_connections().await;
    });
    // Let the reaper's grace period and the connection tasks finish.
    std::thread::sleep(Duration::from_secs(7));
    let after = sample(server_rt.handle());

    let warm = after_warmup.unwrap_or(end);
    let heap_drift = (end.live_heap - warm.live_heap) as f64 / warm.live_heap.max(1) as f64 * 100.0;
    let rss_drift = (end.rss_kib as f64 - warm.rss_kib as f64) / warm.rss_kib.max(1) as f64 * 100.0;
    let c = &counters;
    eprintln!(
        "\nsoak: {secs}s, {n_ws} WS + {n_sse} SSE + {n_lp} LP, {rate} broadcasts/s, churn {churn}/s\n\
         connects {} (client errors {}), broadcasts sent {}, delivered: ws {} sse {} lp {}\n\
         broadcast latency p99 (WS) {:?} ms; canary {} calls, {} errors\n\
         live heap: baseline {} B, after warm-up {} B, end {} B (drift {heap_drift:+.1}%), after all left {} B\n\
         RSS: baseline {} KiB, after warm-up {} KiB, end {} KiB (drift {rss_drift:+.1}%), after {} KiB\n\
         threads: {} -> {} -> {}; fds: {} -> {} -> {}; server tasks: {} -> {} -> {}",
        c.connects.load(Ordering::Relaxed),
        c.client_errors.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed),
        c.ws_messages.load(Ordering::Relaxed),
        c.sse_events.load(Ordering::Relaxed),
        c.lp_messages.load(Ordering::Relaxed),
        c.p99(),
        c.canary_calls.load(Ordering::Relaxed),
        c.canary_errors.load(Ordering::Relaxed),
        baseline.live_heap,
        warm.live_heap,
        end.live_heap,
        after.live_heap,
        baseline.rss_kib,
        warm.rss_kib,
        end.rss_kib,
        after.rss_kib,
        baseline.threads,
        end.threads,
        after.threads,
        baseline.fds,
        end.fds,
        after.fds,
        baseline.server_tasks,
        end.server_tasks,
        after.server_tasks,
    );

    assert_eq!(c.canary_errors.load(Ordering::Relaxed), 0, "canary errors");
    assert!(
        connections_at_end + 2 * churn >= total,
        "only {connections_at_end} of {total} clients connected at the end"
    );
    assert!(
        after.server_tasks <= baseline.server_tasks + 5,
        "server tasks leaked: {} -> {}",
        baseline.server_tasks,
        after.server_tasks
    );
    assert!(
        after.fds <= baseline.fds + 5,
        "fds leaked: {} -> {}",
        baseline.fds,
        after.fds
    );
    // Everything the run allocated is back, but for a small allowance (tokio's and the
    // allocator's own growth, the drained slot vector).
    assert!(
        after.live_heap <= baseline.live_heap + 4 * 1024 * 1024,
        "live heap after everyone left: {} B, baseline {} B",
        after.live_heap,
        baseline.live_heap
    );
    assert!(
        heap_drift < 5.0,
        "live heap grew {heap_drift:.1}% after warm-up"
    );
    drop(server);
}
