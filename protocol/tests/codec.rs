//! Codec tests: round trips of every kind, golden bytes shared with
//! docs/protocol.md, hostile inputs, compression and the inflate limit.
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use bytes::Bytes;
use proptest::prelude::*;
use sockeye_protocol::frame::{self, FLAG_DEFLATE, FrameBuf};
use sockeye_protocol::{
    ClientMessage, Compression, DecodeError, Delivery, ErrorCode, Limits, OffsetRange, Payload,
    Position, ServerMessage, Subscribed, Welcome,
};

const MAX_INFLATED: usize = 1 << 20;

fn limits() -> Limits {
    Limits {
        max_frame_bytes: 1 << 20,
        max_inflated_bytes: 4 << 20,
        compression_threshold_bytes: 1024,
        max_topic_bytes: 255,
        max_subscriptions: 256,
        publish_rate_per_sec: 0,
        publish_burst: 0,
    }
}

fn client_examples() -> Vec<ClientMessage> {
    vec![
        ClientMessage::Subscribe {
            id: 1,
            topic: "chat.lobby".into(),
            position: None,
        },
        ClientMessage::Subscribe {
            id: 2,
            topic: "chat.lobby".into(),
            position: Some(Position::After {
                epoch: 123_456_789,
                offset: 41,
            }),
        },
        ClientMessage::Subscribe {
            id: 3,
            topic: "chat.lobby".into(),
            position: Some(Position::Oldest),
        },
        ClientMessage::Subscribe {
            id: 4,
            topic: "chat.lobby".into(),
            position: Some(Position::Last { count: 10 }),
        },
        ClientMessage::Unsubscribe {
            id: 5,
            topic: "chat.*".into(),
        },
        ClientMessage::Publish {
            id: 6,
            topic: "chat.lobby".into(),
            payload: Payload::from_msgpack(vec![
                0x81, 0xa4, b't', b'e', b'x', b't', 0xa2, b'h', b'i',
            ])
            .unwrap(),
            ack: true,
        },
        ClientMessage::Publish {
            id: 7,
            topic: "metrics.cpu".into(),
            payload: Payload::binary(&[1, 2, 3]),
            ack: false,
        },
        ClientMessage::Ping { id: 8 },
        ClientMessage::Refresh {
            id: 9,
            token: "eyJhbGciOiJIUzI1NiJ9.e30.sig".into(),
        },
    ]
}

fn server_examples() -> Vec<ServerMessage> {
    vec![
        ServerMessage::Welcome(Welcome {
            connection_id: 1,
            version: 1,
            subject: "alice".into(),
            heartbeat_interval_ms: 20_000,
            heartbeat_timeout_ms: 60_000,
            token_expires_at: Some(1_767_225_600_000),
            limits: limits(),
        }),
        ServerMessage::Welcome(Welcome {
            connection_id: 2,
            version: 1,
            subject: "svc".into(),
            heartbeat_interval_ms: 1,
            heartbeat_timeout_ms: 2,
            token_expires_at: None,
            limits: limits(),
        }),
        ServerMessage::Subscribed(Subscribed {
            id: 2,
            topic: "chat.lobby".into(),
            stored: true,
            epoch: 123_456_789,
            last_offset: 50,
            next_offset: 45,
            complete: false,
            gap: Some(OffsetRange { from: 42, to: 44 }),
            epoch_changed: false,
        }),
        ServerMessage::Unsubscribed {
            id: 5,
            topic: "chat.*".into(),
        },
        ServerMessage::Published {
            id: 6,
            epoch: 123_456_789,
            offset: 51,
        },
        ServerMessage::Pong { id: 8 },
        ServerMessage::Refreshed {
            id: 9,
            expires_at: Some(1_767_229_200_000),
        },
        ServerMessage::Refreshed {
            id: 10,
            expires_at: None,
        },
        ServerMessage::Error {
            id: Some(6),
            code: ErrorCode::Forbidden,
            message: "no publish permission".into(),
        },
        ServerMessage::Error {
            id: None,
            code: ErrorCode::MalformedFrame,
            message: "x".into(),
        },
        ServerMessage::Message(Delivery {
            topic: "chat.lobby".into(),
            epoch: 123_456_789,
            offset: 51,
            timestamp_ms: 1_767_225_600_123,
            publisher: "alice".into(),
            payload: Payload::binary(b"hi"),
        }),
        ServerMessage::TokenExpiring {
            expires_at: 1_767_225_600_000,
        },
        ServerMessage::Gap {
            topic: "chat.lobby".into(),
            epoch: 7,
            range: OffsetRange { from: 3, to: 9 },
        },
        ServerMessage::Reset {
            topic: "chat.lobby".into(),
            epoch: 8,
        },
    ]
}

