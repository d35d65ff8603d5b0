//! The fan-out API: [`Clients`] picks targets (All, Caller, Others, Client, Clients,
//! AllExcept, Group, Groups, GroupExcept, OthersInGroup, User, Users) and a proxy sends to
//! them. Each send encodes its message once per protocol; every target gets the same bytes.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::error::Error;
use crate::hub::HubShared;
use crate::protocol::{HubMessage, Invocation, Outcome, Protocol};
use crate::registry::{EncodedMessage, GroupChange, HubConnection, Target};

/// Encodes `method(args…)` as an Invocation in both protocols.
pub(crate) fn encode_invocation(
    method: &str,
    args: &impl Serialize,
    invocation_id: Option<String>,
) -> Result<EncodedMessage, Error> {
    let message = |protocol: Protocol| -> Result<HubMessage, Error> {
        let arguments = protocol
            .encode_arguments(args)
            .map_err(|e| Error::Serialization(e.to_string()))?;
        Ok(HubMessage::Invocation(Invocation {
            headers: Default::default(),
            invocation_id: invocation_id.clone(),
            target: method.to_owned(),
            arguments,
            stream_ids: Vec::new(),
        }))
    };
    Ok(EncodedMessage::new(
        &message(Protocol::Json)?,
        &message(Protocol::MessagePack)?,
    ))
}

fn ids(ids: impl IntoIterator<Item = impl Into<String>>) -> Vec<String> {
    ids.into_iter().map(Into::into).collect()
}

/// Chooses who receives a message. Obtained as an extractor in a hub method (then `caller`,
/// `others` and `others_in_group` are relative to the caller) or from
/// [`crate::HubContext::clients`] anywhere in the process.
#[derive(Clone)]
pub struct Clients {
    hub: Arc<HubShared>,
    caller: Option<Arc<HubConnection>>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("caller", &self.caller.as_ref().map(|c| c.id.clone()))
            .finish()
    }
}

impl Clients {
    pub(crate) fn new(hub: Arc<HubShared>, caller: Option<Arc<HubConnection>>) -> Self {
        Self { hub, caller }
    }

    fn proxy(&self, target: Target) -> ClientProxy {
        ClientProxy {
            hub: self.hub.clone(),
            target,
        }
    }

    fn caller_ids(&self) -> Vec<String> {
        self.caller.iter().map(|c| c.id.clone()).collect()
    }

    /// Every connection of the hub.
    pub fn all(&self) -> ClientProxy {
        self.proxy(Target::All { except: Vec::new() })
    }

    /// Every connection but these.
    pub fn all_except(&self, except: impl IntoIterator<Item = impl Into<String>>) -> ClientProxy {
        self.proxy(Target::All {
            except: ids(except),
        })
    }

    /// Every connection but the caller (all of them outside a hub method).
    pub fn others(&self) -> ClientProxy {
        self.proxy(Target::All {
            except: self.caller_ids(),
        })
    }

    /// The calling connection (nobody outside a hub method).
    pub fn caller(&self) -> SingleClientProxy {
        SingleClientProxy {
            hub: self.hub.clone(),
            id: self
                .caller
                .as_ref()
                .map(|c| c.id.clone())
                .unwrap_or_default(),
        }
    }

    /// One connection, by its public id.
    pub fn client(&self, connection_id: impl Into<String>) -> SingleClientProxy {
        SingleClientProxy {
            hub: self.hub.clone(),
            id: connection_id.into(),
        }
    }

    /// Several connections.
    pub fn clients(
        &self,
        connection_ids: impl IntoIterator<Item = impl Into<String>>,
    ) -> ClientProxy {
        self.proxy(Target::Connections(ids(connection_ids)))
    }

    /// Every member of a group.
    pub fn group(&self, group: impl Into<String>) -> ClientProxy {
        self.proxy(Target::Groups {
            groups: vec![group.into()],
            except: Vec::new(),
        })
    }

    /// Every member of any of these groups, once each.
    pub fn groups(&self, groups: impl IntoIterator<Item = impl Into<String>>) -> ClientProxy {
        self.proxy(Target::Groups {
            groups: ids(groups),
            except: Vec::new(),
        })
    }

    /// Every member of a group but these connections.
    pub fn group_except(
        &self,
        group: impl Into<String>,
        except: impl IntoIterator<Item = impl Into<String>>,
    ) -> ClientProxy {
        self.proxy(Target::Groups {
            groups: vec![group.into()],
            except: ids(except),
        })
    }

