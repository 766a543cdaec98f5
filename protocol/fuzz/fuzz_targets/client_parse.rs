//! Fuzzes the client-message parser directly on raw bodies (no frame
//! header, no inflate), so every input reaches the MessagePack reader.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sockeye_protocol::ClientMessage;

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    match ClientMessage::decode(&body) {
        Ok(ClientMessage::Publish { payload, .. }) => {
            // The payload is a zero-copy slice of the body: never longer
            // than it, and never empty (it is one complete MessagePack value).
            assert!(!payload.is_empty() && payload.len() < body.len());
        }
        Ok(_) => {}
        Err(error) => {
            // The error text is what the broker sends back; building it
            // must not panic either.
            let _ = error.to_string();
        }
    }
});
