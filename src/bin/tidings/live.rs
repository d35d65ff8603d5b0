//! `MetricsHub` (`/hubs/metrics`): the server's own live figures, pushed from a background
//! task through `HubContext`, with per-subscriber back-pressure.
//!
//! Two streams:
//! - `server`, once a second: connections by transport, messages in/out and invocations per
//!   second, process CPU and resident memory (`/proc/self/stat`, `/proc/self/statm`), the
//!   backplane, per-hub figures;
//! - `pulse`, ten times a second: the message and invocation rates over the last second.
//!
//! `Subscribe(stream, maxPerSecond)` subscribes the caller; `maxPerSecond` null (or at least
//! the stream's own rate) means every update, delivered by one group send encoded once for
//! all such subscribers. A lower `maxPerSecond` gets a throttled subscription, the Rx
//! `Sample`/throttle of the seed: the latest value wins. Updates that come while the
//! subscriber's interval has not elapsed replace each other in a `tokio::sync::watch` slot, so
//! nothing queues, and the subscriber gets fewer but always the freshest updates.
//! `Unsubscribe(stream)` stops it; a disconnect stops them all. Each update arrives as
//! `ReceiveMetrics(stream, value)`.
//!
//! A client that cannot keep up at all (its outbound buffer stays full,
//! `TransportOptions::transport_max_buffer_size`, 1 MiB by default) is closed by the library
//! with `Close{error: "Connection closed with an error.", allowReconnect: true}`: the server
//! never waits for one slow reader. The page shows that close error in its connection panel.
//!
//! `GET /api/metrics` returns the latest `server` snapshot as JSON (short polling).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tidings::transport::TransportType;
use tidings::{Args, Caller, CancellationToken, Groups, Hub, HubContext, HubError, State};
use tokio::sync::watch;

use crate::HubEntry;
use crate::procstat::ProcSampler;

const TICK: Duration = Duration::from_millis(100);
const SERVER_EVERY_TICKS: u32 = 10;

/// The streams and their own rates (updates per second).
const STREAMS: [(&str, f64); 2] = [("server", 1.0), ("pulse", 10.0)];

type Slot = watch::Sender<Option<Arc<Value>>>;

/// The latest value of each stream and the throttled subscriptions.
#[derive(Clone)]
pub struct Feeds {
    slots: Arc<HashMap<&'static str, (f64, Slot)>>,
    /// connection id → stream → the throttled task's cancellation.
    throttled: Arc<Mutex<HashMap<String, HashMap<&'static str, CancellationToken>>>>,
}

impl std::fmt::Debug for Feeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feeds").finish_non_exhaustive()
    }
}

impl Default for Feeds {
    fn default() -> Self {
        let slots = STREAMS
            .iter()
            .map(|(name, rate)| (*name, (*rate, watch::channel(None).0)))
            .collect();
        Self {
            slots: Arc::new(slots),
            throttled: Arc::default(),
        }
    }
}

fn group(stream: &str) -> String {
    format!("stream:{stream}")
}

impl Feeds {
    fn stream(&self, name: &str) -> Result<(&'static str, f64, &Slot), HubError> {
        self.slots
            .get_key_value(name)
            .map(|(k, (rate, slot))| (*k, *rate, slot))
            .ok_or_else(|| {
                HubError::new(format!(
                    "unknown stream '{name}'; streams: {}",
                    STREAMS.map(|s| s.0).join(", ")
                ))
            })
    }

    fn stop_throttled(&self, connection_id: &str, stream: Option<&str>) {
        let mut all = self
            .throttled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(subs) = all.get_mut(connection_id) {
            subs.retain(|s, token| {
                let stop = stream.is_none_or(|x| x == *s);
                if stop {
                    token.cancel();
                }
                !stop
            });
            if subs.is_empty() {
                all.remove(connection_id);
            }
        }
    }

    fn throttled_count(&self, stream: &str) -> usize {
        self.throttled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter(|subs| subs.contains_key(stream))
            .count()
    }

