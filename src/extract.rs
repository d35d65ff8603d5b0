//! Extractors: the parameters a hub method can ask for, axum-style.
//!
//! Each implements [`FromInvocation`]. They are bound in parameter order before the handler
//! runs; a binding failure (wrong argument count or type) answers the client with
//! `Failed to invoke '<method>' due to an error on the server.` and leaves the connection open.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
pub use tokio_util::sync::CancellationToken;

use crate::clients::{Clients, Groups};
use crate::context::HubContext;
use crate::dispatch::StreamEvent;
use crate::error::HubError;
use crate::hub::HubShared;
use crate::protocol::{ArgsDeserializer, Payload, Protocol};
use crate::registry::HubConnection;

/// Everything an extractor can draw on: the hub, the calling connection, the invocation's
/// arguments and streams.
#[derive(Debug)]
pub struct InvocationContext {
    pub(crate) hub: Arc<HubShared>,
    pub(crate) conn: Arc<HubConnection>,
    pub(crate) target: String,
    pub(crate) arguments: Option<Payload>,
    pub(crate) uploads: Vec<Option<mpsc::Receiver<StreamEvent>>>,
    pub(crate) next_upload: usize,
    pub(crate) cancel: CancellationToken,
}

impl InvocationContext {
    /// The protocol of the calling connection.
    pub fn protocol(&self) -> Protocol {
        self.conn.protocol
    }

    /// The invoked method's name, as the client spelled it.
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// A value built from an invocation, before the handler runs.
pub trait FromInvocation: Sized + Send + 'static {
    /// How many client-to-server streams this extractor consumes.
    const UPLOAD_STREAMS: usize = 0;
    /// Builds the value; the error text becomes the (detailed) binding error.
    fn from_invocation(ctx: &mut InvocationContext) -> Result<Self, String>;
}

/// The method's arguments, decoded straight into `T`.
///
/// A tuple binds positional arguments (`Args<(String, i64)>`), `()` binds none, and any other
/// type binds the single argument (`Args<String>`, `Args<MyStruct>`, `Args<Vec<i32>>`).
#[derive(Debug, Clone)]
pub struct Args<T>(pub T);

impl<T: DeserializeOwned + Send + 'static> FromInvocation for Args<T> {
    fn from_invocation(ctx: &mut InvocationContext) -> Result<Self, String> {
        let Some(args) = ctx.arguments.take() else {
            return Err("arguments bound twice".into());
        };
        let de = ArgsDeserializer::new(ctx.protocol(), &args).map_err(|e| e.to_string())?;
        T::deserialize(de).map(Args).map_err(|e| e.to_string())
    }
}

/// The calling connection: its id, its request, and a proxy to send to it.
#[derive(Debug, Clone)]
pub struct Caller {
    conn: Arc<HubConnection>,
    clients: Clients,
}

impl Caller {
    pub(crate) fn new(hub: Arc<HubShared>, conn: Arc<HubConnection>) -> Self {
        let clients = Clients::new(hub, Some(conn.clone()));
        Self { conn, clients }
    }

    /// The public connection id (ASP.NET `Context.ConnectionId`).
    pub fn connection_id(&self) -> &str {
        &self.conn.id
    }

    /// The user id, when the connection is authenticated (ASP.NET `Context.UserIdentifier`).
    pub fn user_id(&self) -> Option<&str> {
        self.conn.user_id.as_deref()
    }

    /// The hub protocol the connection speaks (JSON or MessagePack).
    pub fn protocol(&self) -> Protocol {
        self.conn.protocol
    }

    /// Facts about the transport, the HTTP request and the principal.
    pub fn info(&self) -> &crate::transport::ConnectionInfo {
        &self.conn.info
    }

    /// Sends `method(args…)` to this connection. `args` serializes as the argument list: a
    /// tuple such as `("bob", 1)` or `(x,)`, or `()` for none.
    pub async fn send(
        &self,
        method: &str,
        args: impl serde::Serialize,
    ) -> Result<(), crate::Error> {
        self.clients.caller().send(method, args).await
    }

