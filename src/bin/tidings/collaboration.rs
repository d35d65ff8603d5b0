//! `CollaborationHub` (`/hubs/collaboration`): plain-text documents edited by several
//! windows at once, every edit an event in a per-document log.
//!
//! **The edit model.** An edit is one splice, `{pos, del, ins}`: delete `del` characters at
//! `pos`, then insert `ins` there. Positions count UTF-16 code units, as JavaScript strings do,
//! and never split a surrogate pair. A client sends `UpdateDocument(docId, {baseVersion, op,
//! opId})`, where `baseVersion` is the document version its edit applies to.
//!
//! - When `baseVersion` is current, the edit applies as is.
//! - When it is stale, the edit is **rebased** over every edit appended since (read back from
//!   the event log): an edit entirely before a concurrent one keeps its position, one entirely
//!   after it shifts by the concurrent edit's length change, and of two insertions at the
//!   same point the one applied first stays first.
//! - When a concurrent edit **overlaps** it (their deleted ranges share a character, or one
//!   edit's position lies strictly inside the other's deleted range), no rebase can keep both
//!   intents: the edit is **rejected** with a `HubException` naming the version it collided
//!   with. It is never silently dropped.
//!
//! Accepted edits are appended to the log with the expected version (optimistic concurrency,
//! a logical clock per document), then broadcast as `ReceiveUpdate(docId, {version, op,
//! clientId, opId, user})` to the document's group, in version order. The page's client runs
//! the same `transform` (js-client-demo/public/ot.js) over its unacknowledged edit, so every
//! window converges on the server's text.
//!
//! `JoinDocument(docId)` joins the group and returns `{docId, text, version}` (the query
//! side); `GET /api/documents/{id}/history` serves the log as JSON.
//!
//! The log is an `Arc<dyn EventLog>` (`MemoryEventLog` now; a Redis Streams log can replace
//! it). A document's text is rebuilt by replaying its log the first time it is used.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tidings::eventlog::{AppendError, EventLog, MemoryEventLog};
use tidings::{Args, Caller, Clients, Groups, Hub, HubError, State};

const MAX_DOC_LEN: usize = 256 * 1024;
const MAX_INSERT: usize = 16 * 1024;
const MAX_REBASE: u64 = 5_000;

/// One splice: delete `del` UTF-16 code units at `pos`, then insert `ins` there.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Where, in UTF-16 code units.
    pub pos: usize,
    /// How many code units to delete.
    #[serde(default)]
    pub del: usize,
    /// What to insert.
    #[serde(default)]
    pub ins: String,
}

impl Op {
    fn end(&self) -> usize {
        self.pos + self.del
    }

    fn ins_len(&self) -> usize {
        self.ins.encode_utf16().count()
    }
}

/// Whether two concurrent edits touch the same text, so neither can be rebased over the other.
pub fn conflicts(a: &Op, b: &Op) -> bool {
    let (a1, a2, b1, b2) = (a.pos, a.end(), b.pos, b.end());
    a1.max(b1) < a2.min(b2) || (b1 < a1 && a1 < b2) || (a1 < b1 && b1 < a2)
}

/// `op` rebased over `applied`, a concurrent edit applied before it; `op_first` decides which
/// of two insertions at the same point comes first. The two must not conflict.
pub fn transform(op: &Op, applied: &Op, op_first: bool) -> Op {
    let (ps, pe, rs, re) = (op.pos, op.end(), applied.pos, applied.end());
    let left = if pe <= rs && re <= ps {
        op_first
    } else {
        pe <= rs
    };
    if left {
        op.clone()
    } else {
        Op {
            pos: ps - applied.del + applied.ins_len(),
            ..op.clone()
        }
    }
}

fn is_boundary(text: &[u16], i: usize) -> bool {
    i == 0
        || i >= text.len()
        || !((0xD800..0xDC00).contains(&text[i - 1]) && (0xDC00..0xE000).contains(&text[i]))
}

