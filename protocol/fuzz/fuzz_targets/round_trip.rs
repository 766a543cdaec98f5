//! Fuzzes the codec's round trip: whatever body decodes, as a client or a
//! server message, must encode to a body that decodes to the same message,
//! both plain and compressed, and re-encoding that must give the same bytes
//! (the encoder's output is canonical).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sockeye_protocol::{ClientMessage, Compression, ServerMessage, frame};

/// Compress every re-encoded frame, so the inflate path is checked too.
const ALWAYS: Compression = Compression {
    threshold: 0,
    level: 1,
};

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    if let Ok(message) = ClientMessage::decode(&body) {
        let mut encoded = Vec::new();
        message.encode_body(&mut encoded);
        let encoded = Bytes::from(encoded);
        let again = ClientMessage::decode(&encoded).expect("an encoded client message decodes");
        assert_eq!(again, message, "client message changed in a round trip");
        let mut canonical = Vec::new();
        again.encode_body(&mut canonical);
        assert_eq!(
            canonical, encoded,
            "client message encoding is not canonical"
        );
        for compression in [Compression::OFF, ALWAYS] {
            let wire = message.encode_frame(&compression);
            let opened = frame::open(&wire, usize::MAX).expect("an encoded frame opens");
            assert_eq!(opened, encoded, "the frame holds the encoded body");
        }
    }
    if let Ok(message) = ServerMessage::decode(&body) {
        let mut encoded = Vec::new();
        message.encode_body(&mut encoded);
        let encoded = Bytes::from(encoded);
        let again = ServerMessage::decode(&encoded).expect("an encoded server message decodes");
        assert_eq!(again, message, "server message changed in a round trip");
        let mut canonical = Vec::new();
        again.encode_body(&mut canonical);
        assert_eq!(
            canonical, encoded,
            "server message encoding is not canonical"
        );
        for compression in [Compression::OFF, ALWAYS] {
            let wire = message.encode_frame(&compression);
            let opened = frame::open(&wire, usize::MAX).expect("an encoded frame opens");
            assert_eq!(opened, encoded, "the frame holds the encoded body");
        }
    }
});
