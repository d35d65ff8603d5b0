//! Handlers: async functions whose parameters are extractors, turned into type-erased
//! methods of a hub. `.method()` takes functions returning a value; `.stream()` takes
//! functions returning a `Stream` of items.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use serde::Serialize;

use crate::error::HubError;
use crate::extract::{FromInvocation, InvocationContext};
use crate::protocol::{Payload, Protocol};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why an invocation failed before or while its handler ran.
#[derive(Debug)]
#[doc(hidden)]
pub enum InvokeError {
    /// An extractor could not bind (wrong argument count or type); the text is the detail.
    Binding(String),
    /// The handler failed.
    Hub(HubError),
}

/// Marks the [`IntoHubResult`] impl for plain `Serialize` values.
#[derive(Debug)]
pub enum ViaValue {}
/// Marks the [`IntoHubResult`] impl for `Result<T, HubError>`.
#[derive(Debug)]
pub enum ViaResult {}

/// A value a hub method may return: any `Serialize` value (`()` answers `null`), or a
/// `Result<T, HubError>`. (`M` only tells the two impls apart; it is always inferred.)
pub trait IntoHubResult<M> {
    /// Encodes the result for a connection speaking `protocol`.
    fn into_hub_result(self, protocol: Protocol) -> Result<Payload, HubError>;
}

impl<T: Serialize> IntoHubResult<ViaValue> for T {
    fn into_hub_result(self, protocol: Protocol) -> Result<Payload, HubError> {
        protocol
            .encode_value(&self)
            .map_err(|e| HubError::unexpected("SerializationException", e.to_string()))
    }
}

impl<T: Serialize> IntoHubResult<ViaResult> for Result<T, HubError> {
    fn into_hub_result(self, protocol: Protocol) -> Result<Payload, HubError> {
        self.and_then(|v| v.into_hub_result(protocol))
    }
}

/// A `Stream` a streaming hub method may return: items are `Serialize` values or
/// `Result<T, HubError>` (an `Err` item ends the stream with that error).
pub trait IntoHubStream<M> {
    /// Encodes the items for a connection speaking `protocol`.
    fn into_hub_stream(self, protocol: Protocol) -> BoxStream<'static, Result<Payload, HubError>>;
}

impl<S, M> IntoHubStream<M> for S
where
    S: Stream + Send + 'static,
    S::Item: IntoHubResult<M>,
{
    fn into_hub_stream(self, protocol: Protocol) -> BoxStream<'static, Result<Payload, HubError>> {
        self.map(move |item| item.into_hub_result(protocol)).boxed()
    }
}

pub(crate) type UnaryFn =
    Arc<dyn Fn(InvocationContext) -> BoxFuture<Result<Payload, InvokeError>> + Send + Sync>;
pub(crate) type StreamFn = Arc<
    dyn Fn(
            InvocationContext,
        ) -> BoxFuture<Result<BoxStream<'static, Result<Payload, HubError>>, InvokeError>>
        + Send
        + Sync,
>;

/// An async function usable as a hub method: every parameter is an extractor
/// ([`crate::extract`]), the output implements [`IntoHubResult`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid hub method",
    note = "hub methods are async functions whose parameters are extractors (Args<T>, Caller, Clients, Groups, State<S>, ClientStream<T>, …) and whose output is a Serialize value or Result<T, HubError>"
)]
pub trait Handler<T>: Clone + Send + Sync + Sized + 'static {
    /// Client-to-server streams the handler takes.
    const UPLOAD_STREAMS: usize;
    #[doc(hidden)]
    fn call(self, ctx: InvocationContext) -> BoxFuture<Result<Payload, InvokeError>>;
}

/// An async function usable as a streaming hub method: like [`Handler`], but its output is
/// a `Stream` ([`IntoHubStream`]).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid streaming hub method",
    note = "streaming hub methods are async functions whose parameters are extractors and whose output is a Stream of Serialize items (or of Result<T, HubError>)"
)]
pub trait StreamHandler<T>: Clone + Send + Sync + Sized + 'static {
    /// Client-to-server streams the handler takes.
    const UPLOAD_STREAMS: usize;
    #[doc(hidden)]
    fn call(
        self,
        ctx: InvocationContext,
    ) -> BoxFuture<Result<BoxStream<'static, Result<Payload, HubError>>, InvokeError>>;
}

macro_rules! impl_handler {
    ($($ty:ident),*) => {
        #[allow(non_snake_case, unused_mut, unused_variables)]
        impl<F, Fut, R, M, $($ty,)*> Handler<(M, $($ty,)*)> for F
        where
            F: FnOnce($($ty),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoHubResult<M>,
            M: 'static,
            $($ty: FromInvocation,)*
        {
            const UPLOAD_STREAMS: usize = 0 $(+ <$ty as FromInvocation>::UPLOAD_STREAMS)*;

            fn call(self, mut ctx: InvocationContext) -> BoxFuture<Result<Payload, InvokeError>> {
                Box::pin(async move {
                    $(let $ty = $ty::from_invocation(&mut ctx).map_err(InvokeError::Binding)?;)*
                    let protocol = ctx.protocol();
                    drop(ctx);
                    self($($ty),*).await.into_hub_result(protocol).map_err(InvokeError::Hub)
                })
            }
        }

        #[allow(non_snake_case, unused_mut, unused_variables)]
        impl<F, Fut, R, M, $($ty,)*> StreamHandler<(M, $($ty,)*)> for F
        where
            F: FnOnce($($ty),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoHubStream<M>,
            M: 'static,
            $($ty: FromInvocation,)*
        {
            const UPLOAD_STREAMS: usize = 0 $(+ <$ty as FromInvocation>::UPLOAD_STREAMS)*;

            fn call(
                self,
                mut ctx: InvocationContext,
            ) -> BoxFuture<Result<BoxStream<'static, Result<Payload, HubError>>, InvokeError>> {
                Box::pin(async move {
                    $(let $ty = $ty::from_invocation(&mut ctx).map_err(InvokeError::Binding)?;)*
                    let protocol = ctx.protocol();
                    drop(ctx);
                    Ok(self($($ty),*).await.into_hub_stream(protocol))
                })
            }
        }
    };
}

impl_handler!();
impl_handler!(T1);
impl_handler!(T1, T2);
impl_handler!(T1, T2, T3);
impl_handler!(T1, T2, T3, T4);
impl_handler!(T1, T2, T3, T4, T5);
impl_handler!(T1, T2, T3, T4, T5, T6);
impl_handler!(T1, T2, T3, T4, T5, T6, T7);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8, T9);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8, T9, T10);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12);

pub(crate) fn erase_unary<H: Handler<T>, T>(h: H) -> UnaryFn {
    Arc::new(move |ctx| h.clone().call(ctx))
}

pub(crate) fn erase_stream<H: StreamHandler<T>, T>(h: H) -> StreamFn {
    Arc::new(move |ctx| h.clone().call(ctx))
}
