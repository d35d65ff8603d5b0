//! [`RedisBackplane`]: the hub spans every process that shares one Redis.
//!
//! Channels follow ASP.NET's layout, under `{prefix}:{hub}`: `:all`, `:group:{g}`,
//! `:user:{u}`, `:connection:{id}`, `:internal:groups` (group commands for connections on
//! other nodes), `:internal:ack:{node}` and `:internal:return:{node}` (client results).
//! Payloads are MessagePack envelopes carrying the message encoded once per protocol.
//!
//! With streams on (the default) each hub message is also appended to the Redis stream
//! `{prefix}:{hub}:stream`, in the same Lua call as its `PUBLISH`, so the stream order is
//! the pub/sub order. Each node keeps a cursor (the last stream id it handled): when its
//! subscription drops (Redis restarted, network blip, output-buffer kill) it resubscribes,
//! replays the stream after its cursor and then resumes pub/sub, dropping what it already
//! had. A global counter in every entry shows trimmed gaps; an epoch key shows a Redis that
//! lost its data. Both are logged at error level and counted, never silent.
//!
//! Sends never wait for Redis: they go into a bounded queue drained by one publisher task,
//! which batches, retries while Redis is away (the queue then buffers, and what does not fit
//! is counted as dropped), and publishes idempotently (a per-node sequence number lets the
//! Lua script ignore a batch that was applied but whose reply was lost).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};

use super::envelope::{self, Envelope};
use super::{
    Backplane, BackplaneStatsSnapshot, Node, PresenceAnswer, PresenceQuery, RemoteOutcome,
};
use crate::error::Error;
use crate::protocol::{Completion, HubMessage, Protocol};
use crate::registry::{EncodedMessage, GroupChange, HubConnection, Target};
use crate::transport::BoxFuture;

/// Settings of a [`RedisBackplane`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]`. RESP3 is always used.
    pub url: String,
    /// Prefix of every channel and key (apps sharing a Redis use different prefixes); the
    /// hub's name follows it. Default `tidings`.
    pub prefix: String,
    /// Also append hub messages to a Redis stream, so an interrupted node replays what it
    /// missed (tier T2). Default true; false is plain pub/sub (at-most-once, as ASP.NET).
    pub streams: bool,
    /// Approximate length the stream is trimmed to: the replay window. Default 100 000.
    pub stream_max_len: usize,
    /// Hub messages (and control messages) waiting for Redis, at most. Default 65 536.
    pub buffer: usize,
    /// How long a group change for a connection on another node waits for its
    /// acknowledgement. Default 10 s.
    pub ack_timeout: Duration,
    /// How long a new connection (or group member) waits for its subscription before it is
    /// let through anyway. Default 2 s.
    pub subscribe_timeout: Duration,
    /// How often a node tells it is alive. Default 1 s.
    pub heartbeat: Duration,
    /// A node silent for this long is dead: its connections leave presence. Default 5 s.
    pub node_ttl: Duration,
}

impl RedisOptions {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "tidings".into(),
            streams: true,
            stream_max_len: 100_000,
            buffer: 65_536,
            ack_timeout: Duration::from_secs(10),
            subscribe_timeout: Duration::from_secs(2),
            heartbeat: Duration::from_secs(1),
            node_ttl: Duration::from_secs(5),
        }
    }
}

/// A backplane over Redis pub/sub (and streams): see the module docs.
///
/// One `RedisBackplane` serves one hub; give each hub its own.
pub struct RedisBackplane {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("node", &self.inner.node_id)
            .field("url", &self.inner.opts.url)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    write_errors: AtomicU64,
    received: AtomicU64,
    replayed: AtomicU64,
    duplicates: AtomicU64,
    malformed: AtomicU64,
    reconnects: AtomicU64,
    gaps: AtomicU64,
    lost: AtomicU64,
    epoch_resets: AtomicU64,
    last_recovery_ms: AtomicU64,
    recovered_at_ms: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the publisher task writes, in order.
enum Out {
    Data { channel: String, envelope: Envelope },
    Plain { channel: String, payload: Vec<u8> },
    Presence(PresenceOp),
    Flush(oneshot::Sender<()>),
}

enum PresenceOp {
    AddConn(String),
    RemConn(String),
    AddUser(String),
    RemUser(String),
    AddMember(String, String),
    RemMember(String, String),
    RemGroup(String),
}

enum SubCmd {
    Subscribe(String, Option<oneshot::Sender<()>>),
    Unsubscribe(String),
    Barrier(oneshot::Sender<()>),
}

struct Names {
    base: String,
}

impl Names {
    fn all(&self) -> String {
        format!("{}:all", self.base)
    }
    fn group(&self, g: &str) -> String {
        format!("{}:group:{g}", self.base)
    }
    fn user(&self, u: &str) -> String {
        format!("{}:user:{u}", self.base)
    }
    fn connection(&self, id: &str) -> String {
        format!("{}:connection:{id}", self.base)
    }
    fn group_commands(&self) -> String {
        format!("{}:internal:groups", self.base)
    }
    fn ack(&self, node: &str) -> String {
        format!("{}:internal:ack:{node}", self.base)
    }
    fn ret(&self, node: &str) -> String {
        format!("{}:internal:return:{node}", self.base)
    }
    fn stream(&self) -> String {
        format!("{}:stream", self.base)
    }
    fn counter(&self) -> String {
        format!("{}:seq", self.base)
    }
    fn epoch(&self) -> String {
        format!("{}:epoch", self.base)
    }
    fn dedupe(&self, node: &str) -> String {
        format!("{}:dedupe:{node}", self.base)
    }
    fn nodes(&self) -> String {
        format!("{}:nodes", self.base)
    }
    fn presence(&self, node: &str) -> String {
        format!("{}:p:{node}", self.base)
    }
}

struct Inner {
    opts: RedisOptions,
    node_id: String,
    names: OnceLock<Names>,
    node: OnceLock<Node>,
    out_tx: mpsc::Sender<Out>,
    out_rx: Mutex<Option<mpsc::Receiver<Out>>>,
    sub_tx: mpsc::UnboundedSender<SubCmd>,
    sub_rx: Mutex<Option<mpsc::UnboundedReceiver<SubCmd>>>,
    cmd: OnceLock<ConnectionManager>,
    sub: OnceLock<ConnectionManager>,
    next_id: AtomicU64,
    acks: DashMap<u64, oneshot::Sender<u8>>,
    returns: DashMap<String, oneshot::Sender<Result<RemoteOutcome, Error>>>,
    /// Dynamic channels this node wants (groups, users, connections with local members).
    /// Decisions and the commands they queue happen under this lock, so they stay in order.
    local: Mutex<HashSet<String>>,
    resync: AtomicBool,
    /// False while the subscription is being recovered: joins then do not wait for Redis.
    online: AtomicBool,
    stats: Counters,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn random_hex() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

impl RedisBackplane {
    /// A backplane on the Redis at `url`, with default options.
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_options(RedisOptions::new(url))
    }

