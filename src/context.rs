//! [`HubContext`]: a cheap, cloneable handle to a hub, to send from timers, HTTP handlers or
//! any task (ASP.NET `IHubContext`).

use std::sync::Arc;

use crate::backplane::{BackplaneStatsSnapshot, PresenceAnswer, PresenceQuery};
use crate::clients::{Clients, Groups};
use crate::error::Error;
use crate::hub::{HubShared, HubStats};

/// Sends to a hub's clients and manages its groups from anywhere in the process.
///
/// ```no_run
/// # async fn f(hub: tidings::Hub) -> Result<(), tidings::Error> {
/// let ctx = hub.context();
/// tokio::spawn(async move {
///     loop {
///         tokio::time::sleep(std::time::Duration::from_secs(1)).await;
///         let _ = ctx.clients().all().send("Tick", (42,)).await;
///     }
/// });
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct HubContext {
    hub: Arc<HubShared>,
}

impl HubContext {
    pub(crate) fn new(hub: Arc<HubShared>) -> Self {
        Self { hub }
    }

    /// Every client target (with no caller: `others()` is everyone).
    pub fn clients(&self) -> Clients {
        Clients::new(self.hub.clone(), None)
    }

    /// Group membership.
    pub fn groups(&self) -> Groups {
        Groups::new(self.hub.clone())
    }

    /// Presence queries for the whole cluster (this node alone without a backplane).
    pub fn presence(&self) -> Presence {
        Presence {
            hub: self.hub.clone(),
        }
    }

    /// The backplane's counters, if the hub has a backplane.
    pub fn backplane_stats(&self) -> Option<BackplaneStatsSnapshot> {
        self.hub.backplane.as_ref().map(|b| b.stats())
    }

    /// Live connections of the hub on this node.
    pub fn connection_count(&self) -> usize {
        self.hub.registry.len()
    }

    /// Whether a connection is live on this node.
    pub fn is_connected(&self, connection_id: &str) -> bool {
        self.hub.registry.get(connection_id).is_some()
    }

    /// The hub's live counters.
    pub fn stats(&self) -> Arc<HubStats> {
        self.hub.stats.clone()
    }

    /// Ends every connection of the hub with `Close{allowReconnect: true}` (graceful drain).
    pub fn close_all(&self, allow_reconnect: bool) {
        for id in self.hub.registry.connection_ids() {
            if let Some(c) = self.hub.registry.get(&id) {
                c.abort(Some(crate::protocol::Close {
                    error: None,
                    allow_reconnect,
                }));
            }
        }
    }
}

/// Who is online, cluster-wide: answered by the backplane when the hub has one (an
/// eventually consistent view, a few milliseconds behind), by this node's registry otherwise.
#[derive(Clone, Debug)]
pub struct Presence {
    hub: Arc<HubShared>,
}

impl Presence {
    pub(crate) fn new(hub: Arc<HubShared>) -> Self {
        Self { hub }
    }

    async fn ask(&self, query: PresenceQuery) -> Result<Option<PresenceAnswer>, Error> {
        match &self.hub.backplane {
            Some(b) => b.presence(query).await.map(Some),
            None => Ok(None),
        }
    }

    /// Whether a connection is live on some node.
    pub async fn is_connected(&self, connection_id: &str) -> Result<bool, Error> {
        if self.hub.registry.get(connection_id).is_some() {
            return Ok(true);
        }
        match self
            .ask(PresenceQuery::Connection(connection_id.to_owned()))
            .await?
        {
            Some(PresenceAnswer::Online(b)) => Ok(b),
            Some(other) => Err(unexpected(other)),
            None => Ok(false),
        }
    }

    /// Whether a user has a live connection on some node.
    pub async fn is_user_connected(&self, user_id: &str) -> Result<bool, Error> {
        if self.hub.registry.has_user(user_id) {
            return Ok(true);
        }
        match self.ask(PresenceQuery::User(user_id.to_owned())).await? {
            Some(PresenceAnswer::Online(b)) => Ok(b),
            Some(other) => Err(unexpected(other)),
            None => Ok(false),
        }
    }

    /// Members of a group on every node (sorted).
    pub async fn group_members(&self, group: &str) -> Result<Vec<String>, Error> {
        let mut members = match self
            .ask(PresenceQuery::GroupMembers(group.to_owned()))
            .await?
        {
            Some(PresenceAnswer::Members(m)) => m,
            Some(other) => return Err(unexpected(other)),
            None => self.hub.registry.group_members(group),
        };
        members.sort();
        members.dedup();
        Ok(members)
    }

    /// Live connections of the hub on every node.
    pub async fn connection_count(&self) -> Result<usize, Error> {
        match self.ask(PresenceQuery::ConnectionCount).await? {
            Some(PresenceAnswer::Count(n)) => Ok(n),
            Some(other) => Err(unexpected(other)),
            None => Ok(self.hub.registry.len()),
        }
    }
}

fn unexpected(answer: PresenceAnswer) -> Error {
    Error::Backplane(format!("unexpected presence answer {answer:?}"))
}