/// Checks that `op` applies to `text`.
fn check(text: &[u16], op: &Op) -> Result<(), String> {
    if op.end() > text.len() {
        return Err(format!(
            "the edit reaches position {}, past the end of the document ({})",
            op.end(),
            text.len()
        ));
    }
    if !is_boundary(text, op.pos) || !is_boundary(text, op.end()) {
        return Err("the edit splits a character (a UTF-16 surrogate pair)".into());
    }
    if op.ins.len() > MAX_INSERT {
        return Err(format!("an edit inserts at most {MAX_INSERT} bytes"));
    }
    if text.len() - op.del + op.ins_len() > MAX_DOC_LEN {
        return Err(format!(
            "a document holds at most {MAX_DOC_LEN} UTF-16 code units"
        ));
    }
    Ok(())
}

fn apply(text: &mut Vec<u16>, op: &Op) {
    text.splice(op.pos..op.end(), op.ins.encode_utf16());
}

/// What a client sends.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Edit {
    base_version: u64,
    op: Op,
    #[serde(default)]
    op_id: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

/// One accepted edit, as broadcast and as stored in the log.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
struct Applied {
    version: u64,
    base_version: u64,
    op: Op,
    client_id: String,
    #[serde(default)]
    op_id: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Snapshot {
    doc_id: String,
    text: String,
    version: u64,
}

#[derive(Debug, Default)]
struct Doc {
    text: Vec<u16>,
    version: u64,
}

/// Documents, their log and the hub.
#[derive(Clone)]
pub struct Collaboration {
    hub: Hub,
    inner: Docs,
}

impl std::fmt::Debug for Collaboration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collaboration").finish_non_exhaustive()
    }
}

/// One document, loaded on first use; its lock orders the document's edits.
type DocSlot = Arc<tokio::sync::Mutex<Option<Doc>>>;

#[derive(Clone)]
struct Docs {
    log: Arc<dyn EventLog>,
    docs: Arc<Mutex<HashMap<String, DocSlot>>>,
}

fn check_doc_id(id: &str) -> Result<(), HubError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(HubError::new(
            "a document id is 1 to 64 ASCII letters, digits, '-', '_' or '.'",
        ))
    }
}

fn stream(id: &str) -> String {
    format!("doc:{id}")
}

