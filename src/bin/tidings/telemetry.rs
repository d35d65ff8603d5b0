//! `GET /metrics` (Prometheus text format, through the `metrics` facade and
//! `metrics-exporter-prometheus`) and `GET /healthz`.
//!
//! Names follow ASP.NET Core's OpenTelemetry instruments, dots turned into underscores as the
//! OTel Prometheus exporter does: `signalr_server_active_connections{signalr_transport}` and
//! the `signalr_server_connection_duration_seconds` histogram. What .NET does not measure
//! (messages, invocations, per-method calls and errors) is named `tidings_*`.
//!
//! Counters and gauges are copied from each hub's [`tidings::hub::HubStats`] when scraped.
//! The connection duration is recorded by hooks this module adds to every hub (the library
//! does not record it itself), so it has no `signalr_connection_status` label: the library
//! does not tell a hook whether a connection ended normally or timed out.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::header;
use axum::response::IntoResponse;
use dashmap::DashMap;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tidings::transport::TransportType;
use tidings::{Caller, HubBuilder};

use crate::HubEntry;

const ACTIVE_CONNECTIONS: &str = "signalr.server.active_connections";
const CONNECTION_DURATION: &str = "signalr.server.connection.duration_seconds";

/// When each live connection started, for the duration histogram.
static STARTED: LazyLock<DashMap<String, Instant>> = LazyLock::new(DashMap::new);

/// The OTel attribute value of a transport.
pub fn transport_label(t: TransportType) -> &'static str {
    match t {
        TransportType::WebSockets => "web_sockets",
        TransportType::ServerSentEvents => "server_sent_events",
        TransportType::LongPolling => "long_polling",
    }
}

/// Installs the Prometheus recorder. Call once, before any hub is built.
pub fn install() -> PrometheusHandle {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(CONNECTION_DURATION.replace('.', "_")),
            &[
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
            ],
        )
        .expect("static bucket list is not empty")
        .install_recorder()
        .expect("the Prometheus recorder is installed once");
    // Histograms and idle series need periodic upkeep when no HTTP listener does it.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    handle
}

/// Adds the connection-duration hooks to a hub.
pub fn track_connections(builder: HubBuilder, hub: &'static str) -> HubBuilder {
    builder
        .on_connected(|caller: Caller| async move {
            STARTED.insert(caller.connection_id().to_owned(), Instant::now());
        })
        .on_disconnected(move |caller: Caller| async move {
            if let Some((_, started)) = STARTED.remove(caller.connection_id()) {
                metrics::histogram!(
                    CONNECTION_DURATION,
                    "signalr.transport" => transport_label(caller.info().transport),
                    "signalr.hub" => hub,
                )
                .record(started.elapsed().as_secs_f64());
            }
        })
}

/// Copies every hub's counters into the recorder, then renders the exposition.
pub fn render(handle: &PrometheusHandle, hubs: &[HubEntry]) -> String {
    for entry in hubs {
        let stats = entry.hub.stats();
        let hub = entry.name;
        for t in TransportType::ALL {
            metrics::gauge!(ACTIVE_CONNECTIONS, "signalr.transport" => transport_label(t), "signalr.hub" => hub)
                .set(stats.connections(t) as f64);
        }
        metrics::counter!("tidings.connections_total", "signalr.hub" => hub)
            .absolute(stats.connections_total());
        metrics::counter!("tidings.messages_received_total", "signalr.hub" => hub)
            .absolute(stats.messages_in());
        metrics::counter!("tidings.messages_sent_total", "signalr.hub" => hub)
            .absolute(stats.messages_out());
        metrics::counter!("tidings.invocations_total", "signalr.hub" => hub)
            .absolute(stats.invocations());
        for (method, m) in stats.methods() {
            let labels = [("signalr.hub", hub.to_owned()), ("rpc.method", method)];
            metrics::counter!("tidings.method_calls_total", &labels).absolute(m.calls);
            metrics::counter!("tidings.method_errors_total", &labels).absolute(m.errors);
            metrics::gauge!("tidings.method_time_seconds", &labels).set(m.total_time.as_secs_f64());
        }
    }
    handle.render()
}

/// `GET /metrics`.
pub async fn metrics_route(
    handle: Arc<PrometheusHandle>,
    hubs: Arc<[HubEntry]>,
) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&handle, &hubs),
    )
}

/// `GET /healthz`.
pub async fn healthz(backplane: &'static str) -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok", "backplane": backplane }))
}
