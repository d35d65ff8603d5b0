//! The SignalR wire formats as pure functions over bytes.
//!
//! This module owns the nine hub message types, the JSON and MessagePack hub protocols
//! (record framing, varint length prefixes, the exact array layouts), the handshake and the
//! negotiate payloads. It does no IO, reads no clock and spawns nothing, so every function here
//! can be unit-tested with byte vectors and fuzzed directly.
//!
//! Invariant: a decoder never trusts a length it has not checked against the bytes present, and
//! never recurses deeper than [`MAX_DEPTH`] into a payload.

use std::collections::BTreeMap;

use bytes::Bytes;

pub mod args;
pub mod handshake;
pub mod json;
pub mod messagepack;
pub mod negotiate;

pub use args::ArgsDeserializer;

/// The byte that ends every JSON record (and the handshake in every protocol).
pub const RECORD_SEPARATOR: u8 = 0x1E;

/// How deep a decoder may nest into arrays and maps before it refuses the message.
pub const MAX_DEPTH: usize = 64;

/// Message headers: a map of non-empty strings, used for W3C trace context and the like.
pub type Headers = BTreeMap<String, String>;

/// Which hub protocol a connection speaks, chosen by the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `json`: UTF-8 JSON objects, each followed by `0x1E`.
    Json,
    /// `messagepack`: `VarInt(length) || msgpack array`.
    MessagePack,
}

/// The transfer format a transport carries: SSE carries text only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferFormat {
    /// UTF-8 text (WebSocket text frames, SSE events).
    Text,
    /// Arbitrary bytes (WebSocket binary frames, long-polling bodies).
    Binary,
}

impl TransferFormat {
    /// The exact name used in negotiate responses: `Text` or `Binary`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "Text",
            Self::Binary => "Binary",
        }
    }
}

/// One value already encoded in the connection's protocol: JSON text or MessagePack bytes.
///
/// Hub arguments, results and stream items travel as `Payload`s so that a broadcast is encoded
/// once and decoded lazily, straight into the handler's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(pub Bytes);

/// An Invocation (type 1) or StreamInvocation (type 4).
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// Optional headers.
    pub headers: Headers,
    /// `None` for a non-blocking (fire-and-forget) invocation; always `Some` for type 4.
    pub invocation_id: Option<String>,
    /// The method name.
    pub target: String,
    /// The arguments as one encoded array (see [`ArgsDeserializer`] to bind them).
    pub arguments: Payload,
    /// Ids of client-to-server streams bound to stream parameters.
    pub stream_ids: Vec<String>,
}

/// A StreamItem (type 2).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamItem {
    /// Optional headers.
    pub headers: Headers,
    /// The stream (or streaming invocation) this item belongs to.
    pub invocation_id: String,
    /// The item, encoded.
    pub item: Payload,
}

/// What a Completion carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// No result at all (MessagePack kind 2; JSON without `result` and `error`).
    Void,
    /// A result value (MessagePack kind 3; JSON `result`).
    Result(Payload),
    /// An error text (MessagePack kind 1; JSON `error`).
    Error(String),
}

/// A Completion (type 3).
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Optional headers.
    pub headers: Headers,
    /// The invocation (or stream) completed.
    pub invocation_id: String,
    /// Its outcome.
    pub outcome: Outcome,
}

/// A CancelInvocation (type 5).
#[derive(Debug, Clone, PartialEq)]
pub struct CancelInvocation {
    /// Optional headers.
    pub headers: Headers,
    /// The streaming invocation to stop.
    pub invocation_id: String,
}

/// A Close (type 7).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Close {
    /// Why the connection closed, if it closed with an error.
    pub error: Option<String>,
    /// Whether the client may reconnect automatically.
    pub allow_reconnect: bool,
}

/// Every SignalR hub message.
#[derive(Debug, Clone, PartialEq)]
pub enum HubMessage {
    /// Type 1.
    Invocation(Invocation),
    /// Type 2.
    StreamItem(StreamItem),
    /// Type 3.
    Completion(Completion),
    /// Type 4.
    StreamInvocation(Invocation),
    /// Type 5.
    CancelInvocation(CancelInvocation),
    /// Type 6.
    Ping,
    /// Type 7.
    Close(Close),
    /// Type 8: the highest sequence id the sender has processed.
    Ack(u64),
    /// Type 9: the sequence id of the next trackable message the sender will send.
    Sequence(u64),
}

impl HubMessage {
    /// The message's numeric type on the wire.
    pub fn message_type(&self) -> u8 {
        match self {
            Self::Invocation(_) => 1,
            Self::StreamItem(_) => 2,
            Self::Completion(_) => 3,
            Self::StreamInvocation(_) => 4,
            Self::CancelInvocation(_) => 5,
            Self::Ping => 6,
            Self::Close(_) => 7,
            Self::Ack(_) => 8,
            Self::Sequence(_) => 9,
        }
    }

    /// Whether stateful reconnect numbers (and buffers) this message: types 1 to 5.
    pub fn is_trackable(&self) -> bool {
        self.message_type() <= 5
    }
}

/// Why bytes could not be read as SignalR messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// One message is larger than the receive limit (checked before it is buffered whole).
    MessageTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The bytes are not a valid message; the text says why (never echoes the payload).
    Invalid(String),
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MessageTooLarge { limit } => {
                write!(f, "The maximum message size of {limit}B was exceeded.")
            }
            Self::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ProtocolError {}