impl Docs {
    fn slot(&self, id: &str) -> DocSlot {
        self.docs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    /// Loads a document by replaying its log.
    async fn load(&self, id: &str) -> Result<Doc, HubError> {
        let mut doc = Doc::default();
        loop {
            let events = self
                .log
                .read(&stream(id), doc.version, 1_000)
                .await
                .map_err(|e| HubError::new(format!("the document log failed: {e}")))?;
            if events.is_empty() {
                break;
            }
            for event in events {
                if event.version != doc.version + 1 {
                    return Err(HubError::new(format!(
                        "document '{id}' cannot be rebuilt: its log starts at version {}",
                        event.version
                    )));
                }
                let applied: Applied = serde_json::from_value(event.data)
                    .map_err(|e| HubError::new(format!("a logged edit is unreadable: {e}")))?;
                check(&doc.text, &applied.op).map_err(HubError::new)?;
                apply(&mut doc.text, &applied.op);
                doc.version = event.version;
            }
        }
        Ok(doc)
    }

    async fn join(&self, id: &str, caller: &Caller, groups: &Groups) -> Result<Snapshot, HubError> {
        check_doc_id(id)?;
        let slot = self.slot(id);
        let mut guard = slot.lock().await;
        if guard.is_none() {
            *guard = Some(self.load(id).await?);
        }
        let doc = guard.as_ref().expect("loaded above");
        // Joining under the document's lock: every update after this snapshot reaches us.
        groups.add(caller.connection_id(), &stream(id)).await?;
        Ok(Snapshot {
            doc_id: id.to_owned(),
            text: String::from_utf16_lossy(&doc.text),
            version: doc.version,
        })
    }

    async fn update(
        &self,
        id: &str,
        edit: Edit,
        caller: &Caller,
        clients: &Clients,
    ) -> Result<Applied, HubError> {
        check_doc_id(id)?;
        let slot = self.slot(id);
        let mut guard = slot.lock().await;
        if guard.is_none() {
            *guard = Some(self.load(id).await?);
        }
        let doc = guard.as_mut().expect("loaded above");
        if edit.base_version > doc.version {
            return Err(HubError::new(format!(
                "edit based on version {}, but document '{id}' is at version {}",
                edit.base_version, doc.version
            )));
        }
        let behind = doc.version - edit.base_version;
        if behind > MAX_REBASE {
            return Err(HubError::new(format!(
                "edit based on version {}, {behind} versions behind: reload the document",
                edit.base_version
            )));
        }
        let mut op = edit.op;
        if behind > 0 {
            let events = self
                .log
                .read(&stream(id), edit.base_version, behind as usize)
                .await
                .map_err(|e| HubError::new(format!("the document log failed: {e}")))?;
            if events.len() as u64 != behind
                || events.first().map(|e| e.version) != Some(edit.base_version + 1)
            {
                return Err(HubError::new(format!(
                    "edit based on version {} cannot be rebased: that history is no longer kept",
                    edit.base_version
                )));
            }
            for event in events {
                let concurrent: Applied = serde_json::from_value(event.data)
                    .map_err(|e| HubError::new(format!("a logged edit is unreadable: {e}")))?;
                if conflicts(&op, &concurrent.op) {
                    return Err(HubError::new(format!(
                        "Edit rejected: it overlaps a concurrent edit (version {}) of the same text. \
                         Your document was reloaded; apply your change again.",
                        event.version
                    )));
                }
                op = transform(&op, &concurrent.op, false);
            }
        }
        check(&doc.text, &op).map_err(HubError::new)?;
        let mut applied = Applied {
            version: doc.version + 1,
            base_version: edit.base_version,
            op,
            client_id: caller.connection_id().to_owned(),
            op_id: edit.op_id.filter(|o| o.len() <= 64),
            user: edit.user.filter(|u| u.chars().count() <= 40),
        };
        let data = serde_json::to_value(&applied)
            .map_err(|e| HubError::new(format!("cannot encode the edit: {e}")))?;
        let version = self
            .log
            .append(&stream(id), Some(doc.version), data)
            .await
            .map_err(|e| match e {
                AppendError::Conflict { current } => HubError::new(format!(
                    "version conflict: document '{id}' moved to version {current} elsewhere; reload it"
                )),
                AppendError::Backend(e) => HubError::new(format!("the document log failed: {e}")),
            })?;
        applied.version = version;
        apply(&mut doc.text, &applied.op);
        doc.version = version;
        // Still under the lock, so updates go out in version order.
        clients
            .group(stream(id))
            .send("ReceiveUpdate", (id, &applied))
            .await?;
        Ok(applied)
    }
}

#[derive(Deserialize)]
struct HistoryQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

impl Collaboration {
    /// With an in-memory event log.
    pub fn in_memory() -> Self {
        Self::new(Arc::new(MemoryEventLog::default()))
    }

    /// With any event log.
    pub fn new(log: Arc<dyn EventLog>) -> Self {
        let inner = Docs {
            log,
            docs: Arc::default(),
        };
        let hub = crate::hub_builder("CollaborationHub")
            .state(inner.clone())
            .method(
                "JoinDocument",
                |caller: Caller,
                 groups: Groups,
                 State(docs): State<Docs>,
                 Args(id): Args<String>| async move {
                    docs.join(&id, &caller, &groups).await
                },
            )
            .method(
                "LeaveDocument",
                |caller: Caller, groups: Groups, Args(id): Args<String>| async move {
                    check_doc_id(&id)?;
                    groups.remove(caller.connection_id(), &stream(&id)).await?;
                    Ok::<(), HubError>(())
                },
            )
            .method(
                "UpdateDocument",
                |caller: Caller,
                 clients: Clients,
                 State(docs): State<Docs>,
                 Args((id, edit)): Args<(String, Edit)>| async move {
                    docs.update(&id, edit, &caller, &clients).await
                },
            )
            .build();
        Self { hub, inner }
    }

