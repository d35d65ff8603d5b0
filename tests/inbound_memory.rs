//! What one client can make the server hold in memory on the inbound side while its
//! connection is not being read (a hub method that stops consuming an upload stream is enough):
//! the reading stops (back-pressure), but what was already accepted stays buffered. Measured
//! as the growth of the process's live heap (a counting allocator in this binary).

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use support::*;

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

const MIB: isize = 1 << 20;

/// Starts an upload to `Stall` and fills its 10-item buffer, so that the connection's message
/// loop blocks on the 11th item.
fn stall_records() -> Vec<String> {
    let mut out = vec![format!(
        "{{\"type\":1,\"invocationId\":\"1\",\"target\":\"Stall\",\"arguments\":[],\"streamIds\":[\"s\"]}}{RS}"
    )];
    for i in 0..11 {
        out.push(format!(
            "{{\"type\":2,\"invocationId\":\"s\",\"item\":\"{i}\"}}{RS}"
        ));
    }
    out
}

/// Live heap once it has stopped moving (the server finished reading what it will read).
async fn settled() -> isize {
    let mut last = LIVE.load(Ordering::Relaxed);
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = LIVE.load(Ordering::Relaxed);
        if (now - last).abs() < 64 * 1024 {
            return now;
        }
        last = now;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "bug: a stalled WebSocket connection keeps reading up to 32 inbound frames of up to \
            4 MiB (transport/manager.rs INBOUND_CAPACITY counts frames, not bytes; the frame \
            limit is maximum_post_body_size): one connection held 102 MiB of live heap with \
            1 MiB frames, 204 MiB with 4 MiB frames"]
async fn a_stalled_websocket_connection_holds_a_bounded_inbound_backlog() {
    let server = TestServer::start().await;
    let mut ws = ws_json(&server.ws_url("/hub")).await;
    for r in stall_records() {
        send_text(&mut ws, &r).await;
    }
    // The loop is stuck: an invocation sent now is not answered.
    send_text(&mut ws, &invocation("probe", "Echo", "[\"x\"]")).await;
    let answered = tokio::time::timeout(Duration::from_millis(500), next_text(&mut ws)).await;
    assert!(
        answered.is_err(),
        "the connection is not stalled: {answered:?}"
    );
    let before = settled().await;
    // 40 frames of 1 MiB (INBOUND_FRAME_KIB to change; the frame limit is 4 MiB by default),
    // none of them a complete record.
    let kib: usize = std::env::var("INBOUND_FRAME_KIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let frame = "x".repeat(kib * 1024 - 16);
    let (mut sink, _stream) = futures_util::StreamExt::split(ws);
    let writer = tokio::spawn(async move {
        for _ in 0..40 {
            let msg = tokio_tungstenite::tungstenite::Message::text(frame.clone());
            if futures_util::SinkExt::send(&mut sink, msg).await.is_err() {
                break;
            }
        }
        sink
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = settled().await - before;
    eprintln!(
        "a stalled WebSocket connection sent 40 frames of {kib} KiB holds {} KiB",
        held / 1024
    );
    writer.abort();
    // One frame being read plus the client's own pending write would be ~3 MiB.
    assert!(held <= 6 * MIB, "held {} MiB", held / MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "bug: concurrent POSTs to one stalled SSE/long-polling connection are each read \
            whole (up to 4 MiB) and held while waiting (service.rs send): 64 POSTs of 1 MiB \
            held 88 MiB; the spec answers a concurrent POST with 409"]
async fn concurrent_posts_to_a_stalled_connection_are_bounded() {
    let server = TestServer::start().await;
    let lp = LongPoll::connect(server.addr, "/hub").await;
    let res = lp.post(stall_records().concat()).await;
    assert_eq!(res.status, http::StatusCode::OK);
    // The loop is stuck: an invocation sent now is not answered.
    let res = lp.post(invocation("probe", "Echo", "[\"x\"]")).await;
    assert_eq!(res.status, http::StatusCode::OK);
    let polled = tokio::time::timeout(Duration::from_millis(500), lp.poll()).await;
    assert!(polled.is_err(), "the connection is not stalled: {polled:?}");
    let before = settled().await;
    let body = Bytes::from(vec![b'y'; 1024 * 1024 - 1024]);
    let mut posts = Vec::new();
    for _ in 0..64 {
        let addr = server.addr;
        let url = lp.url();
        let body = body.clone();
        posts.push(tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                http_stream(addr, Method::POST, &url, &[], body),
            )
            .await;
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = settled().await - before;
    eprintln!(
        "64 concurrent 1 MiB POSTs to a stalled connection hold {} KiB",
        held / 1024
    );
    for p in posts {
        p.abort();
    }
    assert!(held <= 8 * MIB, "held {} MiB", held / MIB);
}
