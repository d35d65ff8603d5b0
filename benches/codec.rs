//! Codec micro-benchmarks: encode and decode per message type and protocol, 20 B and 1 KiB
//! string arguments (perf-notes B10). `cargo bench --bench codec`.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tidings::protocol::{Completion, HubMessage, Invocation, Outcome, Protocol, StreamItem};

fn messages(protocol: Protocol, size: usize) -> Vec<(&'static str, HubMessage)> {
    let text = "x".repeat(size);
    let args = protocol.encode_value(&(text.as_str(),)).expect("args");
    let item = protocol.encode_value(&text).expect("item");
    vec![
        (
            "invocation",
            HubMessage::Invocation(Invocation {
                headers: Default::default(),
                invocation_id: None,
                target: "send".into(),
                arguments: args.clone(),
                stream_ids: Vec::new(),
            }),
        ),
        (
            "invocation-with-id",
            HubMessage::Invocation(Invocation {
                headers: Default::default(),
                invocation_id: Some("42".into()),
                target: "Echo".into(),
                arguments: args,
                stream_ids: Vec::new(),
            }),
        ),
        (
            "completion",
            HubMessage::Completion(Completion {
                headers: Default::default(),
                invocation_id: "42".into(),
                outcome: Outcome::Result(item.clone()),
            }),
        ),
        (
            "stream-item",
            HubMessage::StreamItem(StreamItem {
                headers: Default::default(),
                invocation_id: "42".into(),
                item,
            }),
        ),
        ("ping", HubMessage::Ping),
    ]
}

fn codec(c: &mut Criterion) {
    for protocol in [Protocol::Json, Protocol::MessagePack] {
        for size in [20usize, 1024] {
            let mut encode = c.benchmark_group(format!("encode/{}/{size}B", protocol.name()));
            for (name, msg) in messages(protocol, size) {
                let len = protocol.encode_message(&msg).len();
                encode.throughput(Throughput::Bytes(len as u64));
                let mut out = Vec::with_capacity(2048);
                encode.bench_with_input(BenchmarkId::from_parameter(name), &msg, |b, msg| {
                    b.iter(|| {
                        out.clear();
                        protocol.write_message(black_box(msg), &mut out);
                        black_box(out.len())
                    })
                });
            }
            encode.finish();
            let mut decode = c.benchmark_group(format!("decode/{}/{size}B", protocol.name()));
            for (name, msg) in messages(protocol, size) {
                let bytes = protocol.encode_message(&msg);
                decode.throughput(Throughput::Bytes(bytes.len() as u64));
                decode.bench_with_input(BenchmarkId::from_parameter(name), &bytes, |b, bytes| {
                    b.iter(|| {
                        let mut buf = BytesMut::from(&bytes[..]);
                        let parsed = protocol
                            .parse_message(&mut buf, None)
                            .expect("valid")
                            .expect("whole");
                        black_box(parsed)
                    })
                });
            }
            decode.finish();
        }
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
