//! Live counters of a hub, cheap enough to update on every message.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::transport::TransportType;

/// Counters of one hub (all its paths).
#[derive(Debug, Default)]
pub struct HubStats {
    connections: [AtomicI64; 3],
    connections_total: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    invocations: AtomicU64,
    methods: Mutex<HashMap<String, MethodStats>>,
}

/// Counters of one hub method.
#[derive(Debug, Default, Clone)]
pub struct MethodStats {
    /// Completed invocations.
    pub calls: u64,
    /// Invocations that failed.
    pub errors: u64,
    /// Total time spent, for a mean.
    pub total_time: Duration,
}

fn index(t: TransportType) -> usize {
    match t {
        TransportType::WebSockets => 0,
        TransportType::ServerSentEvents => 1,
        TransportType::LongPolling => 2,
    }
}

impl HubStats {
    pub(crate) fn connected(&self, t: TransportType) {
        self.connections[index(t)].fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn disconnected(&self, t: TransportType) {
        self.connections[index(t)].fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn message_in(&self) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sent(&self, n: u64) {
        self.messages_out.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn invocation(&self) {
        self.invocations.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn invocation_done(&self, method: &str, elapsed: Duration, failed: bool) {
        let mut methods = self
            .methods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let m = methods.entry(method.to_owned()).or_default();
        m.calls += 1;
        m.errors += u64::from(failed);
        m.total_time += elapsed;
    }

    /// Live connections on `transport`.
    pub fn connections(&self, transport: TransportType) -> i64 {
        self.connections[index(transport)].load(Ordering::Relaxed)
    }

    /// Connections ever opened.
    pub fn connections_total(&self) -> u64 {
        self.connections_total.load(Ordering::Relaxed)
    }

    /// Hub messages received from clients.
    pub fn messages_in(&self) -> u64 {
        self.messages_in.load(Ordering::Relaxed)
    }

    /// Hub messages queued for clients (one per recipient).
    pub fn messages_out(&self) -> u64 {
        self.messages_out.load(Ordering::Relaxed)
    }

    /// Invocations started.
    pub fn invocations(&self) -> u64 {
        self.invocations.load(Ordering::Relaxed)
    }

    /// Per-method counters.
    pub fn methods(&self) -> HashMap<String, MethodStats> {
        self.methods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
