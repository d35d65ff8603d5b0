//! [`Hub`]: the immutable method table, hooks, filters, state and options of one hub type,
//! and the registry of its connections. Build one with [`Hub::builder`].

mod builder;
mod stats;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

pub use builder::HubBuilder;
pub use stats::{HubStats, MethodStats};

use crate::context::HubContext;
use crate::filter::Filters;
use crate::handler::{StreamFn, UnaryFn};
use crate::options::{HubOptions, TransportOptions};
use crate::registry::Registry;
use crate::service::HubService;
use crate::transport::{BoxFuture, ConnectionHandler, ConnectionIo};

pub(crate) enum MethodKind {
    Unary(UnaryFn),
    Stream(StreamFn),
}

/// One registered hub method.
pub(crate) struct Method {
    pub(crate) name: String,
    pub(crate) streaming: bool,
    pub(crate) upload_streams: usize,
    pub(crate) kind: MethodKind,
    pub(crate) policy: Option<crate::auth::Policy>,
}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Method")
            .field("name", &self.name)
            .field("streaming", &self.streaming)
            .finish_non_exhaustive()
    }
}

/// What every connection of a hub shares. Cloning it (for another path with other options)
/// keeps the same registry, so all paths of one hub are one hub for fan-out.
#[derive(Clone)]
pub(crate) struct HubShared {
    pub(crate) name: Arc<str>,
    pub(crate) methods: Arc<HashMap<String, Arc<Method>>>,
    pub(crate) on_connected: Arc<[UnaryFn]>,
    pub(crate) on_disconnected: Arc<[UnaryFn]>,
    pub(crate) filters: Arc<Filters>,
    pub(crate) state: Arc<HashMap<TypeId, Box<dyn Any + Send + Sync>>>,
    pub(crate) options: Arc<HubOptions>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) stats: Arc<HubStats>,
    /// Other nodes of the cluster; `None` (the default) is in-memory, single-node.
    pub(crate) backplane: Option<Arc<dyn crate::backplane::Backplane>>,
    /// Set by [`Hub::drain`]: new connections are refused with 503.
    pub(crate) draining: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for HubShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("name", &self.name)
            .field("methods", &self.methods.len())
            .finish_non_exhaustive()
    }
}

impl HubShared {
    /// Methods match case-insensitively, as in ASP.NET.
    pub(crate) fn method(&self, name: &str) -> Option<Arc<Method>> {
        self.methods.get(&name.to_lowercase()).cloned()
    }

    pub(crate) fn state<S: Clone + 'static>(&self) -> Option<S> {
        self.state
            .get(&TypeId::of::<S>())
            .and_then(|b| b.downcast_ref::<S>())
            .cloned()
    }
}

/// A hub: named methods served to SignalR clients.
///
/// ```
/// use tidings::{Args, Clients, Hub, HubError};
///
/// async fn send_message(
///     clients: Clients,
///     Args((user, text)): Args<(String, String)>,
/// ) -> Result<(), HubError> {
///     clients.all().send("ReceiveMessage", (user, text)).await?;
///     Ok(())
/// }
///
/// let hub = Hub::builder()
///     .method("SendMessage", send_message)
///     .method("Add", |Args((a, b)): Args<(i64, i64)>| async move { a + b })
///     .build();
/// let chat = hub.context(); // send from anywhere
/// let service = hub.into_service(); // mount with axum's nest_service("/hubs/chat", service)
/// # let _ = (chat, service);
/// ```
#[derive(Clone, Debug)]
pub struct Hub {
    shared: Arc<HubShared>,
}

impl Hub {
    /// Starts building a hub.
    pub fn builder() -> HubBuilder {
        HubBuilder::new()
    }

    /// A handle to send to this hub's clients and manage its groups from anywhere.
    pub fn context(&self) -> HubContext {
        HubContext::new(self.shared.clone())
    }

    /// The same hub (methods, connections, groups) with other options, for another path:
    /// for example one path with detailed errors and one without.
    pub fn with_options(&self, configure: impl FnOnce(&mut HubOptions)) -> Self {
        let mut options = (*self.shared.options).clone();
        configure(&mut options);
        let mut shared = (*self.shared).clone();
        shared.options = Arc::new(options);
        Self {
            shared: Arc::new(shared),
        }
    }

    /// The hub's options.
    pub fn options(&self) -> &HubOptions {
        &self.shared.options
    }

    /// Live counters of the hub (connections, messages, invocations).
    pub fn stats(&self) -> Arc<HubStats> {
        self.shared.stats.clone()
    }

    /// Drains the hub (graceful shutdown): new negotiations get 503, every connection gets
    /// `Close{allowReconnect: true}` (stock clients with automatic reconnect go to another
    /// node), and this waits until every connection has ended or `deadline` has passed.
    /// Returns the number of connections still open at the deadline.
    pub async fn drain(&self, deadline: std::time::Duration) -> usize {
        self.shared
            .draining
            .store(true, std::sync::atomic::Ordering::Release);
        self.context().close_all(true);
        let until = tokio::time::Instant::now() + deadline;
        while !self.shared.registry.is_empty() && tokio::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.shared.registry.len()
    }

    /// Whether [`Hub::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.shared
            .draining
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// A tower `Service` serving this hub with the default transport options.
    pub fn into_service(self) -> HubService {
        self.service(TransportOptions::default())
    }

    /// A tower `Service` serving this hub with `transport` options.
    pub fn service(&self, transport: TransportOptions) -> HubService {
        HubService::new(self.endpoint(), transport)
    }

    /// The hub as a connection handler (what a service runs for each connection).
    pub(crate) fn endpoint(&self) -> impl ConnectionHandler + use<> {
        HubEndpoint(self.shared.clone())
    }
}

/// The hub as a connection handler of one path.
struct HubEndpoint(Arc<HubShared>);

impl ConnectionHandler for HubEndpoint {
    fn on_connected(&self, io: ConnectionIo) -> BoxFuture<()> {
        use tracing::Instrument;
        let span = tracing::debug_span!(
            "connection",
            connection_id = %io.info.connection_id,
            transport = io.info.transport.name(),
            hub = %self.0.name,
        );
        Box::pin(crate::connection::run(self.0.clone(), io).instrument(span))
    }

    fn accepting(&self) -> bool {
        !self.0.draining.load(std::sync::atomic::Ordering::Acquire)
    }
}