#[test]
fn every_client_message_round_trips_plain_and_compressed() {
    for message in client_examples() {
        for compression in [
            Compression::OFF,
            Compression {
                threshold: 0,
                level: 6,
            },
        ] {
            let wire = message.encode_frame(&compression);
            let body = frame::open(&wire, MAX_INFLATED).unwrap();
            assert_eq!(ClientMessage::decode(&body).unwrap(), message);
        }
    }
}

#[test]
fn every_server_message_round_trips_plain_and_compressed() {
    for message in server_examples() {
        for compression in [
            Compression::OFF,
            Compression {
                threshold: 0,
                level: 6,
            },
        ] {
            let wire = message.encode_frame(&compression);
            let body = frame::open(&wire, MAX_INFLATED).unwrap();
            assert_eq!(ServerMessage::decode(&body).unwrap(), message);
        }
    }
}

/// Pulls the hex block that follows `<!-- golden: NAME -->` out of the spec.
fn golden_from_spec(name: &str) -> Vec<u8> {
    let spec = include_str!("../../docs/protocol.md");
    let marker = format!("<!-- golden: {name} -->");
    let start = spec
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/protocol.md has no golden example `{name}`"));
    let block = &spec[start + marker.len()..];
    let open = block
        .find("```hex")
        .expect("golden marker is followed by a hex block")
        + 6;
    let close = block[open..].find("```").expect("hex block is closed") + open;
    block[open..close]
        .split_whitespace()
        .map(|pair| u8::from_str_radix(pair, 16).expect("hex byte"))
        .collect()
}

#[test]
fn encodings_match_the_golden_bytes_in_the_spec() {
    let cases: Vec<(&str, Bytes)> = vec![
        (
            "publish",
            ClientMessage::Publish {
                id: 1,
                topic: "chat".into(),
                payload: Payload::from_msgpack(vec![0xa2, b'h', b'i']).unwrap(),
                ack: true,
            }
            .encode_frame(&Compression::default()),
        ),
        (
            "subscribe-after",
            ClientMessage::Subscribe {
                id: 2,
                topic: "chat".into(),
                position: Some(Position::After {
                    epoch: 9,
                    offset: 41,
                }),
            }
            .encode_frame(&Compression::default()),
        ),
        (
            "message",
            ServerMessage::Message(Delivery {
                topic: "chat".into(),
                epoch: 9,
                offset: 42,
                timestamp_ms: 1_700_000_000_000,
                publisher: "bob".into(),
                payload: Payload::from_msgpack(vec![0xa2, b'h', b'i']).unwrap(),
            })
            .encode_frame(&Compression::default()),
        ),
        (
            "error",
            ServerMessage::Error {
                id: Some(1),
                code: ErrorCode::Forbidden,
                message: "no".into(),
            }
            .encode_frame(&Compression::default()),
        ),
        (
            "ping",
            ClientMessage::Ping { id: 3 }.encode_frame(&Compression::default()),
        ),
        (
            "welcome",
            ServerMessage::Welcome(Welcome {
                connection_id: 7,
                version: 1,
                subject: "alice".into(),
                heartbeat_interval_ms: 20_000,
                heartbeat_timeout_ms: 60_000,
                token_expires_at: Some(1_767_225_600_000),
                limits: Limits {
                    max_frame_bytes: 1 << 20,
                    max_inflated_bytes: 4 << 20,
                    compression_threshold_bytes: 1024,
                    max_topic_bytes: 255,
                    max_subscriptions: 256,
                    publish_rate_per_sec: 50_000,
                    publish_burst: 100_000,
                },
            })
            .encode_frame(&Compression::default()),
        ),
        (
            "compressed-publish",
            // Raw deflate at level 9 of a body with a 64-byte string payload.
            compressed_publish().encode_frame(&Compression {
                threshold: 0,
                level: 9,
            }),
        ),
    ];
    for (name, encoded) in cases {
        let golden = golden_from_spec(name);
        assert_eq!(
            encoded.as_ref(),
            golden.as_slice(),
            "golden `{name}`: encoder output {:02x?}",
            encoded.as_ref()
        );
    }
    // The compressed golden must also decode to the same publish.
    let compressed = Bytes::from(golden_from_spec("compressed-publish"));
    assert_eq!(compressed[0], FLAG_DEFLATE);
    let body = frame::open(&compressed, MAX_INFLATED).unwrap();
    assert_eq!(ClientMessage::decode(&body).unwrap(), compressed_publish());
}

