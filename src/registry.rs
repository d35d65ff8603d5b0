//! The node-local registry of a hub's live connections and its group and user indexes, and
//! [`HubConnection`], the per-connection send funnel every message to a client goes through.
//!
//! Indexes map a group or user to its members, so a group send costs in proportion to the
//! group, not the hub. No lock here is ever held across an `.await`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::connection::reconnect::{Admit, ReplayBuffer};
use crate::protocol::{Close, HubMessage, Outcome, Protocol};
use crate::transport::manager::lock;
use crate::transport::{CloseKind, ConnectionInfo, Frame, Outbound, SendError};

/// How long a send to one connection waits for room in its buffer (ASP.NET's
/// `TransportSendTimeout`).
pub(crate) const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One message encoded once per protocol, ready to be queued for any number of connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedMessage {
    /// The JSON encoding (framed).
    pub json: Bytes,
    /// The MessagePack encoding (framed).
    pub messagepack: Bytes,
}

impl EncodedMessage {
    /// Encodes `message` in both protocols.
    pub fn new(json: &HubMessage, messagepack: &HubMessage) -> Self {
        Self {
            json: Protocol::Json.encode_message(json),
            messagepack: Protocol::MessagePack.encode_message(messagepack),
        }
    }

    /// The bytes for a connection speaking `protocol`.
    pub fn for_protocol(&self, protocol: Protocol) -> &Bytes {
        match protocol {
            Protocol::Json => &self.json,
            Protocol::MessagePack => &self.messagepack,
        }
    }
}

/// A live hub connection as the rest of the hub sees it.
#[derive(Debug)]
pub struct HubConnection {
    pub(crate) id: String,
    pub(crate) protocol: Protocol,
    pub(crate) outbound: Arc<Outbound>,
    pub(crate) info: Arc<ConnectionInfo>,
    pub(crate) user_id: Option<String>,
    pub(crate) groups: Mutex<HashSet<String>>,
    pub(crate) pending_results: DashMap<String, oneshot::Sender<Outcome>>,
    next_invocation: AtomicU64,
    /// Cancelled when the server ends the connection (Close, slow consumer, shutdown).
    pub(crate) aborted: CancellationToken,
    pub(crate) replay: Option<Mutex<ReplayBuffer>>,
    pub(crate) close_message: Mutex<Option<Close>>,
    /// When the connection joined, in milliseconds since the Unix epoch (a backplane replay
    /// does not hand it messages sent before).
    pub(crate) connected_at_ms: u64,
}

impl HubConnection {
    pub(crate) fn new(
        protocol: Protocol,
        outbound: Arc<Outbound>,
        info: Arc<ConnectionInfo>,
        stateful: bool,
        replay_limit: usize,
    ) -> Self {
        Self {
            id: info.connection_id.clone(),
            protocol,
            outbound,
            user_id: info.principal.as_ref().and_then(|p| p.user_id.clone()),
            info,
            groups: Mutex::new(HashSet::new()),
            pending_results: DashMap::new(),
            next_invocation: AtomicU64::new(0),
            aborted: CancellationToken::new(),
            replay: stateful.then(|| Mutex::new(ReplayBuffer::new(replay_limit))),
            close_message: Mutex::new(None),
            connected_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or_default(),
        }
    }