    /// Invokes `method(args…)` on this connection and waits for its result (client results).
    pub async fn invoke<T: DeserializeOwned>(
        &self,
        method: &str,
        args: impl serde::Serialize,
    ) -> Result<T, crate::Error> {
        self.clients.caller().invoke(method, args).await
    }

    /// Ends the connection, sending a Close message with `error` (shown to the client as
    /// `Server returned an error on close: …`) and whether it may reconnect automatically.
    pub fn close(&self, error: Option<String>, allow_reconnect: bool) {
        self.conn.abort(Some(crate::protocol::Close {
            error,
            allow_reconnect,
        }));
    }

    /// Every client target, relative to this caller (`others()`, `others_in_group()`…).
    pub fn clients(&self) -> &Clients {
        &self.clients
    }
}

impl FromInvocation for Caller {
    fn from_invocation(ctx: &mut InvocationContext) -> Result<Self, String> {
        Ok(Self::new(ctx.hub.clone(), ctx.conn.clone()))
    }
}

impl FromInvocation for Clients {
    fn from_invocation(ctx: &mut InvocationContext) -> Result<Self, String> {
        Ok(Self::new(ctx.hub.clone(), Some(ctx.conn.clone())))
    }
}

impl FromInvocation for Groups {
    fn from_invocation(ctx: &mut InvocationContext) -> Result<Self, String> {
        Ok(Self::new(ctx.hub.clone()))
    }
}

impl FromInvocation for HubContext {
    fn from_invocation(ctx: &mut InvocationContext) -> Result<Self, String> {
        Ok(HubContext::new(ctx.hub.clone()))
    }
}

/// Cancelled when the client cancels this (streaming) invocation or the connection ends.
impl FromInvocation for CancellationToken {
    fn from_invocation(ctx: &mut InvocationContext) -> Result<Self, String> {
        Ok(ctx.cancel.clone())
    }
}

/// Shared state given to the hub builder with `.state(value)`, cloned for each invocation.
#[derive(Debug, Clone)]
pub struct State<S>(pub S);

impl<S: Clone + Send + Sync + 'static> FromInvocation for State<S> {
    fn from_invocation(ctx: &mut InvocationContext) -> Result<Self, String> {
        ctx.hub.state::<S>().map(State).ok_or_else(|| {
            format!(
                "no state of type {} was given to the hub",
                std::any::type_name::<S>()
            )
        })
    }
}

/// A client-to-server stream argument (the JS client's `Subject`), bound in order to the
/// invocation's stream ids. Yields `Err` once if the client ended the stream with an error.
#[derive(Debug)]
pub struct ClientStream<T> {
    rx: mpsc::Receiver<StreamEvent>,
    protocol: Protocol,
    done: bool,
    _marker: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned + Send + 'static> FromInvocation for ClientStream<T> {
    const UPLOAD_STREAMS: usize = 1;

    fn from_invocation(ctx: &mut InvocationContext) -> Result<Self, String> {
        let i = ctx.next_upload;
        ctx.next_upload += 1;
        let rx = ctx
            .uploads
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| "missing stream".to_owned())?;
        Ok(Self {
            rx,
            protocol: ctx.protocol(),
            done: false,
            _marker: std::marker::PhantomData,
        })
    }
}

impl<T: DeserializeOwned> Stream for ClientStream<T> {
    type Item = Result<T, HubError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(StreamEvent::Item(p))) => {
                Poll::Ready(Some(self.protocol.decode_value(&p).map_err(|e| {
                    HubError::unexpected("InvalidDataException", e.to_string())
                })))
            }
            Poll::Ready(Some(StreamEvent::Complete(Some(err)))) => {
                self.done = true;
                Poll::Ready(Some(Err(HubError::new(err))))
            }
            Poll::Ready(Some(StreamEvent::Complete(None)) | None) => {
                self.done = true;
                Poll::Ready(None)
            }
        }
    }
}