fn compressed_publish() -> ClientMessage {
    let mut payload = vec![0xd9, 64];
    payload.extend([b'a'; 64]);
    ClientMessage::Publish {
        id: 4,
        topic: "chat".into(),
        payload: Payload::from_msgpack(payload).unwrap(),
        ack: true,
    }
}

#[test]
fn every_truncation_of_every_message_is_a_typed_error() {
    for message in client_examples() {
        let mut body = Vec::new();
        message.encode_body(&mut body);
        for cut in 0..body.len() {
            let truncated = Bytes::copy_from_slice(&body[..cut]);
            assert!(
                ClientMessage::decode(&truncated).is_err(),
                "{message:?} cut at {cut} decoded"
            );
        }
    }
    for message in server_examples() {
        let mut body = Vec::new();
        message.encode_body(&mut body);
        for cut in 0..body.len() {
            let truncated = Bytes::copy_from_slice(&body[..cut]);
            assert!(ServerMessage::decode(&truncated).is_err());
        }
    }
}

#[test]
fn every_truncation_of_a_compressed_frame_is_a_typed_error() {
    let message = ClientMessage::Publish {
        id: 1,
        topic: "big".into(),
        payload: Payload::binary(&[b'x'; 4096]),
        ack: true,
    };
    let wire = message.encode_frame(&Compression::default());
    assert_eq!(wire[0], FLAG_DEFLATE);
    for cut in 0..wire.len() {
        let truncated = wire.slice(..cut);
        let result = frame::open(&truncated, MAX_INFLATED)
            .map_err(|error| error.to_string())
            .and_then(|body| ClientMessage::decode(&body).map_err(|error| error.to_string()));
        assert!(result.is_err(), "cut at {cut} decoded");
    }
}

#[test]
fn frames_with_unknown_flags_or_no_header_are_rejected() {
    assert_eq!(
        frame::open(&Bytes::new(), MAX_INFLATED),
        Err(DecodeError::EmptyFrame)
    );
    assert_eq!(
        frame::open(&Bytes::from_static(&[0x02, 0x80]), MAX_INFLATED),
        Err(DecodeError::UnknownFlags { flags: 0x02 })
    );
    assert!(matches!(
        frame::open(&Bytes::from_static(&[0x01, 0xff, 0xff, 0xff]), MAX_INFLATED),
        Err(DecodeError::Inflate { .. })
    ));
}

#[test]
fn bodies_that_are_not_our_messages_get_specific_errors() {
    let decode = |bytes: &[u8]| ClientMessage::decode(&Bytes::copy_from_slice(bytes)).unwrap_err();
    // Not a map: an array.
    assert_eq!(decode(&[0x91, 0x01]).error, DecodeError::NotAMap);
    // A map with an integer key.
    assert!(matches!(
        decode(&[0x81, 0x01, 0x02]).error,
        DecodeError::KeyNotString { .. }
    ));
    // The reserved marker 0xc1.
    assert!(matches!(
        decode(&[0xc1]).error,
        DecodeError::InvalidMarker { marker: 0xc1, .. }
    ));
    // Trailing bytes after the map.
    assert_eq!(
        decode(&[0x80, 0x00]).error,
        DecodeError::TrailingBytes { extra: 1 }
    );
    // Unknown type keeps the id for the error reply.
    let mut body = Vec::new();
    body.extend_from_slice(&[0x82, 0xa4, b't', b'y', b'p', b'e', 0xa3, b'z', b'a', b'p']);
    body.extend_from_slice(&[0xa2, b'i', b'd', 0x2a]);
    let error = decode(&body);
    assert_eq!(error.id, Some(42));
    assert_eq!(error.error, DecodeError::UnknownType { kind: "zap".into() });
    // Missing field keeps the id too.
    let mut body = Vec::new();
    body.extend_from_slice(&[0x82, 0xa4, b't', b'y', b'p', b'e', 0xa7]);
    body.extend_from_slice(b"publish");
    body.extend_from_slice(&[0xa2, b'i', b'd', 0x07]);
    let error = decode(&body);
    assert_eq!(error.id, Some(7));
    assert!(matches!(
        error.error,
        DecodeError::MissingField {
            field: "payload",
            ..
        }
    ));
    // Wrong type: id is a string.
    let mut body = Vec::new();
    body.extend_from_slice(&[
        0x82, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g',
    ]);
    body.extend_from_slice(&[0xa2, b'i', b'd', 0xa1, b'x']);
    assert!(matches!(
        decode(&body).error,
        DecodeError::WrongType { field: "id", .. }
    ));
    // Duplicate keys.
    let mut body = Vec::new();
    body.extend_from_slice(&[0x82, 0xa2, b'i', b'd', 0x01, 0xa2, b'i', b'd', 0x02]);
    assert!(matches!(
        decode(&body).error,
        DecodeError::DuplicateField { .. }
    ));
    // A key that is not UTF-8 (a lone continuation byte), after a valid
    // field: refused with where it starts, though no getter asks for it.
    let body = [
        0x82, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g', 0xa2, b'i', 0x80, 0x01,
    ];
    assert_eq!(decode(&body).error, DecodeError::InvalidUtf8 { offset: 11 });
    // A multi-byte UTF-8 key is a key like any other.
    let body = [
        0x83, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g', 0xa2, b'i', b'd', 0x07,
        0xa2, 0xc3, 0xa9, 0x01,
    ];
    assert_eq!(
        ClientMessage::decode(&Bytes::copy_from_slice(&body)).unwrap(),
        ClientMessage::Ping { id: 7 }
    );
}

