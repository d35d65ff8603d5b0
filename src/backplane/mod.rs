//! Scale-out: the [`Backplane`] seam between a hub's node-local [`Registry`] and the other
//! processes ("nodes") serving the same hub.
//!
//! Without a backplane (the default) a hub is in-memory and single-node: every send goes
//! straight to the local registry, and nothing here costs anything. With one (for example
//! [`RedisBackplane`], feature `redis`), every send is first delivered to this node's
//! connections, then handed, already encoded once per protocol, to the backplane, which
//! forwards the bytes to the other nodes without blocking the sender.
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # async fn f() {
//! use tidings::Hub;
//! use tidings::backplane::RedisBackplane;
//!
//! let hub = Hub::builder()
//!     .name("Chat")
//!     .backplane(RedisBackplane::new("redis://127.0.0.1:6379"))
//!     .build(); // inside a Tokio runtime: the backplane starts its tasks here
//! # let _ = hub;
//! # }
//! ```

#[cfg(feature = "redis")]
mod envelope;
#[cfg(feature = "redis")]
mod eventlog;
#[cfg(feature = "redis")]
mod ingress;
#[cfg(feature = "redis")]
mod redis;

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "redis")]
pub use self::eventlog::RedisEventLog;
#[cfg(feature = "redis")]
pub use self::ingress::{StreamIngress, StreamIngressOptions};
#[cfg(feature = "redis")]
pub use self::redis::{RedisBackplane, RedisOptions};

use crate::error::Error;
use crate::hub::HubStats;
use crate::protocol::{Outcome, Protocol};
use crate::registry::{EncodedMessage, GroupChange, HubConnection, Registry, Target};
use crate::transport::BoxFuture;

/// The answer of a client invoked on another node: the protocol its Completion was encoded
/// in, and the outcome.
pub type RemoteOutcome = (Protocol, Outcome);

/// Links one hub's node-local registry to the other nodes of a cluster.
///
/// The hub calls these methods; an implementation forwards to its peers and, for what it
/// receives from them, delivers through the [`Node`] it was given in [`Backplane::start`].
/// Nothing here may block: [`Backplane::publish`] queues, and the futures are bounded by
/// timeouts.
pub trait Backplane: Send + Sync + 'static {
    /// Binds the backplane to its hub. Called once, by `HubBuilder::build`, inside a Tokio
    /// runtime.
    fn start(&self, node: Node);

    /// Forwards a message that was already delivered to the local connections `target`
    /// names to the other nodes. Never blocks; a message that cannot be queued is counted
    /// and logged, never silently dropped.
    fn publish(&self, target: &Target, message: &EncodedMessage);

    /// A connection joined this node. The future resolves once messages sent to it (by id or
    /// by user) from other nodes can reach it, and it is visible to presence queries.
    fn connection_added(&self, connection: &Arc<HubConnection>) -> BoxFuture<()>;

    /// A connection left this node (it already left the registry and these groups).
    fn connection_removed(&self, connection: &HubConnection, groups: &[String]);

    /// A local connection joined a group: resolves once group messages from other nodes
    /// reach it.
    fn group_joined(&self, connection_id: &str, group: &str) -> BoxFuture<()>;

    /// A local connection left a group.
    fn group_left(&self, connection_id: &str, group: &str);

    /// Adds (`add`) or removes a connection that is not on this node to or from a group,
    /// and waits for the owning node's acknowledgement.
    fn remote_group_action(
        &self,
        connection_id: &str,
        group: &str,
        add: bool,
    ) -> BoxFuture<Result<(), Error>>;

    /// Sends an invocation carrying `invocation_id` to a connection on another node and
    /// waits (at most `timeout`) for the client's Completion, routed back to this node.
    fn invoke(
        &self,
        connection_id: &str,
        message: EncodedMessage,
        invocation_id: String,
        timeout: Duration,
    ) -> BoxFuture<Result<RemoteOutcome, Error>>;

    /// Answers a presence query for the whole cluster.
    fn presence(&self, query: PresenceQuery) -> BoxFuture<Result<PresenceAnswer, Error>>;

    /// Counters of the backplane (messages forwarded, dropped, gaps…).
    fn stats(&self) -> BackplaneStatsSnapshot {
        BackplaneStatsSnapshot::default()
    }
}

