//! Decoders that cannot be weaponised (issue 8 item 1), proven with a counting global allocator
//! (its own test binary, so nothing else allocates through it) on 2 MiB stacks in a debug
//! build: deep nesting is a clean error, never a stack overflow (which aborts the process), and
//! lying length headers never turn a few bytes into a large allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tidings::protocol::{ArgsDeserializer, MessageParser, Payload, Protocol, ProtocolError};

/// Counts the bytes requested by the current thread while measuring.
struct Counting;

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static REQUESTED: Cell<usize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = ACTIVE.try_with(|active| {
        if active.get() {
            REQUESTED.with(|r| r.set(r.get() + size));
            LARGEST.with(|l| l.set(l.get().max(size)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting only reads the
// requested sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes requested by `f` on this thread (the sum of every allocation and reallocation),
/// and the largest single request.
#[derive(Debug, Clone, Copy)]
struct Requested {
    total: usize,
    #[allow(dead_code)] // shown in the Debug output of failures
    largest: usize,
}

fn measure<T>(f: impl FnOnce() -> T) -> (T, Requested) {
    REQUESTED.with(|r| r.set(0));
    LARGEST.with(|l| l.set(0));
    ACTIVE.with(|a| a.set(true));
    let out = f();
    ACTIVE.with(|a| a.set(false));
    let requested = Requested {
        total: REQUESTED.with(Cell::get),
        largest: LARGEST.with(Cell::get),
    };
    (out, requested)
}

/// Runs `f` on a thread with a 2 MiB stack (tokio's worker default), as a debug build.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

const MIB: usize = 1 << 20;

/// "Any argument", the way a hub might model it: the shape that made rmp-serde request 1 GB
/// from 5 000 bytes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum Node {
    Leaf(u8),
    List(Vec<Node>),
}

/// `n` array32 headers each claiming 2^32 - 1 elements.
fn lying_arrays(n: usize) -> Vec<u8> {
    [0xDD, 0xFF, 0xFF, 0xFF, 0xFF].repeat(n)
}

/// A MessagePack Invocation frame of `Echo` whose arguments are `arguments`.
fn messagepack_invocation(arguments: &[u8]) -> BytesMut {
    let mut body = vec![0x95, 0x01, 0x80, 0xA1, b'1', 0xA4];
    body.extend_from_slice(b"Echo");
    body.extend_from_slice(arguments);
    let mut frame = Vec::new();
    tidings::protocol::messagepack::write_varint(body.len(), &mut frame);
    frame.extend_from_slice(&body);
    BytesMut::from(&frame[..])
}

fn json_invocation(arguments: &str) -> BytesMut {
    BytesMut::from(
        format!("{{\"type\":1,\"invocationId\":\"1\",\"target\":\"Echo\",\"arguments\":{arguments}}}\x1e")
            .as_bytes(),
    )
}

fn is_invalid<T: std::fmt::Debug>(r: &Result<T, ProtocolError>) -> bool {
    matches!(r, Err(ProtocolError::Invalid(_)))
}

#[test]
fn the_counting_allocator_sees_the_danger() {
    // The control: what the unchecked path does with the same bytes. If this stops requesting
    // a lot, the assertions below prove nothing.
    let lying = lying_arrays(100);
    let (_, req) = measure(|| rmp_serde::from_slice::<Node>(&lying).is_err());
    eprintln!("control: rmp_serde::from_slice::<Node>(100 lying headers) requested {req:?}");
    assert!(req.total >= 50 * MIB, "control requested only {req:?}");
}

#[test]
fn a_thousand_lying_array32_headers_request_at_most_1_mib() {
    on_small_stack(|| {
        let lying = lying_arrays(1000);
        let mut args = vec![0x91];
        args.extend_from_slice(&lying);

        let (r, req) = measure(|| {
            let mut frame = messagepack_invocation(&args);
            Protocol::MessagePack.parse_message(&mut frame, None)
        });
        assert!(is_invalid(&r), "{r:?}");
        assert!(req.total <= MIB, "parse_message: {req:?}");

        let payload = Payload(Bytes::from(args.clone()));
        let (r, req) = measure(|| ArgsDeserializer::new(Protocol::MessagePack, &payload).err());
        assert!(r.is_some());
        assert!(req.total <= MIB, "ArgsDeserializer: {req:?}");

        let payload = Payload(Bytes::from(lying.clone()));
        let (r, req) = measure(|| Protocol::MessagePack.decode_value::<Node>(&payload));
        assert!(is_invalid(&r));
        eprintln!("decode_value::<Node>(1000 lying headers) requested {req:?}");
        assert!(req.total <= MIB, "decode_value::<Node>: {req:?}");
        let (r, req) = measure(|| Protocol::MessagePack.decode_value::<Vec<Vec<u64>>>(&payload));
        assert!(is_invalid(&r));
        assert!(req.total <= MIB, "decode_value::<Vec<Vec<u64>>>: {req:?}");
        let (r, req) = measure(|| Protocol::MessagePack.decode_value::<rmpv::Value>(&payload));
        assert!(is_invalid(&r));
        assert!(req.total <= MIB, "decode_value::<rmpv::Value>: {req:?}");
        let (r, req) =
            measure(|| Protocol::MessagePack.decode_value::<serde_json::Value>(&payload));
        assert!(is_invalid(&r));
        assert!(
            req.total <= MIB,
            "decode_value::<serde_json::Value>: {req:?}"
        );

        // Lying str32/bin32/map32/ext32 lengths likewise.
        for marker in [0xDB, 0xC6, 0xDF, 0xC9] {
            let bytes = [marker, 0xFF, 0xFF, 0xFF, 0xFF].repeat(200);
            let payload = Payload(Bytes::from(bytes));
            let (r, req) = measure(|| Protocol::MessagePack.decode_value::<Node>(&payload));
            assert!(r.is_err());
            assert!(req.total <= MIB, "marker {marker:#x}: {req:?}");
        }
    });
}

#[test]
fn allocation_stays_proportional_for_truthful_headers() {
    // Headers that do not lie: 30 000 one-byte elements. What a decode requests is a small
    // multiple of the bytes present.
    on_small_stack(|| {
        let mut bytes = vec![0xDD];
        bytes.extend_from_slice(&30_000u32.to_be_bytes());
        bytes.extend(std::iter::repeat_n(0x01, 30_000));
        let payload = Payload(Bytes::from(bytes));
        let (r, req) = measure(|| Protocol::MessagePack.decode_value::<Vec<Node>>(&payload));
        assert_eq!(r.unwrap().len(), 30_000);
        assert!(req.total <= 64 * 30_000, "{req:?}");
    });
}

#[test]
fn a_2_gb_varint_prefix_is_refused_before_allocating() {
    for prefix in [
        vec![0xFF, 0xFF, 0xFF, 0xFF, 0x07],
        vec![0xFF, 0xFF, 0xFF, 0xFF, 0x0F],
        vec![0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
    ] {
        let (r, req) = measure(|| {
            let mut buf = BytesMut::from(&prefix[..]);
            Protocol::MessagePack.parse_message(&mut buf, Some(32 * 1024))
        });
        assert!(r.is_err(), "{prefix:?}: {r:?}");
        assert!(req.total < 64 * 1024, "{prefix:?}: {req:?}");
        // Without a limit the longest legal prefix waits for its body, allocating nothing.
        let (r, req) = measure(|| {
            let mut buf = BytesMut::from(&prefix[..]);
            let mut parser = MessageParser::new(Protocol::MessagePack);
            parser.parse(&mut buf, None)
        });
        assert!(matches!(r, Ok(None)) || is_invalid(&r), "{r:?}");
        assert!(req.total < 64 * 1024, "{req:?}");
    }
}

#[test]
fn nesting_10_000_deep_is_a_clean_error() {
    on_small_stack(|| {
        let n = 10_000;
        // JSON: in the arguments, in an item, in an unknown property, in headers.
        let deep = format!("{}1{}", "[".repeat(n), "]".repeat(n));
        for record in [
            json_invocation(&format!("[{deep}]")),
            BytesMut::from(
                format!("{{\"type\":2,\"invocationId\":\"1\",\"item\":{deep}}}\x1e").as_bytes(),
            ),
            BytesMut::from(
                format!("{{\"type\":5,\"invocationId\":\"1\",\"headers\":{deep}}}\x1e").as_bytes(),
            ),
            BytesMut::from(format!("{{\"type\":6,\"x\":{}}}\x1e", "[".repeat(n)).as_bytes()),
        ] {
            let mut buf = record;
            let r = Protocol::Json.parse_message(&mut buf, None);
            assert!(is_invalid(&r), "{r:?}");
        }
        let payload = Payload(Bytes::from(deep.clone()));
        assert!(
            Protocol::Json
                .decode_value::<serde_json::Value>(&payload)
                .is_err()
        );
        assert!(Protocol::Json.decode_value::<Node>(&payload).is_err());
        let args = Payload(Bytes::from(format!("[{deep}]")));
        assert!(ArgsDeserializer::new(Protocol::Json, &args).is_err());

        // MessagePack: fixarray, array16 and map nesting.
        for level in [vec![0x91], vec![0xDC, 0x00, 0x01], vec![0x81, 0xA1, b'k']] {
            let mut deep = level.repeat(n);
            deep.push(0x00);
            let mut args = vec![0x91];
            args.extend_from_slice(&deep);
            let mut frame = messagepack_invocation(&args);
            let r = Protocol::MessagePack.parse_message(&mut frame, None);
            assert!(is_invalid(&r), "{r:?}");
            let payload = Payload(Bytes::from(deep));
            assert!(
                Protocol::MessagePack
                    .decode_value::<rmpv::Value>(&payload)
                    .is_err()
            );
            assert!(
                Protocol::MessagePack
                    .decode_value::<serde_json::Value>(&payload)
                    .is_err()
            );
            assert!(
                Protocol::MessagePack
                    .decode_value::<Node>(&payload)
                    .is_err()
            );
            let args = Payload(Bytes::from(args));
            assert!(ArgsDeserializer::new(Protocol::MessagePack, &args).is_err());
        }
        // The envelope itself nested: an Invocation inside arrays.
        let mut frame_body = vec![0x91; n];
        frame_body.push(0x06);
        let mut frame = Vec::new();
        tidings::protocol::messagepack::write_varint(frame_body.len(), &mut frame);
        frame.extend_from_slice(&frame_body);
        let r = Protocol::MessagePack.parse_message(&mut BytesMut::from(&frame[..]), None);
        assert!(r.is_err());
    });
}

#[test]
fn nesting_at_the_cap_still_decodes() {
    on_small_stack(|| {
        // 64 levels in total: the payload's own array plus 63 inside.
        let deep = format!("{}1{}", "[".repeat(64), "]".repeat(64));
        let payload = Payload(Bytes::from(deep));
        assert!(
            Protocol::Json
                .decode_value::<serde_json::Value>(&payload)
                .is_ok()
        );
        let mut deep = vec![0x91; 64];
        deep.push(0x00);
        let payload = Payload(Bytes::from(deep));
        assert!(
            Protocol::MessagePack
                .decode_value::<rmpv::Value>(&payload)
                .is_ok()
        );
        assert!(Protocol::MessagePack.decode_value::<Node>(&payload).is_ok());
        let mut deeper = vec![0x91; 65];
        deeper.push(0x00);
        let payload = Payload(Bytes::from(deeper));
        assert!(
            Protocol::MessagePack
                .decode_value::<Node>(&payload)
                .is_err()
        );
    });
}

#[test]
fn the_receive_limit_applies_before_a_record_is_buffered_whole() {
    // A JSON record without its separator, dribbled: refused at byte 32 769, however it is cut.
    let limit = 32 * 1024;
    let mut parser = MessageParser::new(Protocol::Json);
    let mut buf = BytesMut::new();
    let mut refused_at = None;
    for i in 1..=2 * limit {
        buf.extend_from_slice(b"[");
        if let Err(e) = parser.parse(&mut buf, Some(limit)) {
            assert_eq!(e, ProtocolError::MessageTooLarge { limit });
            refused_at = Some(i);
            break;
        }
    }
    assert_eq!(refused_at, Some(limit + 1));
    // MessagePack: refused from the prefix alone, with one byte of body present.
    let mut frame = Vec::new();
    tidings::protocol::messagepack::write_varint(limit + 1, &mut frame);
    frame.push(0x91);
    let r = Protocol::MessagePack.parse_message(&mut BytesMut::from(&frame[..]), Some(limit));
    assert_eq!(r, Err(ProtocolError::MessageTooLarge { limit }));
}
