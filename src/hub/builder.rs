//! [`HubBuilder`]: registers methods, hooks, filters, state and options.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use super::{Hub, HubShared, Method, MethodKind};
use crate::filter::{Filter, Filters};
use crate::handler::{Handler, StreamHandler, UnaryFn, erase_stream, erase_unary};
use crate::options::HubOptions;

/// Builds a [`Hub`].
#[must_use]
pub struct HubBuilder {
    name: String,
    methods: HashMap<String, Method>,
    on_connected: Vec<UnaryFn>,
    on_disconnected: Vec<UnaryFn>,
    filters: Filters,
    state: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
    options: HubOptions,
    backplane: Option<Arc<dyn crate::backplane::Backplane>>,
    policies: Vec<(String, crate::auth::Policy)>,
}

impl std::fmt::Debug for HubBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubBuilder")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl HubBuilder {
    pub(super) fn new() -> Self {
        Self {
            name: "Hub".into(),
            methods: HashMap::new(),
            on_connected: Vec::new(),
            on_disconnected: Vec::new(),
            filters: Filters::default(),
            state: HashMap::new(),
            options: HubOptions::default(),
            backplane: None,
            policies: Vec::new(),
        }
    }

    /// The hub's name, used in logs and metrics. Defaults to `Hub`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    fn insert(&mut self, name: &str, method: Method) {
        let key = name.to_lowercase();
        // ASP.NET forbids overloads; the last registration of a name wins, loudly.
        if self.methods.insert(key, method).is_some() {
            tracing::warn!(
                method = name,
                "hub method registered twice; the last one wins"
            );
        }
    }

    /// Registers a method answered with one result. Names match case-insensitively.
    pub fn method<H: Handler<T>, T>(mut self, name: &str, handler: H) -> Self {
        self.insert(
            name,
            Method {
                name: name.to_owned(),
                streaming: false,
                upload_streams: H::UPLOAD_STREAMS,
                kind: MethodKind::Unary(erase_unary(handler)),
                policy: None,
            },
        );
        self
    }

    /// Registers a streaming method: its handler returns a `Stream` whose items become
    /// StreamItems, ended by a Completion. The client cancels it with `dispose()`.
    pub fn stream<H: StreamHandler<T>, T>(mut self, name: &str, handler: H) -> Self {
        self.insert(
            name,
            Method {
                name: name.to_owned(),
                streaming: true,
                upload_streams: H::UPLOAD_STREAMS,
                kind: MethodKind::Stream(erase_stream(handler)),
                policy: None,
            },
        );
        self
    }

    /// Only callers that `policy` allows may invoke method `name` (registered before or after
    /// this call); others get `Failed to invoke '<name>' because user is unauthorized`.
    pub fn authorize_method(mut self, name: &str, policy: crate::auth::Policy) -> Self {
        self.policies.push((name.to_lowercase(), policy));
        self
    }

    /// Runs when a connection has completed its handshake. An `Err` refuses the connection:
    /// the client gets a Close with an error.
    pub fn on_connected<H: Handler<T>, T>(mut self, handler: H) -> Self {
        self.on_connected.push(erase_unary(handler));
        self
    }

    /// Runs when a connection has ended, after it left its groups.
    pub fn on_disconnected<H: Handler<T>, T>(mut self, handler: H) -> Self {
        self.on_disconnected.push(erase_unary(handler));
        self
    }

    /// Adds a filter around every invocation; the first added runs outermost.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filters.push(filter);
        self
    }

    /// Shares `state` with every handler through the `State<S>` extractor.
    pub fn state<S: Clone + Send + Sync + 'static>(mut self, state: S) -> Self {
        self.state.insert(TypeId::of::<S>(), Box::new(state));
        self
    }

    /// Sets every option at once.
    pub fn options(mut self, options: HubOptions) -> Self {
        self.options = options;
        self
    }

    /// Changes some options: `.configure(|o| o.enable_detailed_errors = true)`.
    pub fn configure(mut self, f: impl FnOnce(&mut HubOptions)) -> Self {
        f(&mut self.options);
        self
    }

    /// Spans the hub over several processes through `backplane` (for example
    /// `tidings::backplane::RedisBackplane`). Without one the hub is in-memory, single-node.
    /// `build` must then run inside a Tokio runtime.
    pub fn backplane(mut self, backplane: impl crate::backplane::Backplane) -> Self {
        self.backplane = Some(Arc::new(backplane));
        self
    }

    /// Builds the hub.
    pub fn build(mut self) -> Hub {
        for (name, policy) in self.policies.drain(..) {
            match self.methods.get_mut(&name) {
                Some(m) => m.policy = Some(policy),
                None => {
                    tracing::warn!(method = %name, "authorize_method names no registered method")
                }
            }
        }
        let methods = self
            .methods
            .into_iter()
            .map(|(k, m)| (k, Arc::new(m)))
            .collect();
        let stats = Arc::new(super::HubStats::default());
        let registry: Arc<crate::registry::Registry> = Arc::default();
        if let Some(backplane) = &self.backplane {
            backplane.start(crate::backplane::Node {
                hub_name: self.name.as_str().into(),
                registry: registry.clone(),
                stats: stats.clone(),
                max_groups: self.options.maximum_groups_per_connection,
                client_result_timeout: self.options.client_result_timeout,
            });
        }
        Hub {
            shared: Arc::new(HubShared {
                name: self.name.into(),
                methods: Arc::new(methods),
                on_connected: self.on_connected.into(),
                on_disconnected: self.on_disconnected.into(),
                filters: Arc::new(self.filters),
                state: Arc::new(self.state),
                options: Arc::new(self.options),
                registry,
                stats,
                backplane: self.backplane,
                draining: Arc::default(),
            }),
        }
    }
}
