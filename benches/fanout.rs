//! In-memory fan-out: one `HubContext::clients().all().send(..)` to 1 000 connections, each
//! with a real hub connection behind the Server-Sent Events transport of an in-process
//! `HubService` (no sockets). It measures what a broadcast costs before any IO: encoding once
//! per protocol and queueing the shared bytes into 1 000 outbound buffers (the published
//! ASP.NET figure is ~1.4 µs per recipient into in-memory pipes). `cargo bench --bench fanout`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::Request;
use http_body_util::{BodyExt, Full};
use tidings::service::ResponseBody;
use tidings::{Hub, HubContext, HubService};
use tower_service::Service;

const RECIPIENTS: usize = 1_000;

async fn call(svc: &mut HubService, req: Request<Full<Bytes>>) -> http::Response<ResponseBody> {
    match svc.call(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    }
}

/// Opens `n` SSE connections in-process; returns their (unread) event-stream bodies.
async fn connect(svc: &mut HubService, ctx: &HubContext, n: usize) -> Vec<ResponseBody> {
    let mut bodies = Vec::with_capacity(n);
    for _ in 0..n {
        let res = call(
            svc,
            Request::post("/hub/negotiate?negotiateVersion=1")
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await;
        let body = res.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("negotiate json");
        let token = v["connectionToken"].as_str().expect("token").to_owned();
        let res = call(
            svc,
            Request::get(format!("/hub?id={token}"))
                .header("accept", "text/event-stream")
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await;
        bodies.push(res.into_body());
        let res = call(
            svc,
            Request::post(format!("/hub?id={token}"))
                .body(Full::new(Bytes::from_static(
                    b"{\"protocol\":\"json\",\"version\":1}\x1e",
                )))
                .expect("request"),
        )
        .await;
        assert_eq!(res.status(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ctx.connection_count() < n && Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    assert_eq!(ctx.connection_count(), n, "every connection registered");
    bodies
}

/// Takes every event already queued on each body (none is waited for).
fn drain(bodies: &mut [ResponseBody]) {
    for b in bodies {
        while let Some(Some(Ok(_))) = b.frame().now_or_never() {}
    }
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let hub = Hub::builder().build();
    let ctx = hub.context();
    let mut svc = hub.into_service();
    let mut bodies = rt.block_on(connect(&mut svc, &ctx, RECIPIENTS));
    drain(&mut bodies);
    let payload = "x".repeat(20);
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(RECIPIENTS as u64));
    group.bench_function("all/1000/20B", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                // Drain between rounds (untimed) so no outbound buffer ever fills.
                let round = (iters - done).min(200);
                let start = Instant::now();
                rt.block_on(async {
                    for _ in 0..round {
                        ctx.clients()
                            .all()
                            .send("send", (black_box(payload.as_str()),))
                            .await
                            .expect("send");
                    }
                });
                spent += start.elapsed();
                done += round;
                drain(&mut bodies);
            }
            spent
        })
    });
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
