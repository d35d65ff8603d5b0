//! Dispatch: an Invocation bound to its method, run through the filters and the handler, and
//! answered with a Completion (or StreamItems and a Completion), with ASP.NET's error texts.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use crate::error::HubError;
use std::future::Future;
use std::pin::Pin;

use tracing::Instrument;

use crate::extract::InvocationContext;
use crate::filter::{FilterKind, FilterResult, Filters};
use crate::handler::InvokeError;
use crate::hub::{HubShared, Method, MethodKind};
use crate::protocol::{Completion, HubMessage, Invocation, Outcome, Payload, StreamItem};
use crate::registry::HubConnection;

/// What flows into a client-to-server stream.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    Item(Payload),
    Complete(Option<String>),
}

/// Finds the method and checks the kind of invocation and the stream count; the error is
/// the exact text for the client.
pub(crate) fn check(
    hub: &HubShared,
    inv: &Invocation,
    streaming: bool,
    principal: Option<&crate::transport::Principal>,
) -> Result<Arc<Method>, String> {
    let name = &inv.target;
    let Some(method) = hub.method(name) else {
        return Err(format!("Unknown hub method '{name}'"));
    };
    if let Some(policy) = &method.policy
        && !policy.allows(principal)
    {
        return Err(format!(
            "Failed to invoke '{name}' because user is unauthorized"
        ));
    }
    if method.streaming && !streaming {
        return Err(format!(
            "The client attempted to invoke the streaming '{name}' method with a non-streaming invocation."
        ));
    }
    if !method.streaming && streaming {
        return Err(format!(
            "The client attempted to invoke the non-streaming '{name}' method with a streaming invocation."
        ));
    }
    if inv.stream_ids.len() != method.upload_streams {
        return Err(format!(
            "An unexpected error occurred invoking '{name}' on the server. HubException: Client sent {} stream(s), Hub method expects {}.",
            inv.stream_ids.len(),
            method.upload_streams
        ));
    }
    Ok(method)
}

pub(crate) fn complete_error(conn: &HubConnection, id: &str, error: String) {
    let _ = conn.send_message(&HubMessage::Completion(Completion {
        headers: Default::default(),
        invocation_id: id.to_owned(),
        outcome: Outcome::Error(error),
    }));
}

fn error_text(hub: &HubShared, target: &str, err: &InvokeError) -> String {
    let detailed = hub.options.enable_detailed_errors;
    match err {
        InvokeError::Binding(detail) => {
            if detailed {
                format!(
                    "Failed to invoke '{target}' due to an error on the server. InvalidDataException: Error binding arguments. {detail}"
                )
            } else {
                format!("Failed to invoke '{target}' due to an error on the server.")
            }
        }
        InvokeError::Hub(e) => e.client_text(target, detailed),
    }
}

fn context(
    hub: &Arc<HubShared>,
    conn: &Arc<HubConnection>,
    inv: Option<Invocation>,
    uploads: Vec<mpsc::Receiver<StreamEvent>>,
    cancel: CancellationToken,
) -> InvocationContext {
    let (target, arguments) = match inv {
        Some(inv) => (inv.target, Some(inv.arguments)),
        None => (String::new(), None),
    };
    InvocationContext {
        hub: hub.clone(),
        conn: conn.clone(),
        target,
        arguments,
        uploads: uploads.into_iter().map(Some).collect(),
        next_upload: 0,
        cancel,
    }
}

/// Runs a non-streaming invocation in its own task, holding `permit` (the parallel cap)
/// until it completes.
pub(crate) fn spawn_invocation(
    hub: Arc<HubShared>,
    conn: Arc<HubConnection>,
    method: Arc<Method>,
    inv: Invocation,
    uploads: Vec<mpsc::Receiver<StreamEvent>>,
    cancel: CancellationToken,
    permit: Option<OwnedSemaphorePermit>,
) {
    let MethodKind::Unary(call) = &method.kind else {
        return;
    };
    let call = call.clone();
    let id = inv.invocation_id.clone();
    let target = inv.target.clone();
    let headers = inv.headers.clone();
    let span = invocation_span(&inv);
    let ctx = context(&hub, &conn, Some(inv), uploads, cancel.clone());
    tokio::spawn(
        async move {
            let _permit = permit;
            hub.stats.invocation();
            let started = std::time::Instant::now();
            let result = tokio::select! {
                r = hub.filters.run(call, ctx, headers) => r,
                () = cancel.cancelled() => return,
            };
            hub.stats
                .invocation_done(&method.name, started.elapsed(), result.is_err());
            let Some(id) = id else {
                if let Err(e) = result {
                    tracing::debug!(method = %target, error = ?e, "non-blocking invocation failed");
                }
                return;
            };
            let outcome = match result {
                Ok(payload) => Outcome::Result(payload),
                Err(e) => Outcome::Error(error_text(&hub, &target, &e)),
            };
            let _ = conn.send_message(&HubMessage::Completion(Completion {
                headers: Default::default(),
                invocation_id: id,
                outcome,
            }));
        }
        .instrument(span),
    );
}