    /// The latest `server` snapshot.
    pub fn latest_snapshot(&self) -> Option<Arc<Value>> {
        self.slots
            .get("server")
            .and_then(|(_, s)| s.borrow().clone())
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Subscription {
    stream: &'static str,
    updates_per_second: f64,
    max_per_second: Option<f64>,
    mode: &'static str,
}

/// Sends the latest value of `slot` to one connection at most once per `every`.
async fn throttled(
    ctx: HubContext,
    connection_id: String,
    stream: &'static str,
    mut rx: watch::Receiver<Option<Arc<Value>>>,
    every: Duration,
    cancel: CancellationToken,
) {
    rx.mark_changed(); // the current value goes out at once
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        let value = rx.borrow_and_update().clone();
        if !ctx.is_connected(&connection_id) {
            return;
        }
        if let Some(value) = value {
            let _ = ctx
                .clients()
                .client(&connection_id)
                .send("ReceiveMetrics", (stream, &*value))
                .await;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

async fn subscribe(
    caller: Caller,
    groups: Groups,
    ctx: HubContext,
    State(feeds): State<Feeds>,
    Args((stream, max_per_second)): Args<(String, Option<f64>)>,
) -> Result<Subscription, HubError> {
    let (name, rate, slot) = feeds.stream(&stream)?;
    let id = caller.connection_id().to_owned();
    // Re-subscribing replaces the previous subscription to that stream.
    feeds.stop_throttled(&id, Some(name));
    let _ = groups.remove(&id, &group(name)).await;
    let max = max_per_second.filter(|m| m.is_finite() && *m > 0.0);
    match max {
        Some(max) if max < rate => {
            let every = Duration::from_secs_f64(1.0 / max.max(0.01));
            let cancel = CancellationToken::new();
            feeds
                .throttled
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(id.clone())
                .or_default()
                .insert(name, cancel.clone());
            tokio::spawn(throttled(ctx, id, name, slot.subscribe(), every, cancel));
            Ok(Subscription {
                stream: name,
                updates_per_second: rate,
                max_per_second: Some(max),
                mode: "throttled",
            })
        }
        _ => {
            groups.add(&id, &group(name)).await?;
            let current = slot.borrow().clone();
            if let Some(value) = current {
                caller.send("ReceiveMetrics", (name, &*value)).await?;
            }
            Ok(Subscription {
                stream: name,
                updates_per_second: rate,
                max_per_second: None,
                mode: "every",
            })
        }
    }
}

async fn unsubscribe(
    caller: Caller,
    groups: Groups,
    State(feeds): State<Feeds>,
    Args(stream): Args<String>,
) -> Result<(), HubError> {
    let (name, _, _) = feeds.stream(&stream)?;
    feeds.stop_throttled(caller.connection_id(), Some(name));
    let _ = groups.remove(caller.connection_id(), &group(name)).await;
    Ok(())
}

/// The metrics hub.
pub fn hub(feeds: &Feeds) -> Hub {
    crate::hub_builder("MetricsHub")
        .state(feeds.clone())
        .method("Subscribe", subscribe)
        .method("Unsubscribe", unsubscribe)
        .on_disconnected(|caller: Caller, State(feeds): State<Feeds>| async move {
            feeds.stop_throttled(caller.connection_id(), None);
        })
        .build()
}

#[derive(Clone, Copy, Default)]
struct Totals {
    messages_in: u64,
    messages_out: u64,
    invocations: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct Rates {
    messages_in_per_second: f64,
    messages_out_per_second: f64,
    invocations_per_second: f64,
}

fn totals(hubs: &[HubEntry]) -> Totals {
    hubs.iter().fold(Totals::default(), |t, h| {
        let s = h.hub.stats();
        Totals {
            messages_in: t.messages_in + s.messages_in(),
            messages_out: t.messages_out + s.messages_out(),
            invocations: t.invocations + s.invocations(),
        }
    })
}

/// Rates over a sliding one-second window of samples.
#[derive(Default)]
struct Window(VecDeque<(Instant, Totals)>);

impl Window {
    fn push(&mut self, now: Instant, t: Totals) -> Rates {
        self.0.push_back((now, t));
        while self.0.len() > 2 && now.duration_since(self.0[1].0) >= Duration::from_secs(1) {
            self.0.pop_front();
        }
        let (then, old) = self.0[0];
        let secs = now.duration_since(then).as_secs_f64();
        if secs <= 0.0 {
            return Rates::default();
        }
        let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        Rates {
            messages_in_per_second: per(t.messages_in, old.messages_in),
            messages_out_per_second: per(t.messages_out, old.messages_out),
            invocations_per_second: per(t.invocations, old.invocations),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn connections(hubs: &[HubEntry]) -> Value {
    let by = |t: TransportType| -> i64 { hubs.iter().map(|h| h.hub.stats().connections(t)).sum() };
    let (ws, sse, lp) = (
        by(TransportType::WebSockets),
        by(TransportType::ServerSentEvents),
        by(TransportType::LongPolling),
    );
    serde_json::json!({
        "webSockets": ws, "serverSentEvents": sse, "longPolling": lp, "total": ws + sse + lp,
    })
}

/// The running sampler.
#[derive(Debug)]
pub struct Live {
    feeds: Feeds,
}

impl Live {
    /// Starts the sampler that feeds `feeds` and the MetricsHub's subscribers.
    pub fn start(
        feeds: Feeds,
        ctx: HubContext,
        hubs: Arc<[HubEntry]>,
        backplane: &'static str,
    ) -> Self {
        let task_feeds = feeds.clone();
        tokio::spawn(async move {
            let feeds = task_feeds;
            let started = Instant::now();
            let mut proc = ProcSampler::new();
            let _ = proc.sample();
            let mut window = Window::default();
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n: u32 = 0;
            loop {
                tick.tick().await;
                n = n.wrapping_add(1);
                let rates = window.push(Instant::now(), totals(&hubs));
                let pulse = serde_json::json!({
                    "timestampMs": now_ms(),
                    "messagesInPerSecond": rates.messages_in_per_second,
                    "messagesOutPerSecond": rates.messages_out_per_second,
                    "invocationsPerSecond": rates.invocations_per_second,
                });
                publish(&ctx, &feeds, "pulse", pulse).await;
                if n % SERVER_EVERY_TICKS == 1 {
                    let p = proc.sample();
                    let t = totals(&hubs);
                    let per_hub: Vec<Value> = hubs
                        .iter()
                        .map(|h| {
                            let s = h.hub.stats();
                            let conns: i64 =
                                TransportType::ALL.iter().map(|t| s.connections(*t)).sum();
                            serde_json::json!({
                                "name": h.name, "path": h.path, "connections": conns,
                                "messagesIn": s.messages_in(), "messagesOut": s.messages_out(),
                                "invocations": s.invocations(),
                            })
                        })
                        .collect();
                    let subscribers = |s: &str| {
                        serde_json::json!({
                            "every": ctx.groups().members(&group(s)).len(),
                            "throttled": feeds.throttled_count(s),
                        })
                    };
                    let snapshot = serde_json::json!({
                        "timestampMs": now_ms(),
                        "uptimeSeconds": started.elapsed().as_secs_f64(),
                        "connections": connections(&hubs),
                        "messagesInPerSecond": rates.messages_in_per_second,
                        "messagesOutPerSecond": rates.messages_out_per_second,
                        "invocationsPerSecond": rates.invocations_per_second,
                        "cpuPercent": p.cpu_percent,
                        "cpuSecondsTotal": p.cpu_seconds_total,
                        "residentMemoryBytes": p.resident_bytes,
                        "backplane": backplane,
                        "totals": {
                            "messagesIn": t.messages_in, "messagesOut": t.messages_out,
                            "invocations": t.invocations,
                        },
                        "hubs": per_hub,
                        "subscribers": { "server": subscribers("server"), "pulse": subscribers("pulse") },
                    });
                    publish(&ctx, &feeds, "server", snapshot).await;
                }
            }
        });
        Self { feeds }
    }

    /// `/hubs/metrics` and `GET /api/metrics`.
    pub fn routes(&self, hub: Hub) -> Router {
        let feeds = self.feeds.clone();
        Router::new()
            .nest_service("/hubs/metrics", hub.into_service())
            .route(
                "/api/metrics",
                get(move || {
                    let latest = feeds.latest_snapshot();
                    async move {
                        match latest {
                            Some(v) => axum::Json((*v).clone()),
                            None => axum::Json(serde_json::json!({ "status": "starting" })),
                        }
                    }
                }),
            )
    }
}

/// Stores the stream's latest value (throttled subscribers read it) and sends it to the
/// stream's every-update group, encoded once.
async fn publish(ctx: &HubContext, feeds: &Feeds, stream: &'static str, value: Value) {
    let Some((_, slot)) = feeds.slots.get(stream) else {
        return;
    };
    let _ = ctx
        .clients()
        .group(group(stream))
        .send("ReceiveMetrics", (stream, &value))
        .await;
    slot.send_replace(Some(Arc::new(value)));
}
