//! The stateful-reconnect state machine (replay buffer, inbound cursor) driven by arbitrary
//! Send / Ack / Sequence / Receive / TakeAck sequences, checked against a model.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::fuzzing::{ReconnectOp, check_reconnect};

fuzz_target!(|data: &[u8]| {
    let ops = ReconnectOp::decode(data);
    check_reconnect(&ops, 100_000);
});