    /// A backplane with these options. Nothing connects before the hub is built.
    pub fn with_options(opts: RedisOptions) -> Self {
        let (out_tx, out_rx) = mpsc::channel(opts.buffer.max(16));
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        Self {
            inner: Arc::new(Inner {
                opts,
                node_id: random_hex(),
                names: OnceLock::new(),
                node: OnceLock::new(),
                out_tx,
                out_rx: Mutex::new(Some(out_rx)),
                sub_tx,
                sub_rx: Mutex::new(Some(sub_rx)),
                cmd: OnceLock::new(),
                sub: OnceLock::new(),
                next_id: AtomicU64::new(1),
                acks: DashMap::new(),
                returns: DashMap::new(),
                local: Mutex::new(HashSet::new()),
                resync: AtomicBool::new(true),
                online: AtomicBool::new(false),
                stats: Counters::default(),
            }),
        }
    }

    /// This node's id (the "server name" in group commands and return channels).
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The counters so far.
    pub fn snapshot(&self) -> BackplaneStatsSnapshot {
        self.inner.snapshot()
    }
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(250))
        .set_number_of_retries(2)
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_secs(3)))
}

/// A Redis client speaking RESP3, from a URL.
pub(crate) fn resp3_client(url: &str) -> Result<redis::Client, Error> {
    let client = redis::Client::open(url).map_err(|e| Error::Backplane(e.to_string()))?;
    let info = client.get_connection_info().clone();
    let redis = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(redis)).map_err(|e| Error::Backplane(e.to_string()))
}

/// The Lua script of a publish batch: ignore what this node already published (its sequence
/// numbers only grow), then for each message bump the global counter, append to the stream
/// and publish `id n payload`, all atomically.
const PUBLISH_LUA: &str = r"
local last = tonumber(redis.call('GET', KEYS[3]) or '0')
local top = last
local out = 0
for i = 3, #ARGV, 3 do
  local seq = tonumber(ARGV[i])
  if seq > top then
    top = seq
    local n = redis.call('INCR', KEYS[2])
    local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'n', n, 'c', ARGV[i+1], 'p', ARGV[i+2])
    redis.call('PUBLISH', ARGV[i+1], id .. ' ' .. n .. ' ' .. ARGV[i+2])
    out = out + 1
  end
end
if top > last then redis.call('SET', KEYS[3], top, 'EX', ARGV[2]) end
return out
";

/// Heartbeat: the node's score is Redis' clock; dead nodes' presence is removed.
const HEARTBEAT_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
for _, node in ipairs(dead) do
  local p = ARGV[3] .. ':p:' .. node
  for _, g in ipairs(redis.call('SMEMBERS', p .. ':groups')) do redis.call('DEL', p .. ':g:' .. g) end
  redis.call('DEL', p .. ':conns', p .. ':users', p .. ':groups')
  redis.call('ZREM', KEYS[1], node)
end
return #dead
";

/// Rewrites this node's whole presence: ARGV = p, nconns, conns…, nusers, users…, (group,
/// member)…
const RESYNC_LUA: &str = r"
local p = ARGV[1]
for _, g in ipairs(redis.call('SMEMBERS', p .. ':groups')) do redis.call('DEL', p .. ':g:' .. g) end
redis.call('DEL', p .. ':conns', p .. ':users', p .. ':groups')
local i = 2
local nc = tonumber(ARGV[i]); i = i + 1
for k = 1, nc do redis.call('SADD', p .. ':conns', ARGV[i]); i = i + 1 end
local nu = tonumber(ARGV[i]); i = i + 1
for k = 1, nu do redis.call('SADD', p .. ':users', ARGV[i]); i = i + 1 end
while i < #ARGV do
  redis.call('SADD', p .. ':groups', ARGV[i])
  redis.call('SADD', p .. ':g:' .. ARGV[i], ARGV[i + 1])
  i = i + 2
end
return 1
";

/// Presence over live nodes: ARGV = base, ttl, op, arg.
const PRESENCE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nodes = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[2]), '+inf')
local op = ARGV[3]
if op == 'count' then
  local n = 0
  for _, node in ipairs(nodes) do n = n + redis.call('SCARD', ARGV[1] .. ':p:' .. node .. ':conns') end
  return n
