//! Server-Sent Events: a streaming `text/event-stream` body carrying every outbound batch as
//! one event (`data:` per payload line, then a blank line). Client data arrives by POST.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream;
use http_body_util::StreamBody;

use super::manager::ConnEntry;
use super::{Batch, Frame};

const MAX_BATCH: usize = 64 * 1024;

/// Appends `payload` as one SSE event: a `data: ` line per payload line (a trailing CR before
/// each LF is dropped, as EventSource would), then the blank line that ends the event.
pub(crate) fn write_event(payload: &[u8], out: &mut BytesMut) {
    for line in payload.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

/// Ends the connection when the response body is dropped (the client went away, or the
/// stream finished).
struct Guard(Arc<ConnEntry>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.set_inactive();
        self.0.close_inbound();
    }
}

/// The body of an SSE response for `entry`.
pub(crate) fn body(
    entry: Arc<ConnEntry>,
) -> StreamBody<impl futures_util::Stream<Item = Result<http_body::Frame<Bytes>, Infallible>>> {
    // The first chunk is a comment so that the client sees the stream open at once.
    let state = (Guard(entry), true);
    let s = stream::unfold(state, |(guard, first)| async move {
        if first {
            return Some((
                Ok(http_body::Frame::data(Bytes::from_static(b":\r\n"))),
                (guard, false),
            ));
        }
        match guard.0.outbound.next_batch(MAX_BATCH).await {
            Batch::Frames(frames) => {
                let mut out = BytesMut::new();
                for f in frames {
                    let data: Bytes = Frame::into_data(f);
                    write_event(&data, &mut out);
                }
                Some((Ok(http_body::Frame::data(out.freeze())), (guard, false)))
            }
            Batch::Closed(_) => None,
        }
    });
    StreamBody::new(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_payload_with_a_data_line_per_line() {
        let mut out = BytesMut::new();
        write_event(b"{\"type\":6}\x1e", &mut out);
        assert_eq!(&out[..], b"data: {\"type\":6}\x1e\r\n\r\n");
        let mut out = BytesMut::new();
        write_event(b"a\r\nb\nc", &mut out);
        assert_eq!(&out[..], b"data: a\r\ndata: b\r\ndata: c\r\n\r\n");
    }
}
