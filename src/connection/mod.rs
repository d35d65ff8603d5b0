//! The life of one hub connection, whatever its transport: the handshake, keep-alive pings
//! and the client timeout, reading messages, handing invocations to [`crate::dispatch`] under
//! the parallel-invocation cap, client-to-server streams, client results, stateful reconnect,
//! and the clean-up that always runs at the end.

pub(crate) mod reconnect;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dispatch::{self, StreamEvent};
use crate::hub::HubShared;
use crate::protocol::{
    Close, HubMessage, Invocation, Outcome, Protocol, ProtocolError, TransferFormat, handshake,
};
use crate::registry::HubConnection;
use crate::transport::manager::lock;
use crate::transport::{CloseKind, ConnectionIo, Frame, TransportType};
use reconnect::InboundCursor;

/// The text every error Close carries (ASP.NET's).
pub(crate) const CLOSED_WITH_ERROR: &str = "Connection closed with an error.";

/// How a connection's loop ended.
enum Ending {
    /// The client left (Close message, or its transport ended).
    Client,
    /// The server ended it; the Close (if any) is in `close_message`.
    Server,
    /// A protocol error from the client.
    Error(CloseKind, String),
}

/// Runs one hub connection to its end.
pub(crate) async fn run(hub: Arc<HubShared>, mut io: ConnectionIo) {
    let options = &hub.options;
    let mut buf = BytesMut::new();
    let transport = io.info.transport;

    // 1. The handshake, within the handshake timeout.
    let deadline = Instant::now() + options.handshake_timeout;
    // The splitter remembers how far it searched: a handshake dribbled byte by byte is linear.
    let mut splitter = crate::protocol::json::RecordSplitter::new();
    let request = loop {
        match handshake::parse_request_with(
            &mut splitter,
            &mut buf,
            options.maximum_receive_message_size,
        ) {
            Ok(Some(r)) => break r,
            Ok(None) => {}
            Err(_) => {
                fail_handshake(&io, "Handshake was canceled.");
                return;
            }
        }
        match tokio::time::timeout_at(deadline, io.inbound.recv()).await {
            Ok(Some(frame)) => buf.extend_from_slice(frame.data()),
            Ok(None) => return,
            Err(_) => {
                fail_handshake(&io, handshake::HANDSHAKE_CANCELED);
                return;
            }
        }
    };
    let Some(protocol) = Protocol::from_name(&request.protocol) else {
        fail_handshake(&io, &handshake::protocol_not_supported(&request.protocol));
        return;
    };
    if request.version > protocol.version() {
        fail_handshake(
            &io,
            &handshake::version_not_supported(request.version, &request.protocol),
        );
        return;
    }
    if protocol.transfer_format() == TransferFormat::Binary
        && transport == TransportType::ServerSentEvents
    {
        fail_handshake(
            &io,
            &handshake::transfer_format_not_supported(&request.protocol),
        );
        return;
    }
    let stateful = io.info.stateful_reconnect && request.version >= 2;
    let conn = Arc::new(HubConnection::new(
        protocol,
        io.outbound.clone(),
        io.info.clone(),
        stateful,
        options.stateful_reconnect_buffer_size,
    ));
    let mut ok = Vec::new();
    handshake::write_response(None, &mut ok);
    let _ = io.outbound.push_unbounded(conn.frame(ok.into()));

    // 2. Registration and the on-connected hook.
    hub.registry.add(conn.clone());
    if let Some(backplane) = &hub.backplane {
        backplane.connection_added(&conn).await;
    }
    hub.stats.connected(transport);
    if let Err(e) = dispatch::on_connected(&hub, &conn).await {
        let detail = if options.enable_detailed_errors {
            format!("{CLOSED_WITH_ERROR} {}: {}", e.kind(), e.message())
        } else {
            CLOSED_WITH_ERROR.to_owned()
        };
        conn.abort(Some(Close {
            error: Some(detail),
            allow_reconnect: false,
        }));
    }

    // 3. The message loop.
    let mut state = LoopState::new(hub.clone(), conn.clone(), protocol);
    let ending = if conn.aborted.is_cancelled() {
        Ending::Server
    } else {
        state.run(&mut io, &mut buf, transport).await
    };

    // 4. Clean-up, which always runs.
    state.shutdown();
    match ending {
        Ending::Client => {}
        Ending::Server => {
            if let Some(close) = lock(&conn.close_message).take() {
                let _ = conn.send_message(&HubMessage::Close(close));
            }
        }
        Ending::Error(kind, reason) => {
            tracing::debug!(connection_id = %conn.id, %reason, "closing connection after a protocol error");
            let error = if options.enable_detailed_errors {
                format!("{CLOSED_WITH_ERROR} InvalidDataException: {reason}")
            } else {
                CLOSED_WITH_ERROR.to_owned()
            };
            let close = HubMessage::Close(Close {
                error: Some(error),
                allow_reconnect: false,
            });
            let _ = io
                .outbound
                .push_unbounded(conn.frame(protocol.encode_message(&close)));
            conn.close_transport(kind);
        }
    }
    let groups = hub.registry.remove(&conn);
    if let Some(backplane) = &hub.backplane {
        backplane.connection_removed(&conn, &groups);
    }
    conn.pending_results.clear();
    dispatch::on_disconnected(&hub, &conn).await;
    hub.stats.disconnected(transport);
}

