//! Dispatch: an Invocation bound to its method, run through the filters and the handler, and
//! answered with a Completion (or StreamItems and a Completion), with ASP.NET's error texts.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use crate::error::HubError;
use crate::extract::InvocationContext;
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
) -> Result<Arc<Method>, String> {
    let name = &inv.target;
    let Some(method) = hub.method(name) else {
        return Err(format!("Unknown hub method '{name}'"));
    };
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
    let ctx = context(&hub, &conn, Some(inv), uploads, cancel.clone());
    tokio::spawn(async move {
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
    });
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
    let ctx = context(&hub, &conn, Some(inv), uploads, cancel.clone());
    tokio::spawn(async move {
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
    });
}

/// Runs the on-connected hooks in order; the first error refuses the connection.
pub(crate) async fn on_connected(
    hub: &Arc<HubShared>,
    conn: &Arc<HubConnection>,
) -> Result<(), HubError> {
    for hook in hub.on_connected.iter() {
        let ctx = context(hub, conn, None, Vec::new(), CancellationToken::new());
        match hook(ctx).await {
            Ok(_) => {}
            Err(InvokeError::Hub(e)) => return Err(e),
            Err(InvokeError::Binding(d)) => {
                return Err(HubError::unexpected("InvalidOperationException", d));
            }
        }
    }
    Ok(())
}

/// Runs the on-disconnected hooks; their errors are logged only.
pub(crate) async fn on_disconnected(hub: &Arc<HubShared>, conn: &Arc<HubConnection>) {
    for hook in hub.on_disconnected.iter() {
        let ctx = context(hub, conn, None, Vec::new(), CancellationToken::new());
        if let Err(e) = hook(ctx).await {
            tracing::debug!(connection_id = %conn.id, error = ?e, "on-disconnected hook failed");
        }
    }
}