elseif op == 'group' then
  local out = {}
  for _, node in ipairs(nodes) do
    for _, m in ipairs(redis.call('SMEMBERS', ARGV[1] .. ':p:' .. node .. ':g:' .. ARGV[4])) do out[#out + 1] = m end
  end
  return out
else
  local set = op == 'conn' and ':conns' or ':users'
  for _, node in ipairs(nodes) do
    if redis.call('SISMEMBER', ARGV[1] .. ':p:' .. node .. set, ARGV[4]) == 1 then return 1 end
  end
  return 0
end
";

fn eval(script: &str, keys: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd("EVAL");
    c.arg(script).arg(keys.len());
    for k in keys {
        c.arg(*k);
    }
    c
}

/// A stream id `ms-seq`, ordered.
type StreamId = (u64, u64);

fn parse_id(s: &[u8]) -> Option<StreamId> {
    let s = std::str::from_utf8(s).ok()?;
    let (a, b) = s.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn value_bytes(v: Value) -> Option<Bytes> {
    match v {
        Value::BulkString(b) => Some(Bytes::from(b)),
        Value::SimpleString(s) => Some(Bytes::from(s.into_bytes())),
        Value::VerbatimString { text, .. } => Some(Bytes::from(text.into_bytes())),
        _ => None,
    }
}

fn value_string(v: Value) -> Option<String> {
    value_bytes(v).and_then(|b| String::from_utf8(b.to_vec()).ok())
}

async fn ping(conn: &mut ConnectionManager) -> redis::RedisResult<()> {
    redis::cmd("PING").query_async::<()>(conn).await
}

fn backplane_err(e: impl std::fmt::Display) -> Error {
    Error::Backplane(e.to_string())
}

impl Inner {
    fn names(&self) -> &Names {
        self.names.get().expect("RedisBackplane used before start")
    }

    fn node(&self) -> &Node {
        self.node.get().expect("RedisBackplane used before start")
    }

    fn cmd(&self) -> ConnectionManager {
        self.cmd
            .get()
            .expect("RedisBackplane used before start")
            .clone()
    }

    fn sub(&self) -> ConnectionManager {
        self.sub
            .get()
            .expect("RedisBackplane used before start")
            .clone()
    }

    fn snapshot(&self) -> BackplaneStatsSnapshot {
        let s = &self.stats;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BackplaneStatsSnapshot {
            published: g(&s.published),
            written: g(&s.written),
            dropped: g(&s.dropped),
            buffered: (self.out_tx.max_capacity() - self.out_tx.capacity()) as u64,
            write_errors: g(&s.write_errors),
            received: g(&s.received),
            replayed: g(&s.replayed),
            duplicates: g(&s.duplicates),
            malformed: g(&s.malformed),
            reconnects: g(&s.reconnects),
            gaps: g(&s.gaps),
            lost: g(&s.lost),
            epoch_resets: g(&s.epoch_resets),
            last_recovery_ms: g(&s.last_recovery_ms),
            recovered_at_ms: g(&s.recovered_at_ms),
        }
    }

    /// Queues for the publisher; never waits. False when the buffer is full.
    fn enqueue(&self, out: Out) -> bool {
        match self.out_tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(out)) => {
                match out {
                    Out::Data { .. } => {
                        let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        if n.is_power_of_two() {
                            tracing::error!(
                                dropped = n + 1,
                                "backplane buffer full (Redis unreachable?): message for other nodes dropped"
                            );
                        }
                    }
                    // Presence is rewritten whole once Redis answers again.
                    Out::Presence(_) => self.resync.store(true, Ordering::Relaxed),
                    _ => {}
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn data_channel(&self, target: &Target) -> String {
        let names = self.names();
        match target {
            Target::Connections(ids) if ids.len() == 1 => names.connection(&ids[0]),
            Target::Groups { groups, .. } if groups.len() == 1 => names.group(&groups[0]),
            Target::Users(users) if users.len() == 1 => names.user(&users[0]),
            // Several names at once go to every node, which delivers each connection once.
            _ => names.all(),
        }
    }

    /// Wants (or no longer wants) `channel`; queues the change in order. Returns a receiver
    /// resolved once a wanted channel is subscribed.
    fn want(
        &self,
        local: &mut HashSet<String>,
        channel: String,
        wanted: bool,
    ) -> Option<oneshot::Receiver<()>> {
        if wanted {
            let (tx, rx) = oneshot::channel();
            if local.insert(channel.clone()) {
                let _ = self.sub_tx.send(SubCmd::Subscribe(channel, Some(tx)));
            } else {
                let _ = self.sub_tx.send(SubCmd::Barrier(tx));
            }
            Some(rx)
        } else {
            if local.remove(&channel) {
                let _ = self.sub_tx.send(SubCmd::Unsubscribe(channel));
            }
            None
        }
    }

    fn flush(&self) -> Option<oneshot::Receiver<()>> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Out::Flush(tx)).then_some(rx)
    }

    async fn wait_all(&self, waits: Vec<oneshot::Receiver<()>>) {
        if !self.online.load(Ordering::Relaxed) {
            // Redis is away: the replay after recovery covers what this connection misses.
            return;
        }
        let all = futures_util::future::join_all(waits);
        if tokio::time::timeout(self.opts.subscribe_timeout, all)
            .await
            .is_err()
        {
            tracing::warn!("backplane: subscription not confirmed in time (Redis unreachable?)");
        }
    }

    /// A local connection joined `group`: subscribe and publish presence.
    fn joined(&self, connection_id: &str, group: &str) -> Vec<oneshot::Receiver<()>> {
        let channel = self.names().group(group);
        let mut local = lock(&self.local);
        let mut waits: Vec<_> = self.want(&mut local, channel, true).into_iter().collect();
        self.enqueue(Out::Presence(PresenceOp::AddMember(
            group.to_owned(),
            connection_id.to_owned(),
        )));
        waits.extend(self.flush());
        waits
    }

    fn left(&self, local: &mut HashSet<String>, connection_id: &str, group: &str) {
        self.enqueue(Out::Presence(PresenceOp::RemMember(
            group.to_owned(),
            connection_id.to_owned(),
        )));
        if !self.node().registry.has_group(group) {
            self.want(local, self.names().group(group), false);
            self.enqueue(Out::Presence(PresenceOp::RemGroup(group.to_owned())));
        }
    }

    async fn query_presence(&self, query: PresenceQuery) -> Result<PresenceAnswer, Error> {
        let names = self.names();
        let (op, arg) = match &query {
            PresenceQuery::Connection(id) => ("conn", id.as_str()),
            PresenceQuery::User(u) => ("user", u.as_str()),
            PresenceQuery::GroupMembers(g) => ("group", g.as_str()),
            PresenceQuery::ConnectionCount => ("count", ""),
        };
        let mut c = eval(PRESENCE_LUA, &[&names.nodes()]);
        c.arg(&names.base)
            .arg(self.opts.node_ttl.as_millis() as u64)
            .arg(op)
            .arg(arg);
        let mut conn = self.cmd();
        let fut = c.query_async::<Value>(&mut conn);
        let v = tokio::time::timeout(Duration::from_secs(3), fut)
            .await
            .map_err(|_| Error::Timeout)?
            .map_err(backplane_err)?;
        Ok(match (query, v) {
            (PresenceQuery::GroupMembers(_), Value::Array(items)) => {
                PresenceAnswer::Members(items.into_iter().filter_map(value_string).collect())
            }
            (PresenceQuery::ConnectionCount, Value::Int(n)) => PresenceAnswer::Count(n as usize),
            (_, Value::Int(n)) => PresenceAnswer::Online(n == 1),
            (_, other) => return Err(backplane_err(format!("presence answer {other:?}"))),
        })
    }
}

impl Backplane for RedisBackplane {
    fn start(&self, node: Node) {
        let inner = &self.inner;
        let base = format!("{}:{}", inner.opts.prefix, node.hub_name);
        if inner.names.set(Names { base }).is_err() {
            tracing::error!("a RedisBackplane serves one hub; give each hub its own");
            return;
        }
        let _ = inner.node.set(node);
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let client = match resp3_client(&inner.opts.url) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, url = %inner.opts.url, "backplane disabled: bad Redis URL");
                return;
            }
        };
        let cmd = ConnectionManager::new_lazy_with_config(client.clone(), manager_config());
        let sub = ConnectionManager::new_lazy_with_config(
            client,
            manager_config()
                .set_push_sender(push_tx)
                .set_automatic_resubscription(),
        );
        let (cmd, sub) = match (cmd, sub) {
            (Ok(c), Ok(s)) => (c, s),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "backplane disabled: cannot create Redis connections");
                return;
            }
        };
        let _ = inner.cmd.set(cmd);
        let _ = inner.sub.set(sub);
        let out_rx = lock(&inner.out_rx).take();
        let sub_rx = lock(&inner.sub_rx).take();
        if let (Some(out_rx), Some(sub_rx)) = (out_rx, sub_rx) {
            tokio::spawn(publisher(inner.clone(), out_rx));
            tokio::spawn(subscriptions(inner.clone(), sub_rx));
            tokio::spawn(subscriber(inner.clone(), push_rx));
            tokio::spawn(heartbeat(Arc::downgrade(inner)));
        }
        tracing::info!(node = %inner.node_id, base = %inner.names().base, streams = inner.opts.streams, "backplane: Redis");
    }

    fn publish(&self, target: &Target, message: &EncodedMessage) {
        let inner = &self.inner;
        if inner.names.get().is_none() {
            return;
        }
        inc(&inner.stats.published);
        inner.enqueue(Out::Data {
            channel: inner.data_channel(target),
            envelope: Envelope {
                target: target.clone(),
                message: message.clone(),
                invocation_id: None,
                return_channel: None,
                origin: inner.node_id.clone(),
            },
        });
    }

    fn connection_added(&self, connection: &Arc<HubConnection>) -> BoxFuture<()> {
        let inner = self.inner.clone();
        let id = connection.id().to_owned();
        let user = connection.user_id.clone();
        Box::pin(async move {
            if inner.names.get().is_none() {
                return;
            }
            let waits = {
                let names = inner.names();
                let mut local = lock(&inner.local);
                let mut waits: Vec<_> = inner
                    .want(&mut local, names.connection(&id), true)
                    .into_iter()
                    .collect();
                inner.enqueue(Out::Presence(PresenceOp::AddConn(id)));
                if let Some(user) = user {
                    waits.extend(inner.want(&mut local, names.user(&user), true));
                    inner.enqueue(Out::Presence(PresenceOp::AddUser(user)));
                }
                waits.extend(inner.flush());
                waits
            };
            inner.wait_all(waits).await;
        })
    }

    fn connection_removed(&self, connection: &HubConnection, groups: &[String]) {
        let inner = &self.inner;
        if inner.names.get().is_none() {
            return;
        }
        let names = inner.names();
        let mut local = lock(&inner.local);
        inner.want(&mut local, names.connection(connection.id()), false);
        inner.enqueue(Out::Presence(PresenceOp::RemConn(
            connection.id().to_owned(),
        )));
        if let Some(user) = &connection.user_id
            && !inner.node().registry.has_user(user)
        {
            inner.want(&mut local, names.user(user), false);
            inner.enqueue(Out::Presence(PresenceOp::RemUser(user.clone())));
        }
        for g in groups {
            inner.left(&mut local, connection.id(), g);
        }
    }

    fn group_joined(&self, connection_id: &str, group: &str) -> BoxFuture<()> {
        let inner = self.inner.clone();
        let waits = if inner.names.get().is_some() {
            inner.joined(connection_id, group)
        } else {
            Vec::new()
        };
        Box::pin(async move { inner.wait_all(waits).await })
    }

    fn group_left(&self, connection_id: &str, group: &str) {
        if self.inner.names.get().is_none() {
            return;
        }
        let mut local = lock(&self.inner.local);
        self.inner.left(&mut local, connection_id, group);
    }

    fn remote_group_action(
        &self,
        connection_id: &str,
        group: &str,
        add: bool,
    ) -> BoxFuture<Result<(), Error>> {
        let inner = self.inner.clone();
        let connection_id = connection_id.to_owned();
        let group = group.to_owned();
        Box::pin(async move {
            if inner.names.get().is_none() {
                return Err(Error::ConnectionNotFound);
            }
            if inner
                .query_presence(PresenceQuery::Connection(connection_id.clone()))
                .await?
                != PresenceAnswer::Online(true)
            {
                return Err(Error::ConnectionNotFound);
            }
            let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            inner.acks.insert(id, tx);
            let payload =
                envelope::encode_group_command(id, &inner.node_id, add, &group, &connection_id);
            if !inner.enqueue(Out::Plain {
                channel: inner.names().group_commands(),
                payload,
            }) {
                inner.acks.remove(&id);
                return Err(backplane_err("backplane buffer full"));
            }
            let result = tokio::time::timeout(inner.opts.ack_timeout, rx).await;
            inner.acks.remove(&id);
            match result {
                Ok(Ok(envelope::STATUS_OK)) => Ok(()),
                Ok(Ok(envelope::STATUS_LIMIT)) => Err(backplane_err(
                    "the connection is in the maximum number of groups",
                )),
                Ok(Ok(_)) => Err(Error::ConnectionNotFound),
                Ok(Err(_)) => Err(Error::ConnectionClosed),
                Err(_) => Err(backplane_err(
                    "timed out waiting for the group command's ack",
                )),
            }
        })
    }

    fn invoke(
        &self,
        connection_id: &str,
        message: EncodedMessage,
        invocation_id: String,
        timeout: Duration,
    ) -> BoxFuture<Result<RemoteOutcome, Error>> {
        let inner = self.inner.clone();
        let connection_id = connection_id.to_owned();
        Box::pin(async move {
            if inner.names.get().is_none() {
                return Err(Error::ConnectionNotFound);
            }
            if inner
                .query_presence(PresenceQuery::Connection(connection_id.clone()))
                .await?
                != PresenceAnswer::Online(true)
            {
                return Err(Error::ConnectionNotFound);
            }
            let (tx, rx) = oneshot::channel();
            inner.returns.insert(invocation_id.clone(), tx);
            let names = inner.names();
            let queued = inner.enqueue(Out::Data {
                channel: names.connection(&connection_id),
                envelope: Envelope {
                    target: Target::Connections(vec![connection_id]),
                    message,
                    invocation_id: Some(invocation_id.clone()),
                    return_channel: Some(names.ret(&inner.node_id)),
                    origin: inner.node_id.clone(),
                },
            });
            if !queued {
                inner.returns.remove(&invocation_id);
                return Err(backplane_err("backplane buffer full"));
            }
            let result = tokio::time::timeout(timeout, rx).await;
            inner.returns.remove(&invocation_id);
            match result {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(Error::ConnectionClosed),
                Err(_) => Err(Error::Timeout),
            }
        })
    }

    fn presence(&self, query: PresenceQuery) -> BoxFuture<Result<PresenceAnswer, Error>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            if inner.names.get().is_none() {
                return Err(backplane_err("backplane not started"));
            }
            inner.query_presence(query).await
        })
    }

    fn stats(&self) -> BackplaneStatsSnapshot {
        self.inner.snapshot()
    }
}

