//! An in-memory client for testing hubs without HTTP or sockets: it runs the real
//! connection loop and dispatch code over channels (enabled by the `test-util` feature).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use tidings::{Args, Hub, protocol::Protocol, testing::TestClient};
//! let hub = Hub::builder()
//!     .method("Add", |Args((a, b)): Args<(i64, i64)>| async move { a + b })
//!     .build();
//! let mut client = TestClient::connect(&hub, Protocol::Json).await;
//! assert_eq!(client.invoke::<i64>("Add", (2, 3)).await, Ok(5));
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::hub::Hub;
use crate::protocol::{HubMessage, Invocation, Outcome, Protocol, handshake};
use crate::transport::{
    Batch, ConnectionHandler, ConnectionInfo, ConnectionIo, Frame, Outbound, Principal,
    RequestInfo, TransportType,
};

/// How long a [`TestClient`] waits for any one message.
const WAIT: Duration = Duration::from_secs(10);

/// A client connected to a hub in memory.
#[derive(Debug)]
pub struct TestClient {
    protocol: Protocol,
    inbound: Option<mpsc::Sender<Frame>>,
    outbound: Arc<Outbound>,
    buf: BytesMut,
    next_id: u64,
    connection_id: String,
    /// Messages received while waiting for something else, oldest first.
    pending: std::collections::VecDeque<HubMessage>,
}

impl TestClient {
    /// Connects and completes the handshake.
    pub async fn connect(hub: &Hub, protocol: Protocol) -> Self {
        Self::connect_as(hub, protocol, None).await
    }

    /// Connects as `principal` (what an authentication hook would have produced).
    pub async fn connect_as(hub: &Hub, protocol: Protocol, principal: Option<Principal>) -> Self {
        let (tx, rx) = mpsc::channel(32);
        let (_reconnect_tx, reconnected) = mpsc::channel(1);
        let outbound = Arc::new(Outbound::new(1 << 20));
        let connection_id = crate::transport::manager::random_id();
        let io = ConnectionIo {
            inbound: rx,
            outbound: outbound.clone(),
            info: Arc::new(ConnectionInfo {
                connection_id: connection_id.clone(),
                transport: TransportType::WebSockets,
                request: RequestInfo {
                    uri: http::Uri::from_static("/test"),
                    headers: http::HeaderMap::new(),
                },
                stateful_reconnect: false,
                principal,
            }),
            reconnected,
        };
        let endpoint = hub.endpoint();
        tokio::spawn(endpoint.on_connected(io));
        let mut client = Self {
            protocol,
            inbound: Some(tx),
            outbound,
            buf: BytesMut::new(),
            next_id: 0,
            connection_id,
            pending: Default::default(),
        };
        let hello = format!(
            "{{\"protocol\":\"{}\",\"version\":1}}\u{1e}",
            protocol.name()
        );
        client.send_raw(hello.into_bytes()).await;
        client.read_handshake().await;
        client
    }

    /// The connection's public id.
    pub fn connection_id(&self) -> &str {
        &self.connection_id
    }

    /// Sends raw bytes as one frame.
    pub async fn send_raw(&mut self, data: Vec<u8>) {
        if let Some(tx) = &self.inbound {
            let _ = tx.send(Frame::Binary(data.into())).await;
        }
    }

    async fn fill(&mut self) -> bool {
        match tokio::time::timeout(WAIT, self.outbound.next_batch(usize::MAX)).await {
            Ok(Batch::Frames(frames)) => {
                for f in frames {
                    self.buf.extend_from_slice(f.data());
                }
                true
            }
            _ => false,
        }
    }

    async fn read_handshake(&mut self) {
        loop {
            if let Ok(Some(r)) = handshake::parse_response(&mut self.buf) {
                assert_eq!(r, Ok(()), "handshake refused");
                return;
            }
            assert!(self.fill().await, "no handshake response");
        }
    }

    /// The next message from the server (Pings included), or `None` when the connection
    /// ended or nothing came within 10 seconds.
    pub async fn next_message(&mut self) -> Option<HubMessage> {
        if let Some(m) = self.pending.pop_front() {
            return Some(m);
        }
        loop {
            match self.protocol.parse_message(&mut self.buf, None) {
                Ok(Some(m)) => return Some(m),
                Ok(None) => {}
                Err(e) => panic!("server sent an invalid message: {e}"),
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next Invocation the server sends to this client (skipping Pings).
    pub async fn next_invocation(&mut self) -> Option<Invocation> {
        loop {
            match self.next_message().await? {
                HubMessage::Invocation(inv) => return Some(inv),
                HubMessage::Ping => {}
                other => self.pending.push_back(other),
            }
        }
    }

    async fn write(&mut self, msg: &HubMessage) {
        let data = self.protocol.encode_message(msg);
        self.send_raw(data.to_vec()).await;
    }

    fn invocation(
        &mut self,
        method: &str,
        args: &impl Serialize,
        id: Option<String>,
    ) -> HubMessage {
        let arguments = self
            .protocol
            .encode_arguments(args)
            .expect("arguments encode");
        HubMessage::Invocation(Invocation {
            headers: Default::default(),
            invocation_id: id,
            target: method.to_owned(),
            arguments,
            stream_ids: Vec::new(),
        })
    }

    /// Invokes a hub method and waits for its Completion: `Ok(result)` or `Err(error text)`.
    pub async fn invoke<T: DeserializeOwned>(
        &mut self,
        method: &str,
        args: impl Serialize,
    ) -> Result<T, String> {
        self.next_id += 1;
        let id = self.next_id.to_string();
        let msg = self.invocation(method, &args, Some(id.clone()));
        self.write(&msg).await;
        let mut skipped = Vec::new();
        let outcome = loop {
            match self.next_message().await {
                Some(HubMessage::Completion(c)) if c.invocation_id == id => break c.outcome,
                Some(HubMessage::Ping) => {}
                Some(other) => skipped.push(other),
                None => {
                    self.pending.extend(skipped);
                    return Err("connection closed".into());
                }
            }
        };
        self.pending.extend(skipped);
        match outcome {
            Outcome::Result(p) => self.protocol.decode_value(&p).map_err(|e| e.to_string()),
            Outcome::Void => serde_json::from_str("null").map_err(|e| e.to_string()),
            Outcome::Error(e) => Err(e),
        }
    }

    /// Invokes a hub method without waiting (no invocation id: no Completion comes back).
    pub async fn send(&mut self, method: &str, args: impl Serialize) {
        let msg = self.invocation(method, &args, None);
        self.write(&msg).await;
    }

    /// Closes the connection from the client side.
    pub async fn close(&mut self) {
        self.write(&HubMessage::Close(Default::default())).await;
        self.inbound.take();
    }
}
