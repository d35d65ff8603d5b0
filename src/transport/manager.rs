//! The table of live connections of one path, keyed by their secret token (ASP.NET's
//! `HttpConnectionManager`), and the reaper that disposes of the ones nobody uses.
//!
//! An entry outlives any single HTTP request: long polling opens one request per poll, and
//! stateful reconnect replaces a WebSocket under the same token. The application task is
//! started when the first transport request arrives and ends the entry when it returns.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use dashmap::DashMap;
use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    CloseKind, ConnectionHandler, ConnectionInfo, ConnectionIo, Frame, Outbound, Principal,
    RequestInfo, TransportType,
};
use crate::options::TransportOptions;

/// Inbound frames buffered per connection before the transport stops reading.
const INBOUND_CAPACITY: usize = 32;

/// How long an ended connection stays in the table so that a late poll gets 204, not 404.
const ENDED_GRACE: Duration = Duration::from_secs(5);

/// One logical connection, as the HTTP side sees it.
#[derive(Debug)]
pub(crate) struct ConnEntry {
    pub(crate) id: String,
    pub(crate) token: String,
    pub(crate) transport: OnceLock<TransportType>,
    pub(crate) stateful: bool,
    pub(crate) principal: Option<Principal>,
    pub(crate) outbound: Arc<Outbound>,
    inbound_tx: Mutex<Option<mpsc::Sender<Frame>>>,
    pending_io: Mutex<Option<(mpsc::Receiver<Frame>, mpsc::Receiver<()>)>>,
    reconnect_tx: mpsc::Sender<()>,
    started: AtomicBool,
    pub(crate) ended: CancellationToken,
    /// A WebSocket or SSE stream is attached, or a long poll is in progress.
    pub(crate) active: AtomicBool,
    /// When the entry last became inactive (or was created).
    pub(crate) last_seen: Mutex<Instant>,
    /// Generation of the current long poll; a newer poll supersedes older ones.
    pub(crate) poll_gen: AtomicU64,
    pub(crate) poll_cancel: Mutex<CancellationToken>,
    /// Cancelled to end the current WebSocket when a stateful reconnect replaces it.
    pub(crate) socket_cancel: Mutex<CancellationToken>,
}

impl ConnEntry {
    /// A sender for inbound frames, while the connection accepts them.
    pub(crate) fn inbound(&self) -> Option<mpsc::Sender<Frame>> {
        lock(&self.inbound_tx).clone()
    }

    /// Tells the application the client is gone for good.
    pub(crate) fn close_inbound(&self) {
        lock(&self.inbound_tx).take();
        // An application that has not started yet would never see it: end the entry now.
        if !self.started.load(Ordering::Acquire) {
            self.ended.cancel();
        }
    }

    pub(crate) fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    pub(crate) fn set_inactive(&self) {
        *lock(&self.last_seen) = Instant::now();
        self.active.store(false, Ordering::Release);
    }

    pub(crate) fn notify_reconnected(&self) {
        let _ = self.reconnect_tx.try_send(());
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The connections of one path.
pub(crate) struct ConnectionManager {
    pub(crate) handler: Arc<dyn ConnectionHandler>,
    pub(crate) options: TransportOptions,
    by_token: DashMap<String, Arc<ConnEntry>>,
    reaper: AtomicBool,
}

impl std::fmt::Debug for ConnectionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionManager")
            .field("connections", &self.by_token.len())
            .finish()
    }
}

