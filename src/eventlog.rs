//! An append-only event log per stream (a document, a dashboard…), with a version per stream
//! that only grows: a logical clock, so ordering never depends on wall clocks. Appends can
//! be conditional on the version the writer saw (optimistic concurrency), which is how an
//! edit based on a stale version is detected instead of silently lost.
//!
//! [`MemoryEventLog`] is the default; a Redis Streams implementation lives with the Redis
//! backplane.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::transport::BoxFuture;

/// One event of a stream.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// The stream's version after this event (1 for the first).
    pub version: u64,
    /// The event itself.
    pub data: serde_json::Value,
    /// When it was appended, in milliseconds since the Unix epoch (informative only).
    pub timestamp_ms: u64,
}

/// Why an append failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendError {
    /// The writer's expected version is not the stream's current one.
    Conflict {
        /// The stream's current version.
        current: u64,
    },
    /// The store failed.
    Backend(String),
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Conflict { current } => {
                write!(f, "version conflict: the stream is at version {current}")
            }
            Self::Backend(e) => write!(f, "event log failure: {e}"),
        }
    }
}

impl std::error::Error for AppendError {}

/// An append-only log of events per stream.
pub trait EventLog: Send + Sync + 'static {
    /// Appends `data`; with `expected_version` the append succeeds only if the stream is at
    /// exactly that version. Returns the new version.
    fn append(
        &self,
        stream: &str,
        expected_version: Option<u64>,
        data: serde_json::Value,
    ) -> BoxFuture<Result<u64, AppendError>>;

    /// Events with a version greater than `after`, oldest first, at most `limit`.
    fn read(&self, stream: &str, after: u64, limit: usize)
    -> BoxFuture<Result<Vec<Event>, String>>;

    /// The stream's current version (0 when empty).
    fn version(&self, stream: &str) -> BoxFuture<Result<u64, String>>;
}

/// An in-process event log, bounded per stream (the oldest events are dropped first;
/// versions keep counting).
#[derive(Debug)]
pub struct MemoryEventLog {
    streams: Mutex<HashMap<String, (u64, std::collections::VecDeque<Event>)>>,
    max_events_per_stream: usize,
}

impl Default for MemoryEventLog {
    fn default() -> Self {
        Self::new(10_000)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl MemoryEventLog {
    /// A log keeping at most `max_events_per_stream` events per stream.
    pub fn new(max_events_per_stream: usize) -> Self {
        Self {
            streams: Mutex::new(HashMap::new()),
            max_events_per_stream: max_events_per_stream.max(1),
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (u64, std::collections::VecDeque<Event>)>> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl EventLog for MemoryEventLog {
    fn append(
        &self,
        stream: &str,
        expected_version: Option<u64>,
        data: serde_json::Value,
    ) -> BoxFuture<Result<u64, AppendError>> {
        let result = {
            let mut streams = self.lock();
            let (version, events) = streams.entry(stream.to_owned()).or_default();
            match expected_version {
                Some(v) if v != *version => Err(AppendError::Conflict { current: *version }),
                _ => {
                    *version += 1;
                    events.push_back(Event {
                        version: *version,
                        data,
                        timestamp_ms: now_ms(),
                    });
                    while events.len() > self.max_events_per_stream {
                        events.pop_front();
                    }
                    Ok(*version)
                }
            }
        };
        Box::pin(async move { result })
    }

    fn read(
        &self,
        stream: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<Result<Vec<Event>, String>> {
        let events = self
            .lock()
            .get(stream)
            .map(|(_, events)| {
                events
                    .iter()
                    .filter(|e| e.version > after)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        Box::pin(async move { Ok(events) })
    }

    fn version(&self, stream: &str) -> BoxFuture<Result<u64, String>> {
        let v = self.lock().get(stream).map_or(0, |(v, _)| *v);
        Box::pin(async move { Ok(v) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn versions_grow_and_stale_appends_conflict() {
        let log = MemoryEventLog::new(3);
        assert_eq!(
            log.append("d", Some(0), serde_json::json!("a")).await,
            Ok(1)
        );
        assert_eq!(log.append("d", None, serde_json::json!("b")).await, Ok(2));
        assert_eq!(
            log.append("d", Some(1), serde_json::json!("stale")).await,
            Err(AppendError::Conflict { current: 2 })
        );
        for i in 0..3 {
            log.append("d", None, serde_json::json!(i)).await.unwrap();
        }
        let events = log.read("d", 0, 100).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.version).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(log.version("d").await, Ok(5));
        assert_eq!(log.version("other").await, Ok(0));
    }
}