/// Runs a streaming invocation in its own task: StreamItems, then one Completion.
pub(crate) fn spawn_stream(
    hub: Arc<HubShared>,
    conn: Arc<HubConnection>,
    method: Arc<Method>,
    inv: Invocation,
    uploads: Vec<mpsc::Receiver<StreamEvent>>,
    cancel: CancellationToken,
    finished: mpsc::UnboundedSender<String>,
) {
    let MethodKind::Stream(call) = &method.kind else {
        return;
    };
    let call = call.clone();
    let id = inv.invocation_id.clone().unwrap_or_default();
    let target = inv.target.clone();
    let span = invocation_span(&inv);
    let ctx = context(&hub, &conn, Some(inv), uploads, cancel.clone());
    tokio::spawn(
        async move {
            hub.stats.invocation();
            let mut error = None;
            let stream = tokio::select! {
                s = call(ctx) => s,
                () = cancel.cancelled() => Err(InvokeError::Hub(HubError::new("canceled"))),
            };
            match stream {
                Err(_) if cancel.is_cancelled() => {}
                Err(e) => error = Some(error_text(&hub, &target, &e)),
                Ok(mut items) => loop {
                    let next = tokio::select! {
                        biased;
                        () = cancel.cancelled() => break,
                        item = items.next() => item,
                    };
                    match next {
                        Some(Ok(item)) => {
                            let msg = HubMessage::StreamItem(StreamItem {
                                headers: Default::default(),
                                invocation_id: id.clone(),
                                item,
                            });
                            if conn.send_message(&msg).is_err() {
                                break;
                            }
                        }
                        Some(Err(e)) => {
                            error = Some(error_text(&hub, &target, &InvokeError::Hub(e)));
                            break;
                        }
                        None => break,
                    }
                },
            }
            if !conn.aborted.is_cancelled() {
                let outcome = error.map_or(Outcome::Void, Outcome::Error);
                let _ = conn.send_message(&HubMessage::Completion(Completion {
                    headers: Default::default(),
                    invocation_id: id.clone(),
                    outcome,
                }));
            }
            let _ = finished.send(id);
        }
        .instrument(span),
    );
}

/// One span per invocation, with the correlation id a client put in the headers (W3C
/// `traceparent`, or `x-correlation-id`), so logs of one call can be followed end to end.
fn invocation_span(inv: &Invocation) -> tracing::Span {
    let correlation = ["traceparent", "x-correlation-id", "correlation-id"]
        .iter()
        .find_map(|k| inv.headers.get(*k))
        .map(String::as_str)
        .unwrap_or("");
    tracing::debug_span!(
        "invocation",
        method = %inv.target,
        invocation_id = inv.invocation_id.as_deref().unwrap_or(""),
        correlation_id = correlation,
    )
}

/// Runs `hooks` in order inside the filter chain; the first error stops them.
async fn run_hooks(
    hub: &Arc<HubShared>,
    conn: &Arc<HubConnection>,
    kind: FilterKind,
    hooks: Arc<[crate::handler::UnaryFn]>,
) -> Result<(), InvokeError> {
    let make = {
        let (hub, conn) = (hub.clone(), conn.clone());
        move || context(&hub, &conn, None, Vec::new(), CancellationToken::new())
    };
    let info = Filters::call_info(kind, &make(), Default::default());
    let inner = move || -> Pin<Box<dyn Future<Output = FilterResult> + Send>> {
        Box::pin(async move {
            for hook in hooks.iter() {
                if let Err(e) = hook(make()).await {
                    return FilterResult(Err(e));
                }
            }
            FilterResult(Ok(Payload(bytes::Bytes::new())))
        })
    };
    hub.filters.wrap(info, Box::new(inner)).await.map(|_| ())
}

/// Runs the on-connected hooks (through the filters); an error refuses the connection.
pub(crate) async fn on_connected(
    hub: &Arc<HubShared>,
    conn: &Arc<HubConnection>,
) -> Result<(), HubError> {
    match run_hooks(hub, conn, FilterKind::Connected, hub.on_connected.clone()).await {
        Ok(()) => Ok(()),
        Err(InvokeError::Hub(e)) => Err(e),
        Err(InvokeError::Binding(d)) => Err(HubError::unexpected("InvalidOperationException", d)),
    }
}

/// Runs the on-disconnected hooks (through the filters); their errors are logged only.
pub(crate) async fn on_disconnected(hub: &Arc<HubShared>, conn: &Arc<HubConnection>) {
    if let Err(e) = run_hooks(
        hub,
        conn,
        FilterKind::Disconnected,
        hub.on_disconnected.clone(),
    )
    .await
    {
        tracing::debug!(connection_id = %conn.id, error = ?e, "on-disconnected hook failed");
    }
}