/// One prepared item of a publish batch.
enum Prepared {
    Data {
        seq: u64,
        channel: String,
        payload: Vec<u8>,
    },
    Plain {
        channel: String,
        payload: Vec<u8>,
    },
    Presence(PresenceOp),
    Flush(oneshot::Sender<()>),
}

fn presence_cmd(p: &str, op: &PresenceOp) -> redis::Cmd {
    let mut c;
    match op {
        PresenceOp::AddConn(id) => {
            c = redis::cmd("SADD");
            c.arg(format!("{p}:conns")).arg(id);
        }
        PresenceOp::RemConn(id) => {
            c = redis::cmd("SREM");
            c.arg(format!("{p}:conns")).arg(id);
        }
        PresenceOp::AddUser(u) => {
            c = redis::cmd("SADD");
            c.arg(format!("{p}:users")).arg(u);
        }
        PresenceOp::RemUser(u) => {
            c = redis::cmd("SREM");
            c.arg(format!("{p}:users")).arg(u);
        }
        PresenceOp::AddMember(g, id) => {
            // Two keys: the group's members, and the group among this node's groups.
            c = eval(
                "redis.call('SADD', KEYS[1], ARGV[1]); return redis.call('SADD', KEYS[2], ARGV[2])",
                &[&format!("{p}:g:{g}"), &format!("{p}:groups")],
            );
            c.arg(id).arg(g);
        }
        PresenceOp::RemMember(g, id) => {
            c = redis::cmd("SREM");
            c.arg(format!("{p}:g:{g}")).arg(id);
        }
        PresenceOp::RemGroup(g) => {
            c = eval(
                "redis.call('DEL', KEYS[1]); return redis.call('SREM', KEYS[2], ARGV[1])",
                &[&format!("{p}:g:{g}"), &format!("{p}:groups")],
            );
            c.arg(g);
        }
    }
    c
}