fn fail_handshake(io: &ConnectionIo, error: &str) {
    let mut out = Vec::new();
    handshake::write_response(Some(error), &mut out);
    let frame = match io.info.transport {
        TransportType::ServerSentEvents => Frame::Text(out.into()),
        _ => Frame::Text(out.into()),
    };
    let _ = io.outbound.push_unbounded(frame);
    io.outbound.close(CloseKind::Normal);
}

/// The loop's state: what is running, what waits, and the upload streams.
struct LoopState {
    hub: Arc<HubShared>,
    conn: Arc<HubConnection>,
    protocol: Protocol,
    /// Cancelled when the connection ends: stops every invocation and stream it started.
    lifetime: CancellationToken,
    /// Running server-to-client streams, by invocation id.
    streams: HashMap<String, CancellationToken>,
    /// Client-to-server streams, by stream id.
    uploads: HashMap<String, mpsc::Sender<StreamEvent>>,
    /// Non-streaming invocations waiting for a slot.
    waiting: VecDeque<(Invocation, Vec<mpsc::Receiver<StreamEvent>>)>,
    slots: Arc<Semaphore>,
    finished_tx: mpsc::UnboundedSender<String>,
    finished_rx: mpsc::UnboundedReceiver<String>,
    cursor: InboundCursor,
    stateful: bool,
    /// Remembers how far the buffer was searched, so a message dribbled in many frames is
    /// parsed in linear time.
    parser: crate::protocol::MessageParser,
}

impl LoopState {
    fn new(hub: Arc<HubShared>, conn: Arc<HubConnection>, protocol: Protocol) -> Self {
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        let slots = Arc::new(Semaphore::new(
            hub.options.maximum_parallel_invocations_per_client.max(1),
        ));
        let stateful = conn.replay.is_some();
        Self {
            hub,
            conn,
            protocol,
            lifetime: CancellationToken::new(),
            streams: HashMap::new(),
            uploads: HashMap::new(),
            waiting: VecDeque::new(),
            slots,
            finished_tx,
            finished_rx,
            cursor: InboundCursor::new(),
            stateful,
            parser: crate::protocol::MessageParser::new(protocol),
        }
    }

