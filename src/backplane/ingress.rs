//! [`StreamIngress`]: entries that any service `XADD`s to a Redis stream are broadcast to a
//! hub group, as `method(id, fields)`.
//!
//! Every node may run the same ingress: they read through one consumer group, so each entry
//! is broadcast once for the whole cluster (the backplane carries it to the other nodes), and
//! acknowledged (`XACK`) only after it was handed to the hub. Entries left pending by a node
//! that died are claimed by another after `claim_idle`.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

use super::redis::resp3_client;
use crate::context::HubContext;

/// Settings of a [`StreamIngress`].
#[derive(Debug, Clone)]
pub struct StreamIngressOptions {
    /// Consumer group shared by every node. Default `tidings-ingress`.
    pub consumer_group: String,
    /// This node's consumer name. Default: random per process.
    pub consumer: String,
    /// Where a new consumer group starts: `$` (only new entries, the default) or `0`.
    pub start: String,
    /// Entries pending longer than this on another consumer are taken over. Default 30 s.
    pub claim_idle: Duration,
}

impl Default for StreamIngressOptions {
    fn default() -> Self {
        Self {
            consumer_group: "tidings-ingress".into(),
            consumer: format!("c-{:016x}", rand::random::<u64>()),
            start: "$".into(),
            claim_idle: Duration::from_secs(30),
        }
    }
}

/// A running ingress; dropping it (or [`StreamIngress::stop`]) ends the task.
#[derive(Debug)]
pub struct StreamIngress {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StreamIngress {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

type Entry = (String, BTreeMap<String, String>);

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Entries of an XREADGROUP/XAUTOCLAIM reply (any nesting), as (id, fields).
fn entries(v: &Value, out: &mut Vec<Entry>) {
    match v {
        Value::Array(items) => {
            // An entry is [id, [k, v, …]].
            if items.len() == 2
                && let (Some(id), Value::Array(kv)) = (text(&items[0]), &items[1])
                && id.contains('-')
                && kv.len() % 2 == 0
                && kv.iter().all(|x| text(x).is_some())
            {
                let mut fields = BTreeMap::new();
                for pair in kv.chunks(2) {
                    if let (Some(k), Some(v)) = (text(&pair[0]), text(&pair[1])) {
                        fields.insert(k, v);
                    }
                }
                out.push((id, fields));
                return;
            }
            for item in items {
                entries(item, out);
            }
        }
        Value::Map(kv) => {
            for (_, v) in kv {
                entries(v, out);
            }
        }
        _ => {}
    }
}

impl StreamIngress {
    /// Starts broadcasting the entries of `stream` (on the Redis at `redis_url`) to hub
    /// `group` as `method(id, fields)`, where `fields` is the entry's field → value map.
    pub fn spawn(
        redis_url: &str,
        stream: &str,
        hub: HubContext,
        group: &str,
        method: &str,
    ) -> Result<Self, crate::Error> {
        Self::spawn_with(
            redis_url,
            stream,
            hub,
            group,
            method,
            StreamIngressOptions::default(),
        )
    }

    /// [`StreamIngress::spawn`] with options.
    pub fn spawn_with(
        redis_url: &str,
        stream: &str,
        hub: HubContext,
        group: &str,
        method: &str,
        options: StreamIngressOptions,
    ) -> Result<Self, crate::Error> {
        let client = resp3_client(redis_url)?;
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_connection_timeout(Some(Duration::from_secs(1)))
            // Longer than the BLOCK below.
            .set_response_timeout(Some(Duration::from_secs(5)));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| crate::Error::Backplane(e.to_string()))?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(
            conn,
            stream.to_owned(),
            hub,
            group.to_owned(),
            method.to_owned(),
            options,
            cancel.clone(),
        ));
        Ok(Self { cancel, task })
    }

    /// Stops the ingress and waits for its task.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        let _ = task.await;
    }
}

async fn run(
    mut conn: ConnectionManager,
    stream: String,
    hub: HubContext,
    group: String,
    method: String,
    options: StreamIngressOptions,
    cancel: CancellationToken,
) {
    let mut group_ready = false;
    let mut last_claim = tokio::time::Instant::now();
    let mut failures = 0u32;
    while !cancel.is_cancelled() {
        if !group_ready {
            let r: redis::RedisResult<Value> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg(&options.consumer_group)
                .arg(&options.start)
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match r {
                Ok(_) => group_ready = true,
                Err(e) if e.code() == Some("BUSYGROUP") => group_ready = true,
                Err(e) => {
                    if failures == 0 {
                        tracing::warn!(error = %e, %stream, "stream ingress: Redis unavailable; retrying");
                    }
                    failures += 1;
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                    continue;
                }
            }
        }
        let mut batch = Vec::new();
        let claim = last_claim.elapsed() >= options.claim_idle;
        let reply: redis::RedisResult<Value> = if claim {
            last_claim = tokio::time::Instant::now();
            redis::cmd("XAUTOCLAIM")
                .arg(&stream)
                .arg(&options.consumer_group)
                .arg(&options.consumer)
                .arg(options.claim_idle.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(100)
                .query_async(&mut conn)
                .await
        } else {
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg(&options.consumer_group)
                .arg(&options.consumer)
                .arg("COUNT")
                .arg(100)
                .arg("BLOCK")
                .arg(2000)
                .arg("STREAMS")
                .arg(&stream)
                .arg(">");
            let read = read.query_async(&mut conn);
            tokio::select! {
                () = cancel.cancelled() => return,
                r = read => r,
            }
        };
        match reply {
            Ok(v) => {
                failures = 0;
                entries(&v, &mut batch);
            }
            Err(e) => {
                if e.code() == Some("NOGROUP") {
                    group_ready = false; // Redis lost the group (restart without persistence)
                }
                if failures == 0 {
                    tracing::warn!(error = %e, %stream, "stream ingress: read failed; retrying");
                }
                failures += 1;
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                continue;
            }
        }
        if batch.is_empty() {
            continue;
        }
        let mut ack = redis::cmd("XACK");
        ack.arg(&stream).arg(&options.consumer_group);
        for (id, fields) in &batch {
            if let Err(e) = hub
                .clients()
                .group(group.as_str())
                .send(&method, (id, fields))
                .await
            {
                tracing::warn!(error = %e, "stream ingress: entry not broadcast");
            }
            ack.arg(id);
        }
        if let Err(e) = ack.query_async::<Value>(&mut conn).await {
            tracing::warn!(error = %e, "stream ingress: XACK failed (entries may be sent again)");
        }
    }
}
