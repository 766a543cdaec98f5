//! Fuzzes what the broker does with every received WebSocket binary message:
//! open the frame (flags, bounded inflate), then parse the body as a client
//! message, and also as a server message (what the SDK does).
//!
//! Failures are panics, hangs (libFuzzer `-timeout`) and allocations past
//! `-malloc_limit_mb` / `-rss_limit_mb`: the inflate limit below is small,
//! so an inflate bomb that were not cut off at it would trip those limits.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sockeye_protocol::{ClientMessage, ServerMessage, frame};

/// Small on purpose: deflate expands up to ~1000x, so inputs of a few KiB
/// can try to inflate far past it.
const MAX_INFLATED: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let wire = Bytes::copy_from_slice(data);
    let Ok(body) = frame::open(&wire, MAX_INFLATED) else {
        return;
    };
    assert!(
        body.len() <= MAX_INFLATED,
        "open() returned {} bytes, over the {MAX_INFLATED}-byte limit",
        body.len()
    );
    if data.first() == Some(&0) {
        assert_eq!(
            &body[..],
            &data[1..],
            "a plain body is the frame minus its header"
        );
    }
    let _ = ClientMessage::decode(&body);
    let _ = ServerMessage::decode(&body);
});