fn resync_cmd(inner: &Inner) -> redis::Cmd {
    let node = inner.node();
    let registry = &node.registry;
    let mut c = eval(RESYNC_LUA, &[]);
    c.arg(inner.names().presence(&inner.node_id));
    let conns = registry.connection_ids();
    c.arg(conns.len()).arg(&conns);
    let users = registry.user_ids();
    c.arg(users.len()).arg(&users);
    for g in registry.group_names() {
        for m in registry.group_members(&g) {
            c.arg(&g).arg(m);
        }
    }
    c
}

const BATCH: usize = 1024;

/// Drains the outbound queue into Redis, in order, batching; retries a failed batch until
/// Redis answers (idempotently: see `PUBLISH_LUA`).
async fn publisher(inner: Arc<Inner>, mut rx: mpsc::Receiver<Out>) {
    let mut seq: u64 = 0;
    let mut batch: Vec<Prepared> = Vec::with_capacity(BATCH);
    let mut conn = inner.cmd();
    let names = inner.names();
    let stream = names.stream();
    let counter = names.counter();
    let dedupe = names.dedupe(&inner.node_id);
    let presence = names.presence(&inner.node_id);
    let max_len = inner.opts.stream_max_len.to_string();
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(o) => batch.push(prepare(o, &mut seq)),
                None => return,
            }
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(o) => batch.push(prepare(o, &mut seq)),
                Err(_) => break,
            }
        }
        let mut backoff = Duration::from_millis(25);
        let mut failures = 0u32;
        loop {
            let mut pipe = redis::pipe();
            if inner.resync.swap(false, Ordering::Relaxed) {
                pipe.add_command(resync_cmd(&inner)).ignore();
            }
            let mut data: Option<redis::Cmd> = None;
            let mut ndata = 0u64;
            for item in &batch {
                match item {
                    Prepared::Data {
                        seq,
                        channel,
                        payload,
                    } => {
                        if !inner.opts.streams {
                            let mut framed = Vec::with_capacity(payload.len() + 4);
                            framed.extend_from_slice(b"- 0 ");
                            framed.extend_from_slice(payload);
                            pipe.cmd("PUBLISH").arg(channel).arg(framed).ignore();
                        } else {
                            let c = data.get_or_insert_with(|| {
                                let mut c = eval(PUBLISH_LUA, &[&stream, &counter, &dedupe]);
                                c.arg(&max_len).arg(3600);
                                c
                            });
                            c.arg(*seq).arg(channel).arg(payload.as_slice());
                        }
                        ndata += 1;
                    }
                    other => {
                        if let Some(c) = data.take() {
                            pipe.add_command(c).ignore();
                        }
                        match other {
                            Prepared::Plain { channel, payload } => {
                                pipe.cmd("PUBLISH")
                                    .arg(channel)
                                    .arg(payload.as_slice())
                                    .ignore();
                            }
                            Prepared::Presence(op) => {
                                pipe.add_command(presence_cmd(&presence, op)).ignore();
                            }
                            _ => {}
                        }
                    }
                }
            }
            if let Some(c) = data.take() {
                pipe.add_command(c).ignore();
            }
            match pipe.exec_async(&mut conn).await {
                Ok(()) => {
                    inner.stats.written.fetch_add(ndata, Ordering::Relaxed);
                    if failures > 0 {
                        tracing::info!(failures, "backplane: Redis writable again");
                    }
                    break;
                }
                Err(e) => {
                    inc(&inner.stats.write_errors);
                    inner.resync.store(true, Ordering::Relaxed);
                    if failures == 0 {
                        tracing::warn!(error = %e, buffered = rx.len() + batch.len(), "backplane: cannot write to Redis; buffering");
                    } else {
                        tracing::debug!(error = %e, "backplane: Redis write retry failed");
                    }
                    failures += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
        for item in batch.drain(..) {
            if let Prepared::Flush(tx) = item {
                let _ = tx.send(());
            }
        }
    }
}

fn prepare(o: Out, seq: &mut u64) -> Prepared {
    match o {
        Out::Data { channel, envelope } => {
            *seq += 1;
            Prepared::Data {
                seq: *seq,
                channel,
                payload: envelope::encode_envelope(&envelope),
            }
        }
        Out::Plain { channel, payload } => Prepared::Plain { channel, payload },
        Out::Presence(p) => Prepared::Presence(p),
        Out::Flush(tx) => Prepared::Flush(tx),
    }
}

/// Applies subscription changes one at a time, in the order they were decided.
async fn subscriptions(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<SubCmd>) {
    let mut conn = inner.sub();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            SubCmd::Subscribe(channel, done) => {
                match tokio::time::timeout(Duration::from_secs(2), conn.subscribe(&channel)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, %channel, "backplane: subscribe failed; retried on reconnect")
                    }
                    Err(_) => tracing::debug!(%channel, "backplane: subscribe timed out"),
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            SubCmd::Unsubscribe(channel) => {
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), conn.unsubscribe(&channel)).await;
            }
            SubCmd::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// The heartbeat: keeps this node alive in presence and sweeps dead nodes.