/// A question about the whole cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceQuery {
    /// Is this connection live on some node?
    Connection(String),
    /// Has this user a live connection on some node?
    User(String),
    /// The members of a group, on every node.
    GroupMembers(String),
    /// Live connections of the hub, on every node.
    ConnectionCount,
}

/// The answer to a [`PresenceQuery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceAnswer {
    /// For `Connection` and `User`.
    Online(bool),
    /// For `GroupMembers`.
    Members(Vec<String>),
    /// For `ConnectionCount`.
    Count(usize),
}

/// What a backplane counted so far (all counters only grow, except `buffered`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BackplaneStatsSnapshot {
    /// Hub messages handed to the backplane for other nodes.
    pub published: u64,
    /// Hub messages written to the backplane (after any buffering).
    pub written: u64,
    /// Hub messages dropped because the outbound buffer was full (e.g. a long outage).
    pub dropped: u64,
    /// Hub messages waiting in the outbound buffer now.
    pub buffered: u64,
    /// Failed writes to the backplane (each retried).
    pub write_errors: u64,
    /// Hub messages received from other nodes and delivered here.
    pub received: u64,
    /// Of those, delivered from the replay log after an interruption.
    pub replayed: u64,
    /// Duplicates dropped (already delivered through the other path).
    pub duplicates: u64,
    /// Malformed messages dropped.
    pub malformed: u64,
    /// Times the subscription was lost and restored.
    pub reconnects: u64,
    /// Gaps found when replaying: messages that could not be replayed (trimmed, or the
    /// store lost its data). Never silent: each is also logged at error level.
    pub gaps: u64,
    /// Messages known lost in those gaps (at least; a lost store hides how many).
    pub lost: u64,
    /// Times the store was found to have lost its data (restarted without persistence).
    pub epoch_resets: u64,
    /// Milliseconds the last recovery took (subscription lost → resubscribed and replayed).
    pub last_recovery_ms: u64,
    /// When the last recovery ended, in milliseconds since the Unix epoch (0: never).
    pub recovered_at_ms: u64,
}

/// What a backplane sees of its hub: delivery to this node's connections.
#[derive(Clone, Debug)]
pub struct Node {
    pub(crate) hub_name: Arc<str>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) stats: Arc<HubStats>,
    pub(crate) max_groups: usize,
    pub(crate) client_result_timeout: Duration,
}

impl Node {
    /// The hub's name (part of every channel name, so hubs never share channels).
    pub fn hub_name(&self) -> &str {
        &self.hub_name
    }

    /// The node-local registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Delivers a message from another node to the local connections `target` names;
    /// returns how many.
    pub fn deliver(&self, target: &Target, message: &EncodedMessage) -> usize {
        let n = self.registry.send(target, message);
        self.stats.sent(n as u64);
        n
    }

    /// [`Node::deliver`] of a message replayed after an interruption, sent at `sent_at_ms`
    /// (milliseconds since the Unix epoch): connections that joined later do not get it.
    pub fn deliver_replayed(
        &self,
        target: &Target,
        message: &EncodedMessage,
        sent_at_ms: u64,
    ) -> usize {
        let n = self
            .registry
            .send_where(target, message, |c| c.connected_at_ms <= sent_at_ms);
        self.stats.sent(n as u64);
        n
    }

    /// Applies a group command from another node to a local connection.
    pub fn group_action(&self, connection_id: &str, group: &str, add: bool) -> GroupChange {
        if add {
            self.registry
                .add_to_group(connection_id, group, self.max_groups)
        } else {
            self.registry.remove_from_group(connection_id, group)
        }
    }

    /// Invokes a client of this node for another node and waits for its Completion.
    pub fn invoke_local(
        &self,
        connection_id: &str,
        message: &EncodedMessage,
        invocation_id: String,
    ) -> BoxFuture<Result<RemoteOutcome, Error>> {
        let conn = self.registry.get(connection_id);
        let timeout = self.client_result_timeout;
        let message = message.clone();
        Box::pin(async move {
            let conn = conn.ok_or(Error::ConnectionNotFound)?;
            let outcome =
                crate::clients::invoke_connection(&conn, &message, invocation_id, timeout).await?;
            Ok((conn.protocol, outcome))
        })
    }
}