#[test]
fn hostile_container_lengths_fail_without_allocating() {
    // A map that claims 2^32-1 entries, an array inside a payload that
    // claims 2^32-1 elements, and 100,000 levels of nesting.
    let decode = |bytes: Vec<u8>| ClientMessage::decode(&Bytes::from(bytes)).unwrap_err();
    assert!(matches!(
        decode(vec![0xdf, 0xff, 0xff, 0xff, 0xff]).error,
        DecodeError::WrongType { .. }
    ));
    let mut body = vec![0x81, 0xa7];
    body.extend_from_slice(b"payload");
    body.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
    assert!(matches!(decode(body).error, DecodeError::Truncated { .. }));
    let mut deep = vec![0x81, 0xa7];
    deep.extend_from_slice(b"payload");
    deep.extend(std::iter::repeat_n(0x91, 100_000));
    deep.push(0xc0);
    // A deeply nested but complete payload is accepted as opaque bytes; the
    // message then fails only for its missing fields.
    assert!(matches!(
        decode(deep).error,
        DecodeError::MissingField { .. }
    ));
}

#[test]
fn bodies_over_the_threshold_are_compressed_and_smaller_ones_are_not() {
    let compression = Compression {
        threshold: 100,
        level: 1,
    };
    let small = ClientMessage::Publish {
        id: 1,
        topic: "t".into(),
        payload: Payload::binary(&[b'a'; 50]),
        ack: true,
    }
    .encode_frame(&compression);
    assert_eq!(small[0], 0);
    let large = ClientMessage::Publish {
        id: 1,
        topic: "t".into(),
        payload: Payload::binary(&[b'a'; 500]),
        ack: true,
    }
    .encode_frame(&compression);
    assert_eq!(large[0], FLAG_DEFLATE);
    assert!(large.len() < 100);
}

#[test]
fn incompressible_bodies_are_sent_plain_even_over_the_threshold() {
    // A body that deflate cannot shrink: pseudo-random bytes.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut buf = FrameBuf::new();
    buf.body_mut().extend_from_slice(&noise);
    let sealed = buf.seal(&Compression {
        threshold: 0,
        level: 9,
    });
    assert_eq!(sealed[0], 0);
    assert_eq!(&sealed[1..], noise.as_slice());
}

#[test]
fn an_inflate_bomb_is_rejected_at_the_limit() {
    // 64 MiB of zeros deflates to about 64 KiB; the limit is 1 MiB.
    let mut buf = FrameBuf::new();
    buf.body_mut().extend(std::iter::repeat_n(0, 64 << 20));
    let bomb = buf.seal(&Compression {
        threshold: 0,
        level: 9,
    });
    assert_eq!(bomb[0], FLAG_DEFLATE);
    assert!(bomb.len() < 128 << 10);
    assert_eq!(
        frame::open(&bomb, MAX_INFLATED),
        Err(DecodeError::InflateLimit {
            limit: MAX_INFLATED
        })
    );
    // Exactly at the limit is accepted.
    let mut buf = FrameBuf::new();
    buf.body_mut().extend(std::iter::repeat_n(0, MAX_INFLATED));
    let at_limit = buf.seal(&Compression {
        threshold: 0,
        level: 1,
    });
    assert_eq!(
        frame::open(&at_limit, MAX_INFLATED).unwrap().len(),
        MAX_INFLATED
    );
}

