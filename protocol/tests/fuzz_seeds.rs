//! The fuzzers' seed corpus (`protocol/fuzz/seeds/`) is generated from the
//! codec and the golden examples in docs/protocol.md; this test checks that
//! the committed files are exactly what the codec produces today, so the
//! seeds stay valid messages as the protocol evolves.
//!
//! After a protocol change, rewrite them with
//! `SOCKEYE_BLESS_SEEDS=1 cargo test -p sockeye-protocol --test fuzz_seeds`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sockeye_protocol::frame::{self, FLAG_DEFLATE, FrameBuf};
use sockeye_protocol::{
    ClientMessage, Compression, Delivery, ErrorCode, Limits, OffsetRange, Payload, Position,
    ServerMessage, Subscribed, Welcome,
};

/// Compress whenever it makes the frame smaller.
const DEFLATE: Compression = Compression {
    threshold: 0,
    level: 9,
};

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")
}

/// Every hex block marked `<!-- golden: NAME -->` in the spec, by name.
fn golden_frames() -> Vec<(String, Vec<u8>)> {
    let spec = include_str!("../../docs/protocol.md");
    let marker = "<!-- golden: ";
    let mut out = Vec::new();
    let mut rest = spec;
    while let Some(start) = rest.find(marker) {
        let after = &rest[start + marker.len()..];
        let name = &after[..after.find(" -->").expect("golden marker is closed")];
        let open = after.find("```hex").expect("golden marker has a hex block") + 6;
        let close = after[open..].find("```").expect("hex block is closed") + open;
        let bytes = after[open..close]
            .split_whitespace()
            .map(|pair| u8::from_str_radix(pair, 16).expect("hex byte"))
            .collect();
        out.push((name.to_owned(), bytes));
        rest = &after[close..];
    }
    assert!(out.len() >= 6, "the spec's golden examples were found");
    out
}

fn client_messages() -> Vec<(&'static str, ClientMessage)> {
    vec![
        (
            "subscribe-live",
            ClientMessage::Subscribe {
                id: 1,
                topic: "chat.*".into(),
                position: None,
            },
        ),
        (
            "subscribe-after",
            ClientMessage::Subscribe {
                id: 2,
                topic: "chat.lobby".into(),
                position: Some(Position::After {
                    epoch: 1_767_225_600_000,
                    offset: 41,
                }),
            },
        ),
        (
            "subscribe-oldest",
            ClientMessage::Subscribe {
                id: 3,
                topic: "chat.lobby".into(),
                position: Some(Position::Oldest),
            },
        ),
        (
            "subscribe-last",
            ClientMessage::Subscribe {
                id: 4,
                topic: "chat.>".into(),
                position: Some(Position::Last { count: 10 }),
            },
        ),
        (
            "unsubscribe",
            ClientMessage::Unsubscribe {
                id: 5,
                topic: "chat.*".into(),
            },
        ),
        (
            "publish-map",
            ClientMessage::Publish {
                id: 6,
                topic: "chat.lobby".into(),
                // {"text": "hi", "n": [1, -1, 1.5]}
                payload: Payload::from_msgpack(vec![
                    0x82, 0xa4, b't', b'e', b'x', b't', 0xa2, b'h', b'i', 0xa1, b'n', 0x93, 0x01,
                    0xff, 0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0,
                ])
                .unwrap(),
                ack: true,
            },
        ),
        (
            "publish-noack",
            ClientMessage::Publish {
                id: u64::MAX,
                topic: "metrics.cpu".into(),
                payload: Payload::binary(&[0, 1, 2, 3]),
                ack: false,
            },
        ),
        ("ping", ClientMessage::Ping { id: 8 }),
        (
            "refresh",
            ClientMessage::Refresh {
                id: 9,
                token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln".into(),
            },
        ),
    ]
}

/// A publish large and repetitive enough that deflate pays off.
fn large_publish() -> ClientMessage {
    ClientMessage::Publish {
        id: 10,
        topic: "logs.app".into(),
        payload: Payload::binary(&b"level=info msg=ok ".repeat(40)),
        ack: true,
    }
}