impl ProtocolError {
    pub(crate) fn invalid(why: impl Into<String>) -> Self {
        Self::Invalid(why.into())
    }
}

impl Protocol {
    /// The name used in the handshake: `json` or `messagepack`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::MessagePack => "messagepack",
        }
    }

    /// Looks a protocol up by its handshake name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Self::Json),
            "messagepack" => Some(Self::MessagePack),
            _ => None,
        }
    }

    /// The highest protocol version this server speaks (2: stateful reconnect).
    pub fn version(self) -> u32 {
        2
    }

    /// The transfer format the protocol needs from its transport.
    pub fn transfer_format(self) -> TransferFormat {
        match self {
            Self::Json => TransferFormat::Text,
            Self::MessagePack => TransferFormat::Binary,
        }
    }

    /// Appends one framed message to `out`.
    pub fn write_message(self, message: &HubMessage, out: &mut Vec<u8>) {
        match self {
            Self::Json => json::write_message(message, out),
            Self::MessagePack => messagepack::write_message(message, out),
        }
    }

    /// Encodes one framed message into fresh bytes.
    pub fn encode_message(self, message: &HubMessage) -> Bytes {
        let mut out = Vec::with_capacity(64);
        self.write_message(message, &mut out);
        Bytes::from(out)
    }

    /// Takes one whole message off the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds only part of a message (read more and call again),
    /// and [`ProtocolError::MessageTooLarge`] as soon as the message is known to exceed
    /// `max_size` bytes (`None` = unlimited), before it has arrived whole.
    pub fn parse_message(
        self,
        buf: &mut bytes::BytesMut,
        max_size: Option<usize>,
    ) -> Result<Option<HubMessage>, ProtocolError> {
        match self {
            Self::Json => json::parse_message(buf, max_size),
            Self::MessagePack => messagepack::parse_message(buf, max_size),
        }
    }

    /// Encodes one value (an argument list, a result, a stream item) in this protocol.
    ///
    /// JSON keeps field names as written by `serde`; MessagePack writes structs as maps with
    /// those same names, and byte buffers (`serde_bytes`) as `bin`.
    pub fn encode_value<T: serde::Serialize + ?Sized>(
        self,
        value: &T,
    ) -> Result<Payload, ProtocolError> {
        match self {
            Self::Json => serde_json::to_vec(value)
                .map(|v| Payload(Bytes::from(v)))
                .map_err(|e| ProtocolError::invalid(e.to_string())),
            Self::MessagePack => rmp_serde::to_vec_named(value)
                .map(|v| Payload(Bytes::from(v)))
                .map_err(|e| ProtocolError::invalid(e.to_string())),
        }
    }

    /// Encodes an argument list: `args` serializes as a sequence (a tuple such as `(a, b)` or
    /// `(x,)`, an array, a `Vec`); `()` means no arguments and gives an empty list.
    pub fn encode_arguments<T: serde::Serialize + ?Sized>(
        self,
        args: &T,
    ) -> Result<Payload, ProtocolError> {
        let mut payload = self.encode_value(args)?;
        // `()` serializes as a unit (null), but it means "no arguments": an empty list.
        match (self, &payload.0[..]) {
            (Self::Json, b"null") => payload.0 = Bytes::from_static(b"[]"),
            (Self::MessagePack, [0xc0]) => payload.0 = Bytes::from_static(&[0x90]),
            _ => {}
        }
        Ok(payload)
    }

    /// Decodes one value encoded in this protocol.
    ///
    /// The bytes are checked first, whatever their origin: nesting deeper than [`MAX_DEPTH`]
    /// is refused before any recursive decoder sees it, and every MessagePack length and
    /// element count must be backed by the bytes present, so a lying `array32` header cannot
    /// make the typed decoder pre-allocate for elements that do not exist.
    pub fn decode_value<T: serde::de::DeserializeOwned>(
        self,
        payload: &Payload,
    ) -> Result<T, ProtocolError> {
        match self {
            Self::Json => {
                json::check_depth(&payload.0, 0)?;
                serde_json::from_slice(&payload.0)
                    .map_err(|e| ProtocolError::invalid(e.to_string()))
            }
            Self::MessagePack => {
                messagepack::skip_value(&payload.0, 0)?;
                rmp_serde::from_slice(&payload.0).map_err(|e| ProtocolError::invalid(e.to_string()))
            }
        }
    }
}

/// Reads one connection's inbound hub messages from a buffer that grows between calls.
///
/// Unlike [`Protocol::parse_message`], it remembers how much of a partial JSON record it has
/// already searched for the separator, so a peer dribbling a message one byte per frame costs
/// linear time. MessagePack frames carry their length up front and need no search. The
/// contract of [`json::RecordSplitter`] applies: between calls the buffer is only appended to.
#[derive(Debug, Clone)]
pub struct MessageParser {
    protocol: Protocol,
    records: json::RecordSplitter,
}

impl MessageParser {
    /// A parser for a connection speaking `protocol`, starting at the buffer's front.
    pub fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            records: json::RecordSplitter::new(),
        }
    }

    /// The protocol parsed.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Takes one whole message off the front of `buf`; see [`Protocol::parse_message`].
    pub fn parse(
        &mut self,
        buf: &mut bytes::BytesMut,
        max_size: Option<usize>,
    ) -> Result<Option<HubMessage>, ProtocolError> {
        match self.protocol {
            Protocol::Json => json::parse_message_with(&mut self.records, buf, max_size),
            Protocol::MessagePack => messagepack::parse_message(buf, max_size),
        }
    }
}
