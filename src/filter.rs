//! Hub filters (ASP.NET `IHubFilter`): code that runs around every invocation, in a chain,
//! for logging, authorization, argument validation or timing.
//!
//! ```
//! use tidings::{Hub, filter};
//! let hub = Hub::builder()
//!     .filter(filter::from_fn(|call, next| async move {
//!         let started = std::time::Instant::now();
//!         let result = next.run().await;
//!         tracing::info!(method = %call.method, ok = result.is_ok(), elapsed = ?started.elapsed());
//!         result
//!     }))
//!     .build();
//! # let _ = hub;
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::HubError;
use crate::extract::InvocationContext;
use crate::handler::{InvokeError, UnaryFn};
use crate::protocol::Payload;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a filter is wrapped around.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKind {
    /// A hub method invocation.
    Invocation,
    /// The on-connected hooks of a new connection (an `Err` refuses the connection).
    Connected,
    /// The on-disconnected hooks of an ended connection.
    Disconnected,
}

/// What a filter sees of one invocation (or connect / disconnect).
#[derive(Debug, Clone)]
pub struct FilterCall {
    /// What is being filtered.
    pub kind: FilterKind,
    /// The method name as the client spelled it (empty for connect/disconnect hooks).
    pub method: String,
    /// The calling connection.
    pub connection_id: String,
    /// The calling user, when authenticated.
    pub user_id: Option<String>,
    /// Invocation headers (W3C trace context and the like); empty for hooks.
    pub headers: crate::protocol::Headers,
    /// The number of arguments the client sent.
    pub argument_count: usize,
}

/// The outcome of an invocation as it flows back out through the filters.
#[derive(Debug)]
pub struct FilterResult(pub(crate) Result<Payload, InvokeError>);

impl FilterResult {
    /// Short-circuits the invocation with a hub error (shown to the client).
    pub fn reject(error: HubError) -> Self {
        Self(Err(InvokeError::Hub(error)))
    }

    /// Whether the invocation succeeded.
    pub fn is_ok(&self) -> bool {
        self.0.is_ok()
    }
}

/// The rest of the chain: the next filter, or the handler itself.
pub struct Next {
    run: Box<dyn FnOnce() -> BoxFuture<FilterResult> + Send>,
}

impl std::fmt::Debug for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Next")
    }
}

impl Next {
    /// Runs the rest of the chain.
    pub async fn run(self) -> FilterResult {
        (self.run)().await
    }
}

/// One filter of the chain.
#[derive(Clone)]
pub struct Filter(Arc<dyn Fn(FilterCall, Next) -> BoxFuture<FilterResult> + Send + Sync>);

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Filter")
    }
}

/// A filter from an async closure `|call: FilterCall, next: Next| async { … next.run().await }`.
pub fn from_fn<F, Fut>(f: F) -> Filter
where
    F: Fn(FilterCall, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = FilterResult> + Send + 'static,
{
    Filter(Arc::new(move |call, next| Box::pin(f(call, next))))
}

/// The chain of a hub.
#[derive(Clone, Default, Debug)]
pub(crate) struct Filters {
    chain: Vec<Filter>,
}

impl Filters {
    pub(crate) fn push(&mut self, f: Filter) {
        self.chain.push(f);
    }

    pub(crate) fn call_info(
        kind: FilterKind,
        ctx: &InvocationContext,
        headers: crate::protocol::Headers,
    ) -> FilterCall {
        let argument_count = ctx
            .arguments
            .as_ref()
            .and_then(|a| crate::protocol::ArgsDeserializer::new(ctx.protocol(), a).ok())
            .map_or(0, |d| d.len());
        FilterCall {
            kind,
            method: ctx.target.clone(),
            connection_id: ctx.conn.id.clone(),
            user_id: ctx.conn.user_id.clone(),
            headers,
            argument_count,
        }
    }

    /// Runs `call` through every filter, first added outermost.
    pub(crate) async fn run(
        &self,
        call: UnaryFn,
        ctx: InvocationContext,
        headers: crate::protocol::Headers,
    ) -> Result<Payload, InvokeError> {
        if self.chain.is_empty() {
            return call(ctx).await;
        }
        let info = Self::call_info(FilterKind::Invocation, &ctx, headers);
        self.wrap(
            info,
            Box::new(move || Box::pin(async move { FilterResult(call(ctx).await) })),
        )
        .await
    }

    /// Runs `innermost` inside every filter, first added outermost.
    pub(crate) async fn wrap(
        &self,
        info: FilterCall,
        innermost: Box<dyn FnOnce() -> BoxFuture<FilterResult> + Send>,
    ) -> Result<Payload, InvokeError> {
        let next = self.chain.iter().rev().fold(innermost, |inner, filter| {
            let filter = filter.clone();
            let info = info.clone();
            Box::new(move || (filter.0)(info, Next { run: inner }))
        });
        next().await.0
    }
}