    async fn run(
        &mut self,
        io: &mut ConnectionIo,
        buf: &mut BytesMut,
        transport: TransportType,
    ) -> Ending {
        let options = self.hub.options.clone();
        let pings = transport != TransportType::LongPolling;
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_ping_sent = Instant::now();
        let mut last_received = Instant::now();
        let mut client_pinged = false;
        let aborted = self.conn.aborted.clone();

        // Messages that arrived together with the handshake.
        if let Some(end) = self.drain(buf, &mut client_pinged).await {
            return end;
        }
        loop {
            tokio::select! {
                biased;
                () = aborted.cancelled() => return Ending::Server,
                Some(id) = self.finished_rx.recv() => { self.streams.remove(&id); }
                permit = self.slots.clone().acquire_owned(), if !self.waiting.is_empty() => {
                    let Ok(permit) = permit else { continue };
                    if let Some((inv, uploads)) = self.waiting.pop_front() {
                        self.spawn_invocation(inv, uploads, Some(permit));
                    }
                }
                frame = io.inbound.recv() => {
                    let Some(frame) = frame else { return Ending::Client };
                    last_received = Instant::now();
                    buf.extend_from_slice(frame.data());
                    if let Some(end) = self.drain(buf, &mut client_pinged).await {
                        return end;
                    }
                }
                Some(()) = io.reconnected.recv() => self.replay(),
                _ = heartbeat.tick() => {
                    let now = Instant::now();
                    if pings && now.duration_since(last_ping_sent) >= options.keep_alive_interval {
                        last_ping_sent = now;
                        let _ = self.conn.send_message(&HubMessage::Ping);
                    }
                    if self.stateful
                        && let Some(id) = self.cursor.take_ack()
                    {
                        let _ = self.conn.send_message(&HubMessage::Ack(id));
                    }
                    if pings && client_pinged && now.duration_since(last_received) >= options.client_timeout_interval {
                        tracing::debug!(connection_id = %self.conn.id, "client timeout");
                        self.conn.abort(Some(Close {
                            error: Some(CLOSED_WITH_ERROR.into()),
                            allow_reconnect: true,
                        }));
                        return Ending::Server;
                    }
                }
            }
        }
    }

    /// Handles every whole message in `buf`.
    async fn drain(&mut self, buf: &mut BytesMut, client_pinged: &mut bool) -> Option<Ending> {
        loop {
            let max = self.hub.options.maximum_receive_message_size;
            match self.parser.parse(buf, max) {
                Ok(Some(msg)) => {
                    self.hub.stats.message_in();
                    if matches!(msg, HubMessage::Ping) {
                        *client_pinged = true;
                    }
                    if let Some(end) = self.handle(msg).await {
                        return Some(end);
                    }
                }
                Ok(None) => return None,
                Err(ProtocolError::MessageTooLarge { limit }) => {
                    return Some(Ending::Error(
                        CloseKind::MessageTooBig,
                        format!("The maximum message size of {limit}B was exceeded."),
                    ));
                }
                Err(ProtocolError::Invalid(why)) => {
                    return Some(Ending::Error(CloseKind::Normal, why));
                }
            }
        }
    }

    async fn handle(&mut self, msg: HubMessage) -> Option<Ending> {
        if self.stateful && msg.is_trackable() && !self.cursor.receive() {
            return None; // a duplicate replayed by the client after a reconnect
        }
        match msg {
            HubMessage::Invocation(inv) => return self.invocation(inv, false),
            HubMessage::StreamInvocation(inv) => return self.invocation(inv, true),
            HubMessage::StreamItem(item) => {
                if let Some(tx) = self.uploads.get(&item.invocation_id) {
                    // A full upload buffer pauses this connection's reading until the
                    // handler catches up: back-pressure, as ASP.NET does.
                    let tx = tx.clone();
                    if tx.send(StreamEvent::Item(item.item)).await.is_err() {
                        self.uploads.remove(&item.invocation_id);
                    }
                }
            }
            HubMessage::Completion(c) => {
                if let Some(tx) = self.uploads.remove(&c.invocation_id) {
                    let err = match c.outcome {
                        Outcome::Error(e) => Some(e),
                        _ => None,
                    };
                    let _ = tx.try_send(StreamEvent::Complete(err));
                } else if let Some((_, tx)) = self.conn.pending_results.remove(&c.invocation_id) {
                    let _ = tx.send(c.outcome);
                }
            }
            HubMessage::CancelInvocation(c) => {
                if let Some(token) = self.streams.remove(&c.invocation_id) {
                    token.cancel();
                }
            }
            HubMessage::Ping => {}
            HubMessage::Close(_) => return Some(Ending::Client),
            HubMessage::Ack(id) => self.conn.acknowledge(id),
            HubMessage::Sequence(id) => {
                if self.stateful && self.cursor.sequence(id).is_err() {
                    return Some(Ending::Error(
                        CloseKind::Normal,
                        "Sequence ID greater than amount of messages we've received.".into(),
                    ));
                }
            }
        }
        None
    }