    /// Every member of a group but the caller.
    pub fn others_in_group(&self, group: impl Into<String>) -> ClientProxy {
        self.proxy(Target::Groups {
            groups: vec![group.into()],
            except: self.caller_ids(),
        })
    }

    /// Every connection of a user.
    pub fn user(&self, user_id: impl Into<String>) -> ClientProxy {
        self.proxy(Target::Users(vec![user_id.into()]))
    }

    /// Presence queries for the whole cluster.
    pub fn presence(&self) -> crate::context::Presence {
        crate::context::Presence::new(self.hub.clone())
    }

    /// Every connection of these users.
    pub fn users(&self, user_ids: impl IntoIterator<Item = impl Into<String>>) -> ClientProxy {
        self.proxy(Target::Users(ids(user_ids)))
    }
}

/// Sends to a set of connections.
#[derive(Clone)]
pub struct ClientProxy {
    hub: Arc<HubShared>,
    target: Target,
}

impl std::fmt::Debug for ClientProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientProxy")
            .field("target", &self.target)
            .finish()
    }
}

impl ClientProxy {
    /// Sends `method(args…)`; `args` serializes as the argument list: a tuple such as
    /// `("bob", "hi")` or `(x,)`, or `()` for none. Returns once the message is queued for
    /// every local target (slow consumers are closed rather than waited for) and handed to
    /// the backplane, if any, for the other nodes (never waiting for it).
    pub async fn send(&self, method: &str, args: impl Serialize) -> Result<(), Error> {
        let msg = encode_invocation(method, &args, None)?;
        self.send_encoded(&msg);
        Ok(())
    }

    /// Sends a message already encoded in both protocols.
    pub fn send_encoded(&self, msg: &EncodedMessage) {
        let n = self.hub.registry.send(&self.target, msg);
        self.hub.stats.sent(n as u64);
        if let Some(backplane) = &self.hub.backplane {
            match &self.target {
                // Connections found here need nothing from the other nodes.
                Target::Connections(ids) => {
                    let remote: Vec<String> = ids
                        .iter()
                        .filter(|id| self.hub.registry.get(id).is_none())
                        .cloned()
                        .collect();
                    if !remote.is_empty() {
                        backplane.publish(&Target::Connections(remote), msg);
                    }
                }
                target => backplane.publish(target, msg),
            }
        }
    }
}

/// Sends to one connection, and can wait for its answer (client results).
#[derive(Clone)]
pub struct SingleClientProxy {
    hub: Arc<HubShared>,
    id: String,
}

impl std::fmt::Debug for SingleClientProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleClientProxy")
            .field("id", &self.id)
            .finish()
    }
}

/// Queues an invocation carrying `invocation_id` for `conn` and waits for its Completion.
pub(crate) async fn invoke_connection(
    conn: &Arc<HubConnection>,
    msg: &EncodedMessage,
    invocation_id: String,
    timeout: Duration,
) -> Result<Outcome, Error> {
    let (tx, rx) = oneshot::channel();
    conn.pending_results.insert(invocation_id.clone(), tx);
    if conn
        .send_encoded(msg.for_protocol(conn.protocol).clone(), true)
        .is_err()
    {
        conn.pending_results.remove(&invocation_id);
        return Err(Error::ConnectionClosed);
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(o)) => Ok(o),
        Ok(Err(_)) => Err(Error::ConnectionClosed),
        Err(_) => {
            conn.pending_results.remove(&invocation_id);
            Err(Error::Timeout)
        }
    }
}

fn decode_outcome<T: DeserializeOwned>(protocol: Protocol, outcome: Outcome) -> Result<T, Error> {
    match outcome {
        Outcome::Result(p) => protocol
            .decode_value(&p)
            .map_err(|e| Error::Serialization(e.to_string())),
        Outcome::Error(e) => Err(Error::ClientError(e)),
        Outcome::Void => serde_json::from_str("null")
            .map_err(|_| Error::ClientError("Client didn't provide a result.".into())),
    }
}