#[test]
fn publish_payload_is_carried_byte_for_byte() {
    // A non-canonical encoding (the value 1 written as a uint32) must come
    // out exactly as it went in.
    let payload = Payload::from_msgpack(vec![0xce, 0, 0, 0, 1]).unwrap();
    let message = ClientMessage::Publish {
        id: 1,
        topic: "t".into(),
        payload: payload.clone(),
        ack: true,
    };
    let body = frame::open(&message.encode_frame(&Compression::OFF), MAX_INFLATED).unwrap();
    match ClientMessage::decode(&body).unwrap() {
        ClientMessage::Publish { payload: got, .. } => {
            assert_eq!(got.as_msgpack(), payload.as_msgpack())
        }
        other => panic!("decoded {other:?}"),
    }
}

#[test]
fn signed_integers_are_accepted_where_non_negative() {
    // {"type": "ping", "id": int8(5)}: some encoders always write signed.
    let body = [
        0x82, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g', 0xa2, b'i', b'd', 0xd0,
        0x05,
    ];
    assert_eq!(
        ClientMessage::decode(&Bytes::copy_from_slice(&body)).unwrap(),
        ClientMessage::Ping { id: 5 }
    );
    let negative = [
        0x82, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g', 0xa2, b'i', b'd', 0xff,
    ];
    assert!(ClientMessage::decode(&Bytes::copy_from_slice(&negative)).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let frame = Bytes::from(bytes.clone());
        if let Ok(body) = frame::open(&frame, 1 << 16) {
            let _ = ClientMessage::decode(&body);
            let _ = ServerMessage::decode(&body);
        }
        let raw = Bytes::from(bytes);
        let _ = ClientMessage::decode(&raw);
        let _ = ServerMessage::decode(&raw);
    }

    #[test]
    fn publish_round_trips_any_binary_payload(
        id in any::<u64>(),
        data in proptest::collection::vec(any::<u8>(), 0..3000),
        ack in any::<bool>(),
    ) {
        let message = ClientMessage::Publish {
            id,
            topic: "a.b".into(),
            payload: Payload::binary(&data),
            ack,
        };
        let body = frame::open(&message.encode_frame(&Compression::default()), 1 << 20).unwrap();
        prop_assert_eq!(ClientMessage::decode(&body).unwrap(), message);
    }
}

#[test]
fn a_body_with_position_slots_decodes_to_the_position_written_into_it() {
    use sockeye_protocol::{DeliveryRef, StreamPosition};
    let payload = Payload::binary(b"hello");
    let delivery = DeliveryRef {
        topic: "chat.lobby",
        epoch: 0,
        offset: 0,
        timestamp_ms: 1_700_000_000_000,
        publisher: "alice",
        payload: &payload,
    };
    let mut body = Vec::new();
    let slots = delivery.encode_body_with_position_slots(&mut body);
    let position = StreamPosition {
        epoch: (1 << 53) - 1,
        offset: 42,
    };
    slots.fill(&mut body, position);
    match ServerMessage::decode(&bytes::Bytes::from(body)).expect("a valid body") {
        ServerMessage::Message(decoded) => {
            assert_eq!(
                (decoded.epoch, decoded.offset),
                (position.epoch, position.offset)
            );
            assert_eq!(decoded.topic, "chat.lobby");
            assert_eq!(decoded.timestamp_ms, 1_700_000_000_000);
            assert_eq!(decoded.payload.as_binary(), Some(&b"hello"[..]));
        }
        other => panic!("not a message: {other:?}"),
    }
}

#[test]
fn encoded_len_bound_holds_the_widest_body() {
    use sockeye_protocol::DeliveryRef;
    // The widest numbers MessagePack writes (9 bytes each) and strings just
    // past each header width (fixstr 31, str 8 255, str 16 65,535 bytes).
    for text_len in [0, 31, 32, 255, 256, 65_535, 65_536] {
        let text = "t".repeat(text_len);
        let payload = Payload::binary(&vec![7; text_len]);
        let delivery = DeliveryRef {
            topic: &text,
            epoch: u64::MAX,
            offset: u64::MAX,
            timestamp_ms: u64::MAX,
            publisher: &text,
            payload: &payload,
        };
        let mut body = Vec::new();
        delivery.encode_body(&mut body);
        assert!(
            body.len() <= delivery.encoded_len_bound(),
            "{} > {} at {text_len}",
            body.len(),
            delivery.encoded_len_bound()
        );
        let mut slotted = Vec::new();
        delivery.encode_body_with_position_slots(&mut slotted);
        assert!(slotted.len() <= delivery.encoded_len_bound());
        // Tight: the smallest fixed part (one-byte string headers) is 83
        // bytes, so the bound is never more than 13 bytes over the body.
        assert!(
            delivery.encoded_len_bound() - body.len() <= 13,
            "{} - {} at {text_len}",
            delivery.encoded_len_bound(),
            body.len()
        );
    }
}
