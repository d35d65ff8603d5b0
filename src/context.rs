//! [`HubContext`]: a cheap, cloneable handle to a hub, to send from timers, HTTP handlers or
//! any task (ASP.NET `IHubContext`).

use std::sync::Arc;

use crate::clients::{Clients, Groups};
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