fn server_messages() -> Vec<(&'static str, ServerMessage)> {
    let limits = Limits {
        max_frame_bytes: 1 << 20,
        max_inflated_bytes: 4 << 20,
        compression_threshold_bytes: 1024,
        max_topic_bytes: 255,
        max_subscriptions: 256,
        publish_rate_per_sec: 50_000,
        publish_burst: 100_000,
    };
    vec![
        (
            "welcome",
            ServerMessage::Welcome(Welcome {
                connection_id: 1,
                version: 1,
                subject: "alice".into(),
                heartbeat_interval_ms: 20_000,
                heartbeat_timeout_ms: 60_000,
                token_expires_at: Some(1_767_225_600_000),
                limits,
            }),
        ),
        (
            "subscribed",
            ServerMessage::Subscribed(Subscribed {
                id: 2,
                topic: "chat.lobby".into(),
                stored: true,
                epoch: 1_767_225_600_000,
                last_offset: 50,
                next_offset: 45,
                complete: false,
                gap: Some(OffsetRange { from: 42, to: 44 }),
                epoch_changed: true,
            }),
        ),
        (
            "unsubscribed",
            ServerMessage::Unsubscribed {
                id: 5,
                topic: "chat.*".into(),
            },
        ),
        (
            "published",
            ServerMessage::Published {
                id: 6,
                epoch: 1_767_225_600_000,
                offset: 51,
            },
        ),
        ("pong", ServerMessage::Pong { id: 8 }),
        (
            "refreshed",
            ServerMessage::Refreshed {
                id: 9,
                expires_at: Some(1_767_229_200_000),
            },
        ),
        (
            "error-no-id",
            ServerMessage::Error {
                id: None,
                code: ErrorCode::MalformedFrame,
                message: "not a map".into(),
            },
        ),
        (
            "message",
            ServerMessage::Message(Delivery {
                topic: "chat.lobby".into(),
                epoch: 1_767_225_600_000,
                offset: 51,
                timestamp_ms: 1_767_225_600_123,
                publisher: "alice".into(),
                payload: Payload::binary(b"hi"),
            }),
        ),
        (
            "token-expiring",
            ServerMessage::TokenExpiring {
                expires_at: 1_767_225_600_000,
            },
        ),
        (
            "gap",
            ServerMessage::Gap {
                topic: "chat.lobby".into(),
                epoch: 7,
                range: OffsetRange { from: 3, to: 9 },
            },
        ),
        (
            "reset",
            ServerMessage::Reset {
                topic: "chat.lobby".into(),
                epoch: 8,
            },
        ),
    ]
}

/// Bodies that are not valid messages but reach deep into the reader:
/// each is the shortest form of one error path.
fn hostile_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let mut deep = vec![
        0x82, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g',
    ];
    deep.extend_from_slice(&[0xa7, b'p', b'a', b'y', b'l', b'o', b'a', b'd']);
    deep.extend(std::iter::repeat_n(0x91, 200));
    deep.push(0xc0);
    let mut signed = vec![
        0x82, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g',
    ];
    signed.extend_from_slice(&[0xa2, b'i', b'd', 0xd3, 0, 0, 0, 0, 0, 0, 0, 7]);
    let mut negative = vec![
        0x82, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g',
    ];
    negative.extend_from_slice(&[0xa2, b'i', b'd', 0xd0, 0x80]);
    vec![
        ("not-a-map", vec![0x91, 0x01]),
        ("huge-map", vec![0xdf, 0xff, 0xff, 0xff, 0xff]),
        ("huge-array-payload", {
            let mut body = vec![0x81, 0xa7];
            body.extend_from_slice(b"payload");
            body.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
            body
        }),
        ("deep-payload", deep),
        (
            "duplicate-key",
            vec![0x82, 0xa2, b'i', b'd', 0x01, 0xa2, b'i', b'd', 0x02],
        ),
        ("bad-utf8-key", vec![0x81, 0xa2, 0xc3, 0x28, 0x01]),
        ("signed-id", signed),
        ("negative-id", negative),
    ]
}