/// 16 bytes from the operating system's CSPRNG, base64url without padding (22 characters),
/// as ASP.NET makes connection ids and tokens.
pub(crate) fn random_id() -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl ConnectionManager {
    pub(crate) fn new(handler: Arc<dyn ConnectionHandler>, options: TransportOptions) -> Self {
        Self {
            handler,
            options,
            by_token: DashMap::new(),
            reaper: AtomicBool::new(false),
        }
    }

    /// Connections in the table (including ones negotiated but unused, and recently ended).
    pub(crate) fn len(&self) -> usize {
        self.by_token.len()
    }

    fn pending(&self) -> usize {
        self.by_token.iter().filter(|e| !e.is_started()).count()
    }

    /// Creates a connection (negotiate, or a WebSocket without `id`). `None` when too many
    /// negotiated connections are still waiting for their transport.
    pub(crate) fn create(
        self: &Arc<Self>,
        token_is_id: bool,
        stateful: bool,
        principal: Option<Principal>,
    ) -> Option<Arc<ConnEntry>> {
        self.ensure_reaper();
        let len = self.by_token.len();
        // `pending()` walks the whole table: only when the limit could be reached at all
        // (pending <= len), or every connect would cost O(connections).
        if len >= self.options.maximum_connections
            || (len >= self.options.maximum_pending_negotiations
                && self.pending() >= self.options.maximum_pending_negotiations)
        {
            return None;
        }
        let id = random_id();
        let token = if token_is_id { id.clone() } else { random_id() };
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
        let (reconnect_tx, reconnect_rx) = mpsc::channel(1);
        let entry = Arc::new(ConnEntry {
            id,
            token: token.clone(),
            transport: OnceLock::new(),
            stateful,
            principal,
            outbound: Arc::new(Outbound::new(self.options.transport_max_buffer_size)),
            inbound_tx: Mutex::new(Some(inbound_tx)),
            pending_io: Mutex::new(Some((inbound_rx, reconnect_rx))),
            reconnect_tx,
            started: AtomicBool::new(false),
            ended: CancellationToken::new(),
            active: AtomicBool::new(false),
            last_seen: Mutex::new(Instant::now()),
            poll_gen: AtomicU64::new(0),
            poll_cancel: Mutex::new(CancellationToken::new()),
            socket_cancel: Mutex::new(CancellationToken::new()),
        });
        self.by_token.insert(token, entry.clone());
        Some(entry)
    }

    pub(crate) fn get(&self, token: &str) -> Option<Arc<ConnEntry>> {
        self.by_token.get(token).map(|e| e.clone())
    }

    /// Starts the application for `entry` on `transport`, once.
    pub(crate) fn start(&self, entry: &Arc<ConnEntry>, request: RequestInfo) {
        if entry.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some((inbound, reconnected)) = lock(&entry.pending_io).take() else {
            return;
        };
        let transport = *entry.transport.get().unwrap_or(&TransportType::WebSockets);
        let info = Arc::new(ConnectionInfo {
            connection_id: entry.id.clone(),
            transport,
            request,
            stateful_reconnect: entry.stateful && transport == TransportType::WebSockets,
            principal: entry.principal.clone(),
        });
        let io = ConnectionIo {
            inbound,
            outbound: entry.outbound.clone(),
            info,
            reconnected,
        };
        let app = self.handler.on_connected(io);
        let entry = entry.clone();
        tokio::spawn(async move {
            // A panicking application ends its own connection, never the server.
            if std::panic::AssertUnwindSafe(app)
                .catch_unwind()
                .await
                .is_err()
            {
                tracing::error!(connection_id = %entry.id, "connection handler panicked");
                entry.outbound.close(CloseKind::Error);
            }
            entry.outbound.close(CloseKind::Normal);
            lock(&entry.inbound_tx).take();
            entry.set_inactive();
            entry.ended.cancel();
        });
    }

    fn ensure_reaper(self: &Arc<Self>) {
        if self.reaper.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { break };
                this.reap(Instant::now());
            }
        });
    }

    /// Disposes of orphaned negotiations, long-polling connections nobody polls, WebSockets
    /// that never came back for a stateful reconnect, and ended connections past their grace.
    pub(crate) fn reap(&self, now: Instant) {
        let timeout = self.options.disconnect_timeout;
        let mut remove = Vec::new();
        for e in self.by_token.iter() {
            let idle = now.saturating_duration_since(*lock(&e.last_seen));
            if e.ended.is_cancelled() {
                if idle >= ENDED_GRACE {
                    remove.push(e.key().clone());
                }
            } else if !e.is_started() {
                if idle >= timeout {
                    tracing::debug!(connection_id = %e.id, "reaping unused negotiation");
                    e.close_inbound();
                    remove.push(e.key().clone());
                }
            } else if !e.active.load(Ordering::Acquire) && idle >= timeout {
                tracing::debug!(connection_id = %e.id, "disposing inactive connection");
                e.close_inbound();
            }
        }
        for token in remove {
            self.by_token.remove(&token);
        }
    }
}