    /// The public connection id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The protocol this connection speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Facts about the connection's transport and HTTP request.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    pub(crate) fn frame(&self, data: Bytes) -> Frame {
        match self.protocol {
            Protocol::Json => Frame::Text(data),
            Protocol::MessagePack => Frame::Binary(data),
        }
    }

    /// Queues bytes already encoded in this connection's protocol. A connection whose buffer
    /// is full is a slow consumer: it is closed, and the send reports it.
    pub(crate) fn send_encoded(&self, data: Bytes, trackable: bool) -> Result<(), SendError> {
        let result = match (&self.replay, trackable) {
            (Some(replay), true) => {
                // Numbering and queueing under one lock keeps the replay order identical to
                // the order on the wire.
                let mut replay = lock(replay);
                match replay.admit(data.clone()) {
                    Admit::Send => self.outbound.push(self.frame(data)),
                    Admit::Held => Ok(()),
                    Admit::Overflow => Err(SendError::Full),
                }
            }
            _ => self.outbound.push(self.frame(data)),
        };
        if result == Err(SendError::Full) {
            tracing::warn!(connection_id = %self.id, "closing slow consumer: outbound buffer full");
            self.abort(Some(Close {
                error: Some("Connection closed with an error.".into()),
                allow_reconnect: true,
            }));
        }
        result
    }

    /// The client acknowledged messages up to `sequence_id`: frees them and writes what was
    /// held back for lack of room.
    pub(crate) fn acknowledge(&self, sequence_id: u64) {
        if let Some(replay) = &self.replay {
            let mut replay = lock(replay);
            for data in replay.ack(sequence_id) {
                if self.outbound.push(self.frame(data)).is_err() {
                    break;
                }
            }
        }
    }

    /// Queues bytes for this one connection, waiting (up to [`SEND_TIMEOUT`]) while its
    /// buffer is full instead of closing it: a sender that targets one client slows down
    /// with that client. A client that stays full that long is closed as a slow consumer.
    pub(crate) async fn send_encoded_wait(&self, data: Bytes) -> Result<(), SendError> {
        if self.replay.is_none() {
            match tokio::time::timeout(SEND_TIMEOUT, self.outbound.wait_for_space(data.len())).await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {} // still full: send_encoded closes it as a slow consumer
            }
        }
        self.send_encoded(data, true)
    }

    /// Encodes and queues one message.
    pub(crate) fn send_message(&self, message: &HubMessage) -> Result<(), SendError> {
        let data = self.protocol.encode_message(message);
        self.send_encoded(data, message.is_trackable())
    }

    /// Ends the connection from the server side, sending `close` (if any) first.
    pub(crate) fn abort(&self, close: Option<Close>) {
        {
            let mut slot = lock(&self.close_message);
            if slot.is_none() {
                *slot = close;
            }
        }
        self.aborted.cancel();
    }

    pub(crate) fn next_invocation_id(&self) -> String {
        format!("s{}", self.next_invocation.fetch_add(1, Ordering::Relaxed))
    }

    /// Whether the connection's transport is writing at all; used by the close path.
    pub(crate) fn close_transport(&self, kind: CloseKind) {
        self.outbound.close(kind);
    }
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every connection, except some.
    All {
        /// Connection ids left out.
        except: Vec<String>,
    },
    /// These connections.
    Connections(Vec<String>),
    /// Every member of these groups (each once), except some.
    Groups {
        /// Group names.
        groups: Vec<String>,
        /// Connection ids left out.
        except: Vec<String>,
    },
    /// Every connection of these users.
    Users(Vec<String>),
}

/// What a group command did to a local connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupChange {
    /// The membership changed.
    Changed,
    /// It already was as asked (a member already, or not a member).
    Unchanged,
    /// The connection is not on this node.
    NotFound,
    /// The connection is in `maximum_groups_per_connection` groups already.
    LimitReached,
}

/// A hub's live connections on this node, with group and user indexes.
#[derive(Debug, Default)]
pub struct Registry {
    connections: DashMap<String, Arc<HubConnection>>,
    groups: DashMap<String, HashSet<String>>,
    users: DashMap<String, HashSet<String>>,
}

impl Registry {
    pub(crate) fn add(&self, conn: Arc<HubConnection>) {
        if let Some(user) = &conn.user_id {
            self.users
                .entry(user.clone())
                .or_default()
                .insert(conn.id.clone());
        }
        self.connections.insert(conn.id.clone(), conn);
    }

    /// Removes a connection and its group memberships; returns the groups it was in.
    pub(crate) fn remove(&self, conn: &HubConnection) -> Vec<String> {
        self.connections.remove(&conn.id);
        let groups: Vec<String> = lock(&conn.groups).drain().collect();
        for g in &groups {
            self.remove_from_index(&self.groups, g, &conn.id);
        }
        if let Some(user) = &conn.user_id {
            self.remove_from_index(&self.users, user, &conn.id);
        }
        groups
    }

    fn remove_from_index(&self, index: &DashMap<String, HashSet<String>>, key: &str, id: &str) {
        index.remove_if_mut(key, |_, members| {
            members.remove(id);
            members.is_empty()
        });
    }

    /// A live connection by id.
    pub fn get(&self, id: &str) -> Option<Arc<HubConnection>> {
        self.connections.get(id).map(|c| c.clone())
    }

