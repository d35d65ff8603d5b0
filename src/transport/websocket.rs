//! WebSockets: the upgrade handshake (hyper's `OnUpgrade`) and one task per socket that reads
//! frames into the connection and writes its outbound batches, one WebSocket message each.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::manager::{ConnEntry, lock};
use super::{Batch, CloseKind, Frame};

/// Bytes merged into one outbound WebSocket message at most.
const MAX_BATCH: usize = 64 * 1024;

/// Whether `headers` ask for a WebSocket upgrade.
pub(crate) fn is_upgrade(headers: &http::HeaderMap) -> bool {
    let has = |name: http::header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    has(http::header::UPGRADE, "websocket") && has(http::header::CONNECTION, "upgrade")
}

/// The `Sec-WebSocket-Accept` value for a valid upgrade request, or why it is not one.
pub(crate) fn accept_key(headers: &http::HeaderMap) -> Result<String, &'static str> {
    if headers
        .get(http::header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err("Unsupported WebSocket version");
    }
    let key = headers
        .get(http::header::SEC_WEBSOCKET_KEY)
        .ok_or("Missing Sec-WebSocket-Key")?;
    Ok(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// Limits for one socket: a small read buffer keeps idle connections cheap; the message limit
/// bounds what one frame can make us buffer.
pub(crate) fn config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

fn to_message(frame: Frame) -> Message {
    match frame {
        Frame::Binary(b) => Message::Binary(b),
        Frame::Text(b) => match Utf8Bytes::try_from(b.clone()) {
            Ok(t) => Message::Text(t),
            Err(_) => Message::Binary(b),
        },
    }
}

fn close_frame(kind: CloseKind) -> CloseFrame {
    let (code, reason) = match kind {
        CloseKind::Normal => (CloseCode::Normal, ""),
        CloseKind::MessageTooBig => (CloseCode::Size, "message too big"),
        CloseKind::Error => (CloseCode::Error, ""),
    };
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// How a socket's life ended.
enum End {
    /// The application closed the connection (close frame sent).
    Application,
    /// The client closed the socket cleanly.
    ClientClosed,
    /// The socket broke (reset, timeout, protocol error).
    Dropped,
    /// A stateful reconnect replaced this socket.
    Replaced,
}

/// Serves one upgraded socket for `entry` until either side ends it.
pub(crate) async fn serve<IO>(
    io: IO,
    entry: Arc<ConnEntry>,
    max_message: usize,
    send_timeout: Duration,
) where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let ws =
        WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(config(max_message)))
            .await;
    let (mut sink, mut stream) = ws.split();
    let cancel = lock(&entry.socket_cancel).clone();
    let inbound = entry.inbound();
    let outbound = entry.outbound.clone();
    let end = loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break End::Replaced,
            batch = outbound.next_batch(MAX_BATCH) => match batch {
                Batch::Frames(frames) => {
                    let write = async {
                        for f in frames {
                            sink.feed(to_message(f)).await?;
                        }
                        sink.flush().await
                    };
                    match tokio::time::timeout(send_timeout, write).await {
                        Ok(Ok(())) => {}
                        _ => {
                            tracing::debug!(connection_id = %entry.id, "websocket write failed or timed out");
                            break End::Dropped;
                        }
                    }
                }
                Batch::Closed(kind) => {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        sink.send(Message::Close(Some(close_frame(kind)))),
                    )
                    .await;
                    break End::Application;
                }
            },
            msg = stream.next() => {
                let frame = match msg {
                    Some(Ok(Message::Text(t))) => Frame::Text(Bytes::from(t)),
                    Some(Ok(Message::Binary(b))) => Frame::Binary(b),
                    Some(Ok(Message::Close(_))) => break End::ClientClosed,
                    Some(Ok(_)) => continue,
                    Some(Err(WsError::Capacity(_))) => {
                        let _ = sink.send(Message::Close(Some(close_frame(CloseKind::MessageTooBig)))).await;
                        break End::ClientClosed;
                    }
                    Some(Err(_)) | None => break End::Dropped,
                };
                let Some(tx) = &inbound else { break End::ClientClosed };
                // Waiting here is the back-pressure: a client that sends faster than its
                // messages are processed stops being read.
                if tx.send(frame).await.is_err() {
                    break End::ClientClosed;
                }
            }
        }
    };
    drop(inbound);
    match end {
        End::Replaced => {}
        End::Dropped if entry.stateful && !outbound.is_closed() => {
            // Keep the logical connection for a stateful reconnect; the reaper disposes of
            // it after the disconnect timeout if the client never comes back.
            entry.set_inactive();
        }
        End::Application | End::ClientClosed | End::Dropped => {
            entry.set_inactive();
            entry.close_inbound();
        }
    }
}
