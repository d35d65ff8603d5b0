//! Options with ASP.NET Core's names and defaults.

use std::time::Duration;

use crate::protocol::negotiate::TransportType;

/// Per-hub options (ASP.NET `HubOptions`). Every default is ASP.NET Core's.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// How often the server pings an idle connection. Defaults to 15 s (`KeepAliveInterval`).
    pub keep_alive_interval: Duration,
    /// A connection that sent nothing for this long (after its first ping) is closed.
    /// Defaults to 30 s (`ClientTimeoutInterval`).
    pub client_timeout_interval: Duration,
    /// How long a client has to complete the handshake. Defaults to 15 s (`HandshakeTimeout`).
    pub handshake_timeout: Duration,
    /// The largest single message a client may send, in bytes; `None` = unlimited.
    /// Defaults to 32 KiB (`MaximumReceiveMessageSize`).
    pub maximum_receive_message_size: Option<usize>,
    /// Items buffered per client-to-server stream. Defaults to 10 (`StreamBufferCapacity`).
    pub stream_buffer_capacity: usize,
    /// Non-streaming invocations of one connection that may run at once; the rest wait in
    /// order. Defaults to 1 (`MaximumParallelInvocationsPerClient`).
    pub maximum_parallel_invocations_per_client: usize,
    /// Whether unexpected errors' messages reach clients. Defaults to false
    /// (`EnableDetailedErrors`).
    pub enable_detailed_errors: bool,
    /// Bytes of unacknowledged messages kept for stateful reconnect. Defaults to 100 000
    /// (`StatefulReconnectBufferSize`).
    pub stateful_reconnect_buffer_size: usize,
    /// How long a server-to-client invocation waits for the client's result. Defaults to 30 s.
    pub client_result_timeout: Duration,
    /// Client-to-server streams one connection may have open at once. Defaults to 100.
    pub maximum_concurrent_streams_per_client: usize,
    /// Groups one connection may belong to. Defaults to 1 000.
    pub maximum_groups_per_connection: usize,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            keep_alive_interval: Duration::from_secs(15),
            client_timeout_interval: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(15),
            maximum_receive_message_size: Some(32 * 1024),
            stream_buffer_capacity: 10,
            maximum_parallel_invocations_per_client: 1,
            enable_detailed_errors: false,
            stateful_reconnect_buffer_size: 100_000,
            client_result_timeout: Duration::from_secs(30),
            maximum_concurrent_streams_per_client: 100,
            maximum_groups_per_connection: 1_000,
        }
    }
}

/// Per-path HTTP options (ASP.NET `HttpConnectionDispatcherOptions`).
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// Transports this path accepts, listed by negotiate in preference order.
    /// Defaults to all three (`Transports`).
    pub transports: Vec<TransportType>,
    /// Whether negotiate may grant stateful reconnect. Defaults to false
    /// (`AllowStatefulReconnects`).
    pub allow_stateful_reconnects: bool,
    /// How long a long poll is held open without data. Defaults to 90 s (`PollTimeout`).
    pub long_polling_poll_timeout: Duration,
    /// How long an inactive connection (between polls, negotiated but unused, or waiting for
    /// a stateful reconnect) is kept. Defaults to 15 s (`DisconnectTimeout`).
    pub disconnect_timeout: Duration,
    /// Bytes queued for one connection before it is treated as a slow consumer and closed.
    /// Defaults to 1 MiB.
    pub transport_max_buffer_size: usize,
    /// How long one write to a client may stall before the connection is closed.
    /// Defaults to 10 s (`TransportSendTimeout`).
    pub transport_send_timeout: Duration,
    /// The largest request body accepted on a send (POST), and the largest WebSocket message,
    /// in bytes. One body or message may carry many hub messages (the stock client batches
    /// queued sends), each still limited by `HubOptions::maximum_receive_message_size`; this
    /// bounds what one request can make the server buffer. A POST declaring more is refused
    /// with 413 before its body is read. Defaults to 4 MiB.
    pub maximum_post_body_size: usize,
    /// The lowest negotiate version accepted. Defaults to 0 (`MinimumProtocolVersion`).
    pub minimum_protocol_version: u32,
    /// Connections negotiated but not yet used that this path keeps at once; more get 429.
    /// Defaults to 10 000.
    pub maximum_pending_negotiations: usize,
    /// Connections this path holds at once (negotiated, live or just ended); more get 429.
    /// Defaults to 100 000.
    pub maximum_connections: usize,
    /// Origins allowed to open WebSockets (browsers do not apply CORS to upgrades, so the
    /// check is here). `None` allows any origin. Requests without `Origin` (non-browser
    /// clients) are always allowed. Defaults to `None`.
    pub allowed_origins: Option<Vec<String>>,
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            transports: TransportType::ALL.to_vec(),
            allow_stateful_reconnects: false,
            long_polling_poll_timeout: Duration::from_secs(90),
            disconnect_timeout: Duration::from_secs(15),
            transport_max_buffer_size: 1024 * 1024,
            transport_send_timeout: Duration::from_secs(10),
            maximum_post_body_size: 4 * 1024 * 1024,
            minimum_protocol_version: 0,
            maximum_pending_negotiations: 10_000,
            maximum_connections: 100_000,
            allowed_origins: None,
        }
    }
}