    /// The hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// `/hubs/collaboration` and `GET /api/documents/{id}/history`.
    pub fn routes(&self) -> Router {
        let docs = self.inner.clone();
        Router::new()
            .nest_service("/hubs/collaboration", self.hub.clone().into_service())
            .route(
                "/api/documents/{id}/history",
                get(
                    move |Path(id): Path<String>, Query(q): Query<HistoryQuery>| {
                        let docs = docs.clone();
                        async move { history(docs, id, q).await }
                    },
                ),
            )
    }
}

async fn history(docs: Docs, id: String, q: HistoryQuery) -> Response {
    if let Err(e) = check_doc_id(&id) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({ "error": e.message() })),
        )
            .into_response();
    }
    let limit = q.limit.unwrap_or(1_000).min(10_000);
    let (events, version) = match (
        docs.log.read(&stream(&id), q.after, limit).await,
        docs.log.version(&stream(&id)).await,
    ) {
        (Ok(e), Ok(v)) => (e, v),
        (Err(e), _) | (_, Err(e)) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({ "error": e })),
            )
                .into_response();
        }
    };
    axum::Json(serde_json::json!({ "docId": id, "version": version, "events": events }))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(pos: usize, del: usize, ins: &str) -> Op {
        Op {
            pos,
            del,
            ins: ins.into(),
        }
    }

    fn run(text: &str, op: &Op) -> String {
        let mut t: Vec<u16> = text.encode_utf16().collect();
        check(&t, op).unwrap();
        apply(&mut t, op);
        String::from_utf16(&t).unwrap()
    }

    /// Both orders of two concurrent, non-conflicting edits give the same text (TP1).
    #[test]
    fn concurrent_edits_converge() {
        let base = "abcdefghij";
        let mut seed = 7u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut checked = 0;
        for _ in 0..20_000 {
            let mk = |next: &mut dyn FnMut(usize) -> usize| {
                let pos = next(base.len() + 1);
                let del = next(base.len() - pos + 1).min(3);
                let ins = ["", "X", "YY", "Z"][next(4)];
                op(pos, del, ins)
            };
            let (a, b) = (mk(&mut next), mk(&mut next));
            if conflicts(&a, &b) {
                assert!(conflicts(&b, &a));
                continue;
            }
            let via_a = run(&run(base, &a), &transform(&b, &a, false));
            let via_b = run(&run(base, &b), &transform(&a, &b, true));
            assert_eq!(via_a, via_b, "a={a:?} b={b:?}");
            checked += 1;
        }
        assert!(checked > 5_000);
    }

    #[test]
    fn overlapping_edits_conflict() {
        assert!(conflicts(&op(2, 3, ""), &op(4, 2, "x")));
        assert!(conflicts(&op(3, 0, "x"), &op(2, 3, "")));
        assert!(!conflicts(&op(2, 0, "x"), &op(2, 3, "")));
        assert!(!conflicts(&op(5, 0, "x"), &op(2, 3, "")));
        assert!(!conflicts(&op(2, 0, "x"), &op(2, 0, "y")));
    }

    #[test]
    fn surrogate_pairs_are_not_split() {
        let t: Vec<u16> = "a😀b".encode_utf16().collect();
        assert!(check(&t, &op(2, 0, "x")).is_err());
        assert!(check(&t, &op(1, 2, "x")).is_ok());
    }

    #[tokio::test]
    async fn replay_rebuilds_the_text() {
        let docs = Docs {
            log: Arc::new(MemoryEventLog::default()),
            docs: Arc::default(),
        };
        for (i, o) in [op(0, 0, "hello"), op(5, 0, " world"), op(0, 1, "H")]
            .into_iter()
            .enumerate()
        {
            let data = serde_json::to_value(Applied {
                version: i as u64 + 1,
                base_version: i as u64,
                op: o,
                client_id: "c".into(),
                op_id: None,
                user: None,
            })
            .unwrap();
            docs.log
                .append("doc:d", Some(i as u64), data)
                .await
                .unwrap();
        }
        let doc = docs.load("d").await.unwrap();
        assert_eq!(String::from_utf16(&doc.text).unwrap(), "Hello world");
        assert_eq!(doc.version, 3);
    }
}