    /// Ids of the live connections on this node.
    pub fn connection_ids(&self) -> Vec<String> {
        self.connections.iter().map(|c| c.key().clone()).collect()
    }

    /// Live connections on this node.
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// Whether no connection is live on this node.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// Adds connection `id` to `group`.
    pub(crate) fn add_to_group(&self, id: &str, group: &str, max_groups: usize) -> GroupChange {
        let Some(conn) = self.get(id) else {
            return GroupChange::NotFound;
        };
        {
            let mut groups = lock(&conn.groups);
            if groups.contains(group) {
                return GroupChange::Unchanged;
            }
            if groups.len() >= max_groups {
                return GroupChange::LimitReached;
            }
            groups.insert(group.to_owned());
        }
        self.groups
            .entry(group.to_owned())
            .or_default()
            .insert(id.to_owned());
        GroupChange::Changed
    }

    /// Removes connection `id` from `group`.
    pub(crate) fn remove_from_group(&self, id: &str, group: &str) -> GroupChange {
        let Some(conn) = self.get(id) else {
            return GroupChange::NotFound;
        };
        if !lock(&conn.groups).remove(group) {
            return GroupChange::Unchanged;
        }
        self.remove_from_index(&self.groups, group, id);
        GroupChange::Changed
    }

    /// Whether `group` has a member on this node.
    pub fn has_group(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// Whether `user` has a connection on this node.
    pub fn has_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Names of the groups with a member on this node.
    pub fn group_names(&self) -> Vec<String> {
        self.groups.iter().map(|g| g.key().clone()).collect()
    }

    /// Users with a connection on this node.
    pub fn user_ids(&self) -> Vec<String> {
        self.users.iter().map(|u| u.key().clone()).collect()
    }

    /// Members of `group` on this node.
    pub fn group_members(&self, group: &str) -> Vec<String> {
        self.groups
            .get(group)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Connection ids of `user` on this node.
    pub fn user_connections(&self, user: &str) -> Vec<String> {
        self.users
            .get(user)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn deliver(conn: &HubConnection, msg: &EncodedMessage) {
        // A full buffer closes that connection inside send_encoded; others carry on.
        let _ = conn.send_encoded(msg.for_protocol(conn.protocol).clone(), true);
    }

    /// Queues `msg` for every local connection `target` names; returns how many.
    pub fn send(&self, target: &Target, msg: &EncodedMessage) -> usize {
        self.send_where(target, msg, |_| true)
    }

    /// [`Registry::send`] to the connections `target` names that also pass `keep`.
    pub fn send_where(
        &self,
        target: &Target,
        msg: &EncodedMessage,
        keep: impl Fn(&HubConnection) -> bool,
    ) -> usize {
        let mut n = 0;
        match target {
            Target::All { except } => {
                for c in self.connections.iter() {
                    if !except.iter().any(|e| e == c.key()) && keep(c.value()) {
                        Self::deliver(c.value(), msg);
                        n += 1;
                    }
                }
            }
            Target::Connections(ids) => {
                for id in ids {
                    if let Some(c) = self.get(id).filter(|c| keep(c)) {
                        Self::deliver(&c, msg);
                        n += 1;
                    }
                }
            }
            Target::Groups { groups, except } => {
                let mut seen: HashSet<&str> = HashSet::new();
                let mut targets: Vec<Arc<HubConnection>> = Vec::new();
                let members: Vec<Vec<String>> =
                    groups.iter().map(|g| self.group_members(g)).collect();
                for id in members.iter().flatten() {
                    if except.iter().any(|e| e == id) || !seen.insert(id.as_str()) {
                        continue;
                    }
                    if let Some(c) = self.get(id).filter(|c| keep(c)) {
                        targets.push(c);
                    }
                }
                for c in targets {
                    Self::deliver(&c, msg);
                    n += 1;
                }
            }
            Target::Users(users) => {
                let ids: HashSet<String> = users
                    .iter()
                    .flat_map(|u| self.user_connections(u))
                    .collect();
                for id in ids {
                    if let Some(c) = self.get(&id).filter(|c| keep(c)) {
                        Self::deliver(&c, msg);
                        n += 1;
                    }
                }
            }
        }
        n
    }
}