/// The whole seed corpus: `frames/` for the frame decoder (header included),
/// `bodies/` for the parser and round-trip targets.
fn corpus() -> BTreeMap<String, Vec<u8>> {
    let mut corpus = BTreeMap::new();
    let mut add_message = |name: String, frame: Bytes, deflate: Bytes| {
        let body = frame::open(&frame, usize::MAX).unwrap();
        corpus.insert(format!("bodies/{name}"), body.to_vec());
        corpus.insert(format!("frames/{name}"), frame.to_vec());
        if deflate[0] == FLAG_DEFLATE {
            corpus.insert(format!("frames/{name}.deflate"), deflate.to_vec());
        }
    };
    for (name, message) in client_messages() {
        add_message(
            format!("client-{name}"),
            message.encode_frame(&Compression::OFF),
            message.encode_frame(&DEFLATE),
        );
    }
    let large = large_publish();
    let deflated = large.encode_frame(&DEFLATE);
    assert_eq!(deflated[0], FLAG_DEFLATE, "the large publish compresses");
    add_message(
        "client-publish-large".into(),
        large.encode_frame(&Compression::OFF),
        deflated,
    );
    for (name, message) in server_messages() {
        add_message(
            format!("server-{name}"),
            message.encode_frame(&Compression::OFF),
            message.encode_frame(&DEFLATE),
        );
    }
    for (name, frame) in golden_frames() {
        corpus.insert(format!("frames/golden-{name}"), frame);
    }
    for (name, body) in hostile_bodies() {
        corpus.insert(format!("bodies/hostile-{name}"), body.clone());
        let mut frame = vec![0];
        frame.extend_from_slice(&body);
        corpus.insert(format!("frames/hostile-{name}"), frame);
    }
    // Frame-level hostility: 1 MiB of zeros deflated (an inflate bomb of
    // about 1 KiB), a truncated deflate stream, reserved flags, no header.
    let mut bomb = FrameBuf::new();
    bomb.body_mut().extend(std::iter::repeat_n(0, 1 << 20));
    let bomb = bomb.seal(&DEFLATE);
    assert_eq!(bomb[0], FLAG_DEFLATE);
    corpus.insert("frames/hostile-inflate-bomb".into(), bomb.to_vec());
    corpus.insert(
        "frames/hostile-deflate-truncated".into(),
        deflated_prefix(&large_publish()),
    );
    corpus.insert("frames/hostile-reserved-flags".into(), vec![0x02, 0x80]);
    corpus.insert("frames/hostile-empty".into(), Vec::new());
    corpus
}

fn deflated_prefix(message: &ClientMessage) -> Vec<u8> {
    let frame = message.encode_frame(&DEFLATE);
    frame[..frame.len() / 2].to_vec()
}

fn committed() -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for dir in ["frames", "bodies"] {
        let Ok(entries) = std::fs::read_dir(seeds_dir().join(dir)) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            files.insert(
                format!("{dir}/{name}"),
                std::fs::read(entry.path()).unwrap(),
            );
        }
    }
    files
}

#[test]
fn committed_fuzz_seeds_are_what_the_codec_produces() {
    let corpus = corpus();
    if std::env::var_os("SOCKEYE_BLESS_SEEDS").is_some() {
        for dir in ["frames", "bodies"] {
            let path = seeds_dir().join(dir);
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
        }
        for (name, bytes) in &corpus {
            std::fs::write(seeds_dir().join(name), bytes).unwrap();
        }
    }
    let committed = committed();
    let stale: Vec<&String> = corpus
        .keys()
        .filter(|name| committed.get(*name) != corpus.get(*name))
        .chain(committed.keys().filter(|name| !corpus.contains_key(*name)))
        .collect();
    assert!(
        stale.is_empty(),
        "fuzz seeds differ from the codec's output: {stale:?}; rewrite them with \
         SOCKEYE_BLESS_SEEDS=1 cargo test -p sockeye-protocol --test fuzz_seeds"
    );
}

#[test]
fn every_message_seed_decodes_and_every_hostile_seed_is_rejected() {
    for (name, bytes) in corpus() {
        let hostile = name.contains("hostile-");
        let decoded = if let Some(frame) = name.strip_prefix("frames/").map(|_| &bytes) {
            frame::open(&Bytes::from(frame.clone()), 4 << 20).and_then(|body| {
                ClientMessage::decode(&body)
                    .map(|_| ())
                    .or_else(|_| ServerMessage::decode(&body).map(|_| ()))
            })
        } else {
            let body = Bytes::from(bytes.clone());
            ClientMessage::decode(&body)
                .map(|_| ())
                .or_else(|_| ServerMessage::decode(&body).map(|_| ()))
        };
        // One hostile seed is valid on purpose: a ping whose id is written as
        // a signed integer (the spec allows it for non-negative values).
        let valid_on_purpose = name.ends_with("hostile-signed-id");
        assert_eq!(
            decoded.is_ok(),
            !hostile || valid_on_purpose,
            "seed {name}: {decoded:?}"
        );
    }
}