async fn heartbeat(weak: std::sync::Weak<Inner>) {
    let mut healthy = true;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let period = inner.opts.heartbeat;
        let names = inner.names();
        let mut c = eval(HEARTBEAT_LUA, &[&names.nodes()]);
        c.arg(&inner.node_id)
            .arg(inner.opts.node_ttl.as_millis() as u64)
            .arg(&names.base);
        let mut conn = inner.cmd();
        let ok = matches!(
            tokio::time::timeout(period * 2, c.query_async::<Value>(&mut conn)).await,
            Ok(Ok(_))
        );
        if ok && !healthy {
            // Redis may have lost our presence while we could not reach it.
            inner.resync.store(true, Ordering::Relaxed);
            let _ = inner.enqueue(Out::Flush(oneshot::channel().0));
        }
        healthy = ok;
        drop(inner);
        tokio::time::sleep(period).await;
    }
}

/// The receiving side: its cursor in the stream, and everything it buffered while
/// recovering.
struct Cursor {
    /// The last stream entry handled (delivered or skipped), and its global number.
    id: StreamId,
    n: u64,
    epoch: Option<String>,
    ready: bool,
}

async fn subscriber(inner: Arc<Inner>, mut pushes: mpsc::UnboundedReceiver<PushInfo>) {
    let mut cursor = Cursor {
        id: (0, 0),
        n: 0,
        epoch: None,
        ready: false,
    };
    // Start: subscribe to the fixed channels and take the stream's end as the cursor.
    recover(&inner, &mut cursor, true).await;
    // The connection manager reports every lost connection as a `Disconnection` push (and
    // reconnects by itself); what was published meanwhile is replayed from the stream.
    while let Some(push) = pushes.recv().await {
        match push.kind {
            PushKind::Message => handle_push(&inner, &mut cursor, push.data),
            PushKind::Disconnection => {
                inner.online.store(false, Ordering::Relaxed);
                tracing::warn!("backplane: Redis subscription lost; recovering");
                recover(&inner, &mut cursor, false).await;
            }
            _ => {}
        }
    }
}

fn fixed_channels(inner: &Inner) -> Vec<String> {
    let names = inner.names();
    vec![
        names.all(),
        names.group_commands(),
        names.ack(&inner.node_id),
        names.ret(&inner.node_id),
    ]
}

