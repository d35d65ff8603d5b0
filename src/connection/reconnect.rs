//! Stateful reconnect (Ack / Sequence): the buffer of sent messages the client has not yet
//! acknowledged, and the inbound cursor that drops messages the server already processed.
//!
//! Both directions number their trackable messages (types 1–5) from 1, never resetting.
//! Invariant: the replay buffer holds exactly the trackable messages after the client's last
//! Ack, in sending order, so a replay after a dropped socket neither loses nor repeats one.

use std::collections::VecDeque;

use bytes::Bytes;

/// Sent trackable messages the client has not acknowledged yet, and the messages held back
/// until Acks make room (back-pressure: a burst waits instead of closing the connection).
#[derive(Debug)]
pub(crate) struct ReplayBuffer {
    /// Sequence id of the oldest message in `entries` (or of the next one when empty).
    first: u64,
    entries: VecDeque<Bytes>,
    bytes: usize,
    limit: usize,
    /// Not yet sent: waiting for the client to acknowledge enough of `entries`.
    held: VecDeque<Bytes>,
    held_bytes: usize,
}

/// What to do with a message given to [`ReplayBuffer::admit`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Numbered and buffered: write it now.
    Send,
    /// Held until Acks make room.
    Held,
    /// The client is so far behind that even the held queue is full: a slow consumer.
    Overflow,
}

impl ReplayBuffer {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            first: 1,
            entries: VecDeque::new(),
            bytes: 0,
            limit,
            held: VecDeque::new(),
            held_bytes: 0,
        }
    }

    /// The most bytes held back before the connection counts as a slow consumer.
    fn held_limit(&self) -> usize {
        (self.limit * 10).max(1 << 20)
    }

    fn fits(&self, len: usize) -> bool {
        // A message larger than the whole buffer still goes when the buffer is empty.
        self.entries.is_empty() || self.bytes + len <= self.limit
    }

    fn record(&mut self, data: Bytes) {
        self.bytes += data.len();
        self.entries.push_back(data);
    }

    /// Offers the next trackable message: numbered now if the unacknowledged bytes leave
    /// room, else held (in order) until Acks do.
    pub(crate) fn admit(&mut self, data: Bytes) -> Admit {
        if self.held.is_empty() && self.fits(data.len()) {
            self.record(data);
            return Admit::Send;
        }
        if self.held_bytes + data.len() > self.held_limit() {
            return Admit::Overflow;
        }
        self.held_bytes += data.len();
        self.held.push_back(data);
        Admit::Held
    }

    /// The client processed every message up to `sequence_id`. Returns the held messages
    /// that now fit, numbered and buffered, to be written in this order.
    pub(crate) fn ack(&mut self, sequence_id: u64) -> Vec<Bytes> {
        while self.first <= sequence_id {
            match self.entries.pop_front() {
                Some(d) => {
                    self.bytes -= d.len();
                    self.first += 1;
                }
                None => break,
            }
        }
        let mut released = Vec::new();
        while let Some(len) = self.held.front().map(Bytes::len) {
            if !self.fits(len) {
                break;
            }
            let data = self.held.pop_front().expect("front exists");
            self.held_bytes -= len;
            self.record(data.clone());
            released.push(data);
        }
        released
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
            assert_eq!(b.admit(Bytes::from(vec![i; 10])), Admit::Send);
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
    fn a_burst_is_held_until_acks_make_room_in_order() {
        let mut b = ReplayBuffer::new(25);
        assert_eq!(b.admit(Bytes::from_static(b"aaaaaaaaaa")), Admit::Send); // 1
        assert_eq!(b.admit(Bytes::from_static(b"bbbbbbbbbb")), Admit::Send); // 2
        assert_eq!(b.admit(Bytes::from_static(b"cccccccccc")), Admit::Held);
        // Once something is held, later messages queue behind it even if they would fit.
        assert_eq!(b.admit(Bytes::from_static(b"d")), Admit::Held);
        let released = b.ack(1);
        assert_eq!(
            released,
            vec![Bytes::from_static(b"cccccccccc"), Bytes::from_static(b"d")]
        );
        assert_eq!(b.first_unacked(), 2);
        assert_eq!(b.pending().count(), 3);
        // A message larger than the buffer goes once the buffer is empty.
        let mut big = ReplayBuffer::new(4);
        assert_eq!(big.admit(Bytes::from(vec![0; 100])), Admit::Send);
        assert_eq!(big.admit(Bytes::from(vec![0; 100])), Admit::Held);
        assert_eq!(big.ack(1).len(), 1);
    }

    #[test]
    fn a_client_that_never_acks_overflows_the_held_queue() {
        let mut b = ReplayBuffer::new(10);
        assert_eq!(b.admit(Bytes::from(vec![0; 10])), Admit::Send);
        let mut outcome = Admit::Held;
        for _ in 0..200 {
            outcome = b.admit(Bytes::from(vec![0; 10_000]));
            if outcome == Admit::Overflow {
                break;
            }
        }
        assert_eq!(outcome, Admit::Overflow);
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