impl SingleClientProxy {
    /// Sends `method(args…)` to this connection (a no-op if it is gone), on whichever node
    /// it lives. While a local connection's buffer is full this waits (up to 10 s) instead of
    /// dropping or closing.
    pub async fn send(&self, method: &str, args: impl Serialize) -> Result<(), Error> {
        let msg = encode_invocation(method, &args, None)?;
        if let Some(conn) = self.hub.registry.get(&self.id) {
            // One target: wait for room rather than overflow it (back-pressure).
            let data = msg.for_protocol(conn.protocol).clone();
            if conn.send_encoded_wait(data).await.is_ok() {
                self.hub.stats.sent(1);
            }
        } else if let Some(backplane) = &self.hub.backplane {
            backplane.publish(&Target::Connections(vec![self.id.clone()]), &msg);
        }
        Ok(())
    }

    /// Invokes `method(args…)` on the client and waits for its result, up to the hub's
    /// `client_result_timeout`. The connection keeps reading while this waits, so a hub
    /// method may await its own caller without raising the parallel-invocation cap. With a
    /// backplane the client may be on another node: its answer is routed back here.
    pub async fn invoke<T: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
    ) -> Result<T, Error> {
        let timeout = self.hub.options.client_result_timeout;
        self.invoke_with_timeout(method, args, timeout).await
    }

    /// [`SingleClientProxy::invoke`] with an explicit timeout.
    pub async fn invoke_with_timeout<T: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
        timeout: Duration,
    ) -> Result<T, Error> {
        let Some(conn) = self.hub.registry.get(&self.id) else {
            let Some(backplane) = &self.hub.backplane else {
                return Err(Error::ConnectionNotFound);
            };
            // Unique cluster-wide: the asking node's id is part of it.
            let invocation_id = format!("r{}", uuid_like());
            let msg = encode_invocation(method, &args, Some(invocation_id.clone()))?;
            let (protocol, outcome) = backplane
                .invoke(&self.id, msg, invocation_id, timeout)
                .await?;
            return decode_outcome(protocol, outcome);
        };
        let invocation_id = conn.next_invocation_id();
        let msg = encode_invocation(method, &args, Some(invocation_id.clone()))?;
        let outcome = invoke_connection(&conn, &msg, invocation_id, timeout).await?;
        decode_outcome(conn.protocol, outcome)
    }
}

/// 64 random bits in hex: invocation ids for clients on other nodes.
fn uuid_like() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Adds connections to groups and removes them.
#[derive(Clone)]
pub struct Groups {
    hub: Arc<HubShared>,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Groups")
    }
}

impl Groups {
    pub(crate) fn new(hub: Arc<HubShared>) -> Self {
        Self { hub }
    }

    /// Adds a connection to a group (group names are case-sensitive). Membership ends with
    /// the connection. With a backplane the connection may live on another node: this then
    /// returns once that node has acknowledged.
    pub async fn add(&self, connection_id: &str, group: &str) -> Result<(), Error> {
        let max = self.hub.options.maximum_groups_per_connection;
        match self.hub.registry.add_to_group(connection_id, group, max) {
            GroupChange::Changed => {
                if let Some(backplane) = &self.hub.backplane {
                    backplane.group_joined(connection_id, group).await;
                }
                Ok(())
            }
            GroupChange::Unchanged => Ok(()),
            GroupChange::NotFound => match &self.hub.backplane {
                Some(backplane) => {
                    backplane
                        .remote_group_action(connection_id, group, true)
                        .await
                }
                None => Err(Error::ConnectionNotFound),
            },
            GroupChange::LimitReached => Err(limit_error(max)),
        }
    }

    /// Removes a connection from a group, on whichever node it lives.
    pub async fn remove(&self, connection_id: &str, group: &str) -> Result<(), Error> {
        match self.hub.registry.remove_from_group(connection_id, group) {
            GroupChange::Changed => {
                if let Some(backplane) = &self.hub.backplane {
                    backplane.group_left(connection_id, group);
                }
                Ok(())
            }
            GroupChange::Unchanged | GroupChange::LimitReached => Ok(()),
            GroupChange::NotFound => match &self.hub.backplane {
                Some(backplane) => {
                    backplane
                        .remote_group_action(connection_id, group, false)
                        .await
                }
                None => Err(Error::ConnectionNotFound),
            },
        }
    }

    /// Members of a group on this node (see [`crate::context::Presence::group_members`] for
    /// the whole cluster).
    pub fn members(&self, group: &str) -> Vec<String> {
        self.hub.registry.group_members(group)
    }
}

pub(crate) fn limit_error(max: usize) -> Error {
    Error::Backplane(format!("a connection may belong to at most {max} groups"))
}
