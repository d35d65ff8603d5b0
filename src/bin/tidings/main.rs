//! `tidings`: the server binary. Wire-up only: the command line, logging, the demo hubs (one
//! module each), the HTTP API beside them, Prometheus `/metrics`, `/healthz`, the demo pages,
//! and a graceful stop on SIGTERM/ctrl-c.
//!
//! ```text
//! /hubs/chat           ChatHub           chat.rs
//! /hubs/metrics        MetricsHub        live.rs        GET /api/metrics
//! /hubs/dashboard      DashboardHub      dashboard.rs
//! /hubs/notifications  NotificationsHub  notifications.rs  POST /api/notifications
//! /hubs/collaboration  CollaborationHub  collaboration.rs  GET /api/documents/{id}/history
//! /metrics /healthz    telemetry.rs
//! /                    js-client-demo/public (web.rs)
//! ```

#![forbid(unsafe_code)]

mod chat;
mod cli;
mod collaboration;
mod dashboard;
mod live;
mod notifications;
mod procstat;
mod telemetry;
mod web;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use clap::Parser;
use serde::Serialize;
use tidings::{Caller, Hub, HubBuilder};

/// The Redis URL when a backplane is configured (`--redis`), set once at start.
static REDIS_URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// What the backplane is, for `/healthz` and the metrics snapshot.
pub fn backplane_name() -> &'static str {
    if REDIS_URL.get().is_some() {
        "redis"
    } else {
        "in-memory"
    }
}

/// One hub served by the binary.
#[derive(Clone, Debug)]
pub struct HubEntry {
    /// Its name, in logs and metrics labels.
    pub name: &'static str,
    /// Where it is mounted.
    pub path: &'static str,
    /// The hub.
    pub hub: Hub,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConnectionFacts {
    connection_id: String,
    transport: &'static str,
    user: Option<String>,
    hub: &'static str,
}

/// A hub builder with what every demo hub has: its name, the connection-duration hooks, and
/// `GetConnectionInfo` (the transport as the server sees it, shown by the page).
pub fn hub_builder(name: &'static str) -> HubBuilder {
    let builder =
        Hub::builder()
            .name(name)
            .method("GetConnectionInfo", move |caller: Caller| async move {
                ConnectionFacts {
                    connection_id: caller.connection_id().to_owned(),
                    transport: caller.info().transport.name(),
                    user: caller.user_id().map(str::to_owned),
                    hub: name,
                }
            });
    let builder = match REDIS_URL.get() {
        Some(url) => builder.backplane(tidings::backplane::RedisBackplane::new(url.as_str())),
        None => builder,
    };
    telemetry::track_connections(builder, name)
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tidings=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = cli::Cli::parse();
    let prometheus = Arc::new(telemetry::install());
    if let Some(url) = &cli.redis {
        let _ = REDIS_URL.set(url.clone());
    }

    let chat = chat::hub();
    let dashboard = dashboard::hub();
    let notifications = notifications::Notifications::new();
    let collaboration = match &cli.redis {
        Some(url) => {
            let log = tidings::backplane::RedisEventLog::new(url, "tidings", 10_000)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            collaboration::Collaboration::new(Arc::new(log))
        }
        None => collaboration::Collaboration::in_memory(),
    };
    let feeds = live::Feeds::default();
    let metrics_hub = live::hub(&feeds);
    let hubs: Arc<[HubEntry]> = Arc::from(vec![
        HubEntry {
            name: "ChatHub",
            path: "/hubs/chat",
            hub: chat.clone(),
        },
        HubEntry {
            name: "MetricsHub",
            path: "/hubs/metrics",
            hub: metrics_hub.clone(),
        },
        HubEntry {
            name: "DashboardHub",
            path: "/hubs/dashboard",
            hub: dashboard.clone(),
        },
        HubEntry {
            name: "NotificationsHub",
            path: "/hubs/notifications",
            hub: notifications.hub().clone(),
        },
        HubEntry {
            name: "CollaborationHub",
            path: "/hubs/collaboration",
            hub: collaboration.hub().clone(),
        },
    ]);
    let live = live::Live::start(feeds, metrics_hub.context(), hubs.clone(), backplane_name());

    let app = Router::new()
        .nest_service("/hubs/chat", chat.into_service())
        .nest_service("/hubs/dashboard", dashboard.into_service())
        .merge(live.routes(metrics_hub))
        .merge(notifications.routes())
        .merge(collaboration.routes())
        .route(
            "/metrics",
            get({
                let hubs = hubs.clone();
                move || telemetry::metrics_route(prometheus.clone(), hubs.clone())
            }),
        )
        .route("/healthz", get(|| telemetry::healthz(backplane_name())));
    let app = web::serve_pages(app, &cli.static_dir());
    let app = web::cors(app, &cli.cors_origins);

    let listener = tokio::net::TcpListener::bind(&cli.listen).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    tracing::info!(%addr, backplane = backplane_name(), "tidings is serving");

    let draining = hubs.clone();
    let graceful = async move {
        shutdown_signal().await;
        tracing::info!("stopping: draining every hub (Close with allowReconnect, 5 s at most)");
        let drains = draining.iter().map(|h| h.hub.drain(Duration::from_secs(5)));
        let left: usize = futures_util::future::join_all(drains)
            .await
            .into_iter()
            .sum();
        if left > 0 {
            tracing::warn!(left, "connections still open after the drain deadline");
        }
    };
    // tidings::server: hyper with a header-read timeout (slowloris), limits and a bounded
    // graceful stop (held SSE and long-polling responses cannot stall it).
    tidings::server::serve(
        listener,
        tidings::server::map_request_body(app, axum::body::Body::new),
        graceful,
    )
    .await?;
    Ok(())
}