/// (Re)establishes the subscription and replays what was missed. Loops until Redis answers.
async fn recover(inner: &Arc<Inner>, cursor: &mut Cursor, first: bool) {
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        match try_recover(inner, cursor, first).await {
            Ok(()) => break,
            Err(e) => {
                if attempt == 0 {
                    tracing::warn!(error = %e, "backplane: Redis unreachable; retrying");
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    if !first {
        inc(&inner.stats.reconnects);
        let ms = started.elapsed().as_millis() as u64;
        inner.stats.last_recovery_ms.store(ms, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        inner.stats.recovered_at_ms.store(now, Ordering::Relaxed);
        tracing::info!(ms, "backplane: subscription restored");
    }
    inner.resync.store(true, Ordering::Relaxed);
    inner.online.store(true, Ordering::Relaxed);
}

async fn try_recover(inner: &Arc<Inner>, cursor: &mut Cursor, first: bool) -> Result<(), String> {
    let mut sub = inner.sub();
    let t = Duration::from_secs(2);
    let timeout_err = |_| "timed out".to_owned();
    tokio::time::timeout(t, ping(&mut sub))
        .await
        .map_err(timeout_err)?
        .map_err(|e| e.to_string())?;
    let names = inner.names();
    if inner.opts.streams && (first || !cursor.ready) {
        // Start from the stream's end, taken before subscribing: the replay below then
        // covers whatever is published in between.
        let last: Value = tokio::time::timeout(
            t,
            redis::cmd("XREVRANGE")
                .arg(names.stream())
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut sub),
        )
        .await
        .map_err(timeout_err)?
        .map_err(|e| e.to_string())?;
        if let Some((id, n, _, _)) = stream_entries(last).into_iter().next() {
            cursor.id = id;
            cursor.n = n;
        }
    }
    // The manager resubscribes what it had; ask again for everything we want (idempotent),
    // including channels whose subscription failed while Redis was away.
    let mut channels = fixed_channels(inner);
    channels.extend(lock(&inner.local).iter().cloned());
    for chunk in channels.chunks(512) {
        tokio::time::timeout(t, sub.subscribe(chunk))
            .await
            .map_err(timeout_err)?
            .map_err(|e| e.to_string())?;
    }
    if !inner.opts.streams {
        cursor.ready = true;
        return Ok(());
    }
    // The epoch tells whether Redis kept its data since we last looked.
    let (epoch,): (Option<String>,) = tokio::time::timeout(
        t,
        redis::pipe()
            .cmd("SET")
            .arg(names.epoch())
            .arg(random_hex())
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(names.epoch())
            .query_async(&mut sub),
    )
    .await
    .map_err(timeout_err)?
    .map_err(|e| e.to_string())?;
    if !cursor.ready {
        cursor.epoch = epoch;
        cursor.ready = true;
    } else if cursor.epoch != epoch {
        inc(&inner.stats.gaps);
        inc(&inner.stats.epoch_resets);
        tracing::error!(
            "backplane: Redis lost its data (restarted without persistence?): hub messages \
             published before the restart that this node had not received are lost"
        );
        cursor.epoch = epoch;
        cursor.id = (0, 0);
        cursor.n = 0;
    }
    // Replay everything after the cursor.
    let mut first_entry = true;
    loop {
        let start = format!("({}-{}", cursor.id.0, cursor.id.1);
        let v: Value = tokio::time::timeout(
            t,
            redis::cmd("XRANGE")
                .arg(names.stream())
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut sub),
        )
        .await
        .map_err(timeout_err)?
        .map_err(|e| e.to_string())?;
        let entries = stream_entries(v);
        let count = entries.len();
        for (id, n, channel, payload) in entries {
            if first_entry && cursor.n != 0 && n != cursor.n + 1 && n > cursor.n {
                let lost = n - cursor.n - 1;
                inc(&inner.stats.gaps);
                inner.stats.lost.fetch_add(lost, Ordering::Relaxed);
                tracing::error!(
                    lost,
                    "backplane: the replay window was exceeded (stream trimmed): up to {lost} \
                     hub messages cannot be replayed"
                );
            }
            first_entry = false;
            deliver_entry(inner, cursor, id, n, &channel, payload, true);
        }
        if count < 1000 {
            break;
        }
    }
    Ok(())
}

/// Parses an XRANGE reply into (id, n, channel, payload).
fn stream_entries(v: Value) -> Vec<(StreamId, u64, String, Bytes)> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut pair) = item else {
            continue;
        };
        if pair.len() != 2 {
            continue;
        }
        let fields = pair.pop();
        let id = pair.pop().and_then(value_bytes).and_then(|b| parse_id(&b));
        let mut fields: HashMap<String, Value> = match fields {
            Some(Value::Array(kv)) => {
                let mut m = HashMap::new();
                let mut it = kv.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    if let Some(k) = value_string(k) {
                        m.insert(k, v);
                    }
                }
                m
            }
            Some(Value::Map(kv)) => kv
                .into_iter()
                .filter_map(|(k, v)| value_string(k).map(|k| (k, v)))
                .collect(),
            _ => continue,
        };
        let n = fields
            .remove("n")
            .and_then(value_string)
            .and_then(|s| s.parse().ok());
        let c = fields.remove("c").and_then(value_string);
        let p = fields.remove("p").and_then(value_bytes);
        if let (Some(id), Some(n), Some(c), Some(p)) = (id, n, c, p) {
            out.push((id, n, c, p));
        }
    }
    out
}

fn handle_push(inner: &Arc<Inner>, cursor: &mut Cursor, data: Vec<Value>) {
    let mut it = data.into_iter();
    let (Some(channel), Some(payload)) = (
        it.next().and_then(value_string),
        it.next().and_then(value_bytes),
    ) else {
        inc(&inner.stats.malformed);
        return;
    };
    let names = inner.names();
    let internal = format!("{}:internal:", names.base);
    if let Some(rest) = channel.strip_prefix(&internal) {
        if rest == "groups" {
            group_command(inner, payload);
        } else if rest.starts_with("ack:") {
            match envelope::decode_ack(payload) {
                Ok((id, status)) => {
                    if let Some((_, tx)) = inner.acks.remove(&id) {
                        let _ = tx.send(status);
                    }
                }
                Err(_) => inc(&inner.stats.malformed),
            }
        } else if rest.starts_with("return:") {
            client_return(inner, payload);
        }
        return;
    }
    // `id n payload`
    let Some(sp1) = payload.iter().position(|b| *b == b' ') else {
        inc(&inner.stats.malformed);
        return;
    };
    let Some(sp2) = payload[sp1 + 1..]
        .iter()
        .position(|b| *b == b' ')
        .map(|p| p + sp1 + 1)
    else {
        inc(&inner.stats.malformed);
        return;
    };
    let body = payload.slice(sp2 + 1..);
    if &payload[..sp1] == b"-" {
        deliver(inner, body, None);
        return;
    }
    let id = parse_id(&payload[..sp1]);
    let n = std::str::from_utf8(&payload[sp1 + 1..sp2])
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    match (id, n) {
        (Some(id), Some(n)) => deliver_entry(inner, cursor, id, n, &channel, body, false),
        _ => inc(&inner.stats.malformed),
    }
}