    fn invocation(&mut self, inv: Invocation, streaming: bool) -> Option<Ending> {
        let principal = self.conn.info.principal.as_ref();
        let method = match dispatch::check(&self.hub, &inv, streaming, principal) {
            Ok(m) => m,
            Err(error) => {
                if let Some(id) = &inv.invocation_id {
                    dispatch::complete_error(&self.conn, id, error);
                }
                return None;
            }
        };
        if self.uploads.len() + inv.stream_ids.len()
            > self.hub.options.maximum_concurrent_streams_per_client
        {
            if let Some(id) = &inv.invocation_id {
                dispatch::complete_error(
                    &self.conn,
                    id,
                    format!(
                        "An unexpected error occurred invoking '{}' on the server. HubException: Too many concurrent streams.",
                        inv.target
                    ),
                );
            }
            return None;
        }
        let mut receivers = Vec::new();
        for sid in &inv.stream_ids {
            let (tx, rx) = mpsc::channel(self.hub.options.stream_buffer_capacity.max(1));
            self.uploads.insert(sid.clone(), tx);
            receivers.push(rx);
        }
        if method.streaming {
            let token = self.lifetime.child_token();
            if let Some(id) = &inv.invocation_id {
                self.streams.insert(id.clone(), token.clone());
            }
            dispatch::spawn_stream(
                self.hub.clone(),
                self.conn.clone(),
                method,
                inv,
                receivers,
                token,
                self.finished_tx.clone(),
            );
        } else if !inv.stream_ids.is_empty() {
            // An invocation reading client streams runs beside the others, as in ASP.NET:
            // holding a slot while waiting for the client's items would stall the client.
            self.spawn_invocation(inv, receivers, None);
        } else {
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) if self.waiting.is_empty() => {
                    self.spawn_invocation(inv, receivers, Some(permit));
                }
                _ => self.waiting.push_back((inv, receivers)),
            }
        }
        None
    }

    fn spawn_invocation(
        &self,
        inv: Invocation,
        uploads: Vec<mpsc::Receiver<StreamEvent>>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let Some(method) = self.hub.method(&inv.target) else {
            return;
        };
        dispatch::spawn_invocation(
            self.hub.clone(),
            self.conn.clone(),
            method,
            inv,
            uploads,
            self.lifetime.child_token(),
            permit,
        );
    }

    /// A new socket replaced the old one: announce where the replay starts, then replay.
    fn replay(&mut self) {
        let Some(replay) = &self.conn.replay else {
            return;
        };
        let replay = lock(replay);
        let mut frames = Vec::with_capacity(replay.pending().count() + 1);
        let seq = self
            .protocol
            .encode_message(&HubMessage::Sequence(replay.first_unacked()));
        frames.push(self.conn.frame(seq));
        frames.extend(replay.pending().map(|b| self.conn.frame(b.clone())));
        self.conn.outbound.replace_queue(frames);
    }

    fn shutdown(&mut self) {
        self.lifetime.cancel();
        for (_, tx) in self.uploads.drain() {
            let _ = tx.try_send(StreamEvent::Complete(Some("Connection closed.".into())));
        }
        self.waiting.clear();
    }
}
