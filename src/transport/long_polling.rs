//! Long polling: each GET takes every whole message queued for the connection, or waits for
//! some up to the poll timeout. A newer poll ends an older one with 204, as does the end of
//! the connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio_util::sync::CancellationToken;

use super::manager::{ConnEntry, lock};
use super::{Batch, Frame};

/// What a poll answers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PollResult {
    /// 200 with these bytes (possibly none: the hold time passed).
    Data(bytes::Bytes),
    /// 204: the connection ended, or a newer poll took over.
    NoContent,
}

/// Marks the entry inactive when the poll ends, unless a newer poll already took over.
struct PollGuard {
    entry: Arc<ConnEntry>,
    generation: u64,
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        if self.entry.poll_gen.load(Ordering::Acquire) == self.generation {
            self.entry.set_inactive();
        }
    }
}

/// Serves one poll of a started connection.
pub(crate) async fn poll(entry: Arc<ConnEntry>, hold: Duration, max_bytes: usize) -> PollResult {
    let generation = entry.poll_gen.fetch_add(1, Ordering::AcqRel) + 1;
    let cancel = {
        let mut slot = lock(&entry.poll_cancel);
        slot.cancel();
        *slot = CancellationToken::new();
        slot.clone()
    };
    entry.active.store(true, Ordering::Release);
    let _guard = PollGuard {
        entry: entry.clone(),
        generation,
    };
    let batch = tokio::select! {
        biased;
        () = cancel.cancelled() => return PollResult::NoContent,
        batch = entry.outbound.next_batch(max_bytes) => batch,
        () = tokio::time::sleep(hold) => return PollResult::Data(bytes::Bytes::new()),
    };
    match batch {
        Batch::Frames(frames) => {
            if frames.len() == 1 {
                return PollResult::Data(
                    frames
                        .into_iter()
                        .next()
                        .map(Frame::into_data)
                        .unwrap_or_default(),
                );
            }
            let mut body = BytesMut::new();
            for f in frames {
                body.extend_from_slice(f.data());
            }
            PollResult::Data(body.freeze())
        }
        Batch::Closed(_) => PollResult::NoContent,
    }
}
