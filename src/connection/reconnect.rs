//! Stateful reconnect (Ack / Sequence): the buffer of sent messages the client has not yet
//! acknowledged, and the inbound cursor that drops messages the server already processed.
//!
//! Both directions number their trackable messages (types 1–5) from 1, never resetting.
//! Invariant: the replay buffer holds exactly the trackable messages after the client's last
//! Ack, in sending order, so a replay after a dropped socket neither loses nor repeats one.

use std::collections::VecDeque;

use bytes::Bytes;

/// Sent trackable messages the client has not acknowledged yet.
#[derive(Debug)]
pub(crate) struct ReplayBuffer {
    /// Sequence id of the oldest message in `entries` (or of the next one when empty).
    first: u64,
    entries: VecDeque<Bytes>,
    bytes: usize,
    limit: usize,
}

impl ReplayBuffer {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            first: 1,
            entries: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    /// Records the next trackable message sent.
    pub(crate) fn push(&mut self, data: Bytes) {
        self.bytes += data.len();
        self.entries.push_back(data);
    }

    /// Whether the client lags so far behind that more messages may not be buffered.
    pub(crate) fn over_limit(&self) -> bool {
        self.bytes > self.limit
    }

    /// The client processed every message up to `sequence_id`.
    pub(crate) fn ack(&mut self, sequence_id: u64) {
        while self.first <= sequence_id {
            match self.entries.pop_front() {
                Some(d) => {
                    self.bytes -= d.len();
                    self.first += 1;
                }
                None => break,
            }
        }
    }

    /// The `Sequence` id to announce on a new socket: the first message to be replayed.
    pub(crate) fn first_unacked(&self) -> u64 {
        self.first
    }

    /// The messages to send again, in order.
    pub(crate) fn pending(&self) -> impl Iterator<Item = &Bytes> {
        self.entries.iter()
    }

    #[cfg(test)]
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.bytes
    }
}

/// Which inbound trackable messages were already processed.
#[derive(Debug, Default)]
pub(crate) struct InboundCursor {
    /// Id the next trackable message received will have.
    next: u64,
    /// Highest id processed.
    processed: u64,
    /// `processed` when the last Ack was sent.
    acked: u64,
}

impl InboundCursor {
    pub(crate) fn new() -> Self {
        Self {
            next: 1,
            processed: 0,
            acked: 0,
        }
    }

    /// The client announced that its next message has id `sequence_id`. Err when that
    /// would skip messages never received.
    pub(crate) fn sequence(&mut self, sequence_id: u64) -> Result<(), ()> {
        if sequence_id > self.processed + 1 || sequence_id == 0 {
            return Err(());
        }
        self.next = sequence_id;
        Ok(())
    }

    /// A trackable message arrived: whether it is new (to process) or a duplicate.
    pub(crate) fn receive(&mut self) -> bool {
        let id = self.next;
        self.next += 1;
        if id <= self.processed {
            false
        } else {
            self.processed = id;
            true
        }
    }

    /// The Ack to send now, if anything new was processed since the last one.
    pub(crate) fn take_ack(&mut self) -> Option<u64> {
        (self.processed > self.acked).then(|| {
            self.acked = self.processed;
            self.processed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_frees_and_sequence_points_at_first_unacked() {
        let mut b = ReplayBuffer::new(100);
        for i in 0..5u8 {
            b.push(Bytes::from(vec![i; 10]));
        }
        assert_eq!(b.first_unacked(), 1);
        b.ack(3);
        assert_eq!(b.first_unacked(), 4);
        assert_eq!(b.pending().count(), 2);
        assert_eq!(b.buffered_bytes(), 20);
        b.ack(99);
        assert_eq!(b.first_unacked(), 6);
        assert_eq!(b.pending().count(), 0);
    }

    #[test]
    fn duplicates_after_a_replay_are_dropped() {
        let mut c = InboundCursor::new();
        assert!(c.receive()); // 1
        assert!(c.receive()); // 2
        assert!(c.receive()); // 3
        assert_eq!(c.take_ack(), Some(3));
        assert_eq!(c.take_ack(), None);
        // The client did not see the Ack for 3 and replays from 2.
        c.sequence(2).unwrap();
        assert!(!c.receive()); // 2 again
        assert!(!c.receive()); // 3 again
        assert!(c.receive()); // 4 is new
        assert!(c.sequence(9).is_err());
    }
}
