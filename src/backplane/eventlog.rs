//! [`RedisEventLog`]: the collaboration event log in Redis streams, shared by every node and
//! surviving node restarts (and Redis restarts, with persistence).
//!
//! Each log stream is a Redis stream `{prefix}:eventlog:{stream}` whose entry ids are
//! `{version}-0`, next to a version key `{prefix}:eventlog:{stream}:v`. Appends run as one Lua
//! script, so a conditional append (`expected_version`) is atomic across every node.

use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::redis::resp3_client;
use crate::eventlog::{AppendError, Event, EventLog};
use crate::transport::BoxFuture;

const APPEND_LUA: &str = r"
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= cur then return {0, cur} end
local v = cur + 1
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], v .. '-0', 'd', ARGV[2], 't', ARGV[3])
redis.call('SET', KEYS[2], v)
return {1, v}
";

/// An [`EventLog`] in Redis streams. Cheap to clone; connects lazily.
#[derive(Clone)]
pub struct RedisEventLog {
    client: redis::Client,
    conn: std::sync::Arc<OnceCell<ConnectionManager>>,
    prefix: String,
    max_events_per_stream: usize,
}

impl std::fmt::Debug for RedisEventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEventLog")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl RedisEventLog {
    /// A log on the Redis at `url`, keys under `{prefix}:eventlog:`, keeping about
    /// `max_events_per_stream` events per stream (older ones are trimmed; versions keep
    /// counting).
    pub fn new(
        url: &str,
        prefix: impl Into<String>,
        max_events_per_stream: usize,
    ) -> Result<Self, crate::Error> {
        Ok(Self {
            client: resp3_client(url)?,
            conn: std::sync::Arc::new(OnceCell::new()),
            prefix: prefix.into(),
            max_events_per_stream: max_events_per_stream.max(1),
        })
    }

    fn key(&self, stream: &str) -> String {
        format!("{}:eventlog:{stream}", self.prefix)
    }

    async fn conn(&self) -> Result<ConnectionManager, String> {
        let client = self.client.clone();
        self.conn
            .get_or_try_init(|| async move {
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(2)
                    .set_connection_timeout(Some(std::time::Duration::from_secs(1)))
                    .set_response_timeout(Some(std::time::Duration::from_secs(3)));
                ConnectionManager::new_lazy_with_config(client, config)
            })
            .await
            .cloned()
            .map_err(|e| e.to_string())
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

impl EventLog for RedisEventLog {
    fn append(
        &self,
        stream: &str,
        expected_version: Option<u64>,
        data: serde_json::Value,
    ) -> BoxFuture<Result<u64, AppendError>> {
        let this = self.clone();
        let key = self.key(stream);
        Box::pin(async move {
            let mut conn = this.conn().await.map_err(AppendError::Backend)?;
            let body =
                serde_json::to_string(&data).map_err(|e| AppendError::Backend(e.to_string()))?;
            let reply: Value = redis::cmd("EVAL")
                .arg(APPEND_LUA)
                .arg(2)
                .arg(&key)
                .arg(format!("{key}:v"))
                .arg(expected_version.map(|v| v.to_string()).unwrap_or_default())
                .arg(body)
                .arg(now_ms())
                .arg(this.max_events_per_stream)
                .query_async(&mut conn)
                .await
                .map_err(|e| AppendError::Backend(e.to_string()))?;
            match reply {
                Value::Array(items) if items.len() == 2 => match (int(&items[0]), int(&items[1])) {
                    (Some(1), Some(v)) => Ok(v),
                    (Some(0), Some(current)) => Err(AppendError::Conflict { current }),
                    _ => Err(AppendError::Backend("unexpected reply".into())),
                },
                other => Err(AppendError::Backend(format!("unexpected reply {other:?}"))),
            }
        })
    }

    fn read(
        &self,
        stream: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<Result<Vec<Event>, String>> {
        let this = self.clone();
        let key = self.key(stream);
        Box::pin(async move {
            let mut conn = this.conn().await?;
            let reply: Value = redis::cmd("XRANGE")
                .arg(&key)
                .arg(format!("{}-0", after.saturating_add(1)))
                .arg("+")
                .arg("COUNT")
                .arg(limit.max(1))
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            let Value::Array(entries) = reply else {
                return Ok(Vec::new());
            };
            let mut out = Vec::with_capacity(entries.len());
            for entry in entries {
                let Value::Array(pair) = entry else { continue };
                let [id, fields] = <[Value; 2]>::try_from(pair).map_err(|_| "bad entry")?;
                let version = match &id {
                    Value::BulkString(b) => std::str::from_utf8(b)
                        .ok()
                        .and_then(|s| s.split('-').next())
                        .and_then(|s| s.parse().ok()),
                    _ => None,
                }
                .ok_or("bad entry id")?;
                let pairs: Vec<(Value, Value)> = match fields {
                    Value::Array(kv) => {
                        let mut it = kv.into_iter();
                        let mut v = Vec::new();
                        while let (Some(k), Some(x)) = (it.next(), it.next()) {
                            v.push((k, x));
                        }
                        v
                    }
                    Value::Map(kv) => kv,
                    _ => continue,
                };
                let mut data = None;
                let mut timestamp_ms = 0;
                for (k, v) in pairs {
                    match (&k, &v) {
                        (Value::BulkString(k), Value::BulkString(v)) if k == b"d" => {
                            data = serde_json::from_slice(v).ok();
                        }
                        (Value::BulkString(k), _) if k == b"t" => {
                            timestamp_ms = int(&v).unwrap_or_default();
                        }
                        _ => {}
                    }
                }
                out.push(Event {
                    version,
                    data: data.ok_or("bad event data")?,
                    timestamp_ms,
                });
            }
            Ok(out)
        })
    }

    fn version(&self, stream: &str) -> BoxFuture<Result<u64, String>> {
        let this = self.clone();
        let key = format!("{}:v", self.key(stream));
        Box::pin(async move {
            let mut conn = this.conn().await?;
            let v: Option<u64> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok(v.unwrap_or(0))
        })
    }
}