fn deliver_entry(
    inner: &Arc<Inner>,
    cursor: &mut Cursor,
    id: StreamId,
    n: u64,
    _channel: &str,
    body: Bytes,
    replayed: bool,
) {
    if cursor.ready && id <= cursor.id {
        inc(&inner.stats.duplicates);
        return;
    }
    cursor.id = id;
    cursor.n = n;
    deliver(inner, body, replayed.then_some(id.0));
}

/// `replayed`: the stream id's milliseconds (Redis' clock) when the entry comes from a replay.
fn deliver(inner: &Arc<Inner>, body: Bytes, replayed: Option<u64>) {
    let env = match envelope::decode_envelope(body) {
        Ok(e) => e,
        Err(e) => {
            inc(&inner.stats.malformed);
            tracing::warn!(reason = e.0, "backplane: malformed message dropped");
            return;
        }
    };
    if env.origin == inner.node_id {
        return; // delivered locally when it was sent
    }
    let node = inner.node();
    if let (Some(invocation_id), Some(return_channel)) = (env.invocation_id, env.return_channel) {
        // A client result asked by another node.
        let Target::Connections(ids) = env.target else {
            return;
        };
        let Some(id) = ids.into_iter().next() else {
            return;
        };
        if node.registry.get(&id).is_none() {
            return;
        }
        inc(&inner.stats.received);
        let inner = inner.clone();
        tokio::spawn(async move {
            let node = inner.node();
            let result = node
                .invoke_local(&id, &env.message, invocation_id.clone())
                .await;
            let payload = match result {
                Ok((protocol, outcome)) => {
                    let completion = protocol.encode_message(&HubMessage::Completion(Completion {
                        headers: Default::default(),
                        invocation_id: invocation_id.clone(),
                        outcome,
                    }));
                    envelope::encode_return(
                        protocol.name(),
                        &completion,
                        envelope::STATUS_OK,
                        &invocation_id,
                    )
                }
                Err(e) => {
                    let status = match e {
                        Error::ConnectionNotFound => envelope::STATUS_NOT_FOUND,
                        Error::Timeout => envelope::STATUS_TIMEOUT,
                        _ => envelope::STATUS_CLOSED,
                    };
                    envelope::encode_return("json", &[], status, &invocation_id)
                }
            };
            inner.enqueue(Out::Plain {
                channel: return_channel,
                payload,
            });
        });
        return;
    }
    let n = match replayed {
        Some(sent_at_ms) => node.deliver_replayed(&env.target, &env.message, sent_at_ms),
        None => node.deliver(&env.target, &env.message),
    };
    if n > 0 {
        inc(&inner.stats.received);
        if replayed.is_some() {
            inc(&inner.stats.replayed);
        }
    }
}

fn group_command(inner: &Arc<Inner>, payload: Bytes) {
    let cmd = match envelope::decode_group_command(payload) {
        Ok(c) => c,
        Err(_) => {
            inc(&inner.stats.malformed);
            return;
        }
    };
    let node = inner.node();
    let status = match node.group_action(&cmd.connection_id, &cmd.group, cmd.add) {
        GroupChange::NotFound => return, // another node's connection
        GroupChange::LimitReached => envelope::STATUS_LIMIT,
        GroupChange::Unchanged => envelope::STATUS_OK,
        GroupChange::Changed => {
            let inner2 = inner.clone();
            let ack = inner.names().ack(&cmd.server);
            if cmd.add {
                let waits = inner.joined(&cmd.connection_id, &cmd.group);
                tokio::spawn(async move {
                    inner2.wait_all(waits).await;
                    inner2.enqueue(Out::Plain {
                        channel: ack,
                        payload: envelope::encode_ack(cmd.id, envelope::STATUS_OK),
                    });
                });
            } else {
                {
                    let mut local = lock(&inner.local);
                    inner.left(&mut local, &cmd.connection_id, &cmd.group);
                }
                inner.enqueue(Out::Plain {
                    channel: ack,
                    payload: envelope::encode_ack(cmd.id, envelope::STATUS_OK),
                });
            }
            return;
        }
    };
    inner.enqueue(Out::Plain {
        channel: inner.names().ack(&cmd.server),
        payload: envelope::encode_ack(cmd.id, status),
    });
}

fn client_return(inner: &Arc<Inner>, payload: Bytes) {
    let Ok((protocol, completion, status, id)) = envelope::decode_return(payload) else {
        inc(&inner.stats.malformed);
        return;
    };
    let protocol = Protocol::from_name(&protocol);
    let parsed = protocol.and_then(|p| {
        let mut buf = BytesMut::from(&completion[..]);
        match p.parse_message(&mut buf, None) {
            Ok(Some(HubMessage::Completion(c))) => Some((p, c)),
            _ => None,
        }
    });
    let id = id.or_else(|| parsed.as_ref().map(|(_, c)| c.invocation_id.clone()));
    let Some(id) = id else {
        inc(&inner.stats.malformed);
        return;
    };
    let Some((_, tx)) = inner.returns.remove(&id) else {
        return;
    };
    let result = match (status, parsed) {
        (envelope::STATUS_OK, Some((p, c))) => Ok((p, c.outcome)),
        (envelope::STATUS_OK, None) => Err(backplane_err("malformed client result")),
        (envelope::STATUS_NOT_FOUND, _) => Err(Error::ConnectionNotFound),
        (envelope::STATUS_TIMEOUT, _) => Err(Error::Timeout),
        _ => Err(Error::ConnectionClosed),
    };
    let _ = tx.send(result);
}
