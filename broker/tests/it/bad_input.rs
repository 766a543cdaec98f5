//! Hostile and broken input: each class gets its documented answer and the
//! broker keeps serving everyone else.

use bytes::Bytes;
use futures_util::SinkExt;
use sockeye_protocol::frame::{FLAG_DEFLATE, FrameBuf};
use sockeye_protocol::{ClientMessage, Compression, ErrorCode, Payload, ServerMessage};
use tokio_tungstenite::tungstenite::Message;

use sockeye_testkit::TestBroker;

fn expect_error(reply: ServerMessage, code: ErrorCode, id: Option<u64>) {
    match reply {
        ServerMessage::Error {
            code: got,
            id: got_id,
            message,
        } => {
            assert_eq!((got, got_id), (code, id), "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

/// After abuse, the broker still serves a fresh client end to end.
async fn still_serving(broker: &TestBroker) {
    let mut client = broker.client("healthy").await;
    client.subscribe("after.abuse", None).await;
    client.publish("after.abuse", Payload::binary(b"ok")).await;
    assert_eq!(client.delivery().await.topic, "after.abuse");
}

#[tokio::test]
async fn a_text_frame_closes_with_1003() {
    let broker = TestBroker::start().await;
    let mut client = broker.client("t").await;
    client
        .ws
        .send(Message::text("{\"type\":\"ping\"}"))
        .await
        .unwrap();
    let (code, reason) = client.closed().await;
    assert_eq!(code, 1003);
    assert!(reason.contains("binary"), "{reason}");
    still_serving(&broker).await;
}

#[tokio::test]
async fn undecodable_frames_get_malformed_frame_replies_and_the_connection_stays() {
    let broker = TestBroker::start().await;
    let mut client = broker.client("t").await;
    for garbage in [
        Bytes::new(),                                        // no header
        Bytes::from_static(&[0x04, 0x80]),                   // unknown flags
        Bytes::from_static(&[FLAG_DEFLATE, 0xff, 0x00]),     // corrupt deflate
        Bytes::from_static(&[0x00, 0x93, 0x01, 0x02, 0x03]), // an array, not a map
        Bytes::from_static(&[0x00, 0x81, 0xa1]),             // truncated
        Bytes::from_static(&[0x00, 0xc1]),                   // reserved marker
    ] {
        client.send_raw(garbage).await;
        expect_error(client.recv().await, ErrorCode::MalformedFrame, None);
    }
    let id = client.next_id();
    client.send(&ClientMessage::Ping { id }).await;
    assert_eq!(client.recv().await, ServerMessage::Pong { id });
}

#[tokio::test]
async fn unknown_kinds_and_missing_fields_keep_the_request_id() {
    let broker = TestBroker::start().await;
    let mut client = broker.client("t").await;
    // {"type": "teleport", "id": 42}
    let mut frame = FrameBuf::new();
    frame.body_mut().extend_from_slice(&[0x82, 0xa4]);
    frame.body_mut().extend_from_slice(b"type");
    frame.body_mut().push(0xa8);
    frame.body_mut().extend_from_slice(b"teleport");
    frame.body_mut().extend_from_slice(&[0xa2, b'i', b'd', 42]);
    client.send_raw(frame.seal(&Compression::OFF)).await;
    expect_error(client.recv().await, ErrorCode::UnknownType, Some(42));
    // {"type": "publish", "id": 43}: no topic, no payload.
    let mut frame = FrameBuf::new();
    frame.body_mut().extend_from_slice(&[0x82, 0xa4]);
    frame.body_mut().extend_from_slice(b"type");
    frame.body_mut().push(0xa7);
    frame.body_mut().extend_from_slice(b"publish");
    frame.body_mut().extend_from_slice(&[0xa2, b'i', b'd', 43]);
    client.send_raw(frame.seal(&Compression::OFF)).await;
    expect_error(client.recv().await, ErrorCode::BadRequest, Some(43));
}

#[tokio::test]
async fn bad_topics_get_invalid_topic() {
    let broker = TestBroker::start().await;
    let mut client = broker.client("t").await;
    for topic in ["", "a..b", "a b", "wild.*", &"x".repeat(300)] {
        let id = client.next_id();
        let reply = client
            .request(ClientMessage::Publish {
                id,
                topic: topic.to_owned(),
                payload: Payload::binary(b"x"),
                ack: true,
            })
            .await;
        expect_error(reply, ErrorCode::InvalidTopic, Some(id));
    }
}

#[tokio::test]
async fn an_oversize_frame_closes_with_1009() {
    let broker = TestBroker::start_with(|config| {
        config.limits.max_frame_size = bytesize::ByteSize::kib(64);
    })
    .await;
    let mut client = broker.client("t").await;
    let id = client.next_id();
    let frame = ClientMessage::Publish {
        id,
        topic: "big".into(),
        payload: Payload::binary(&vec![7u8; 200 * 1024]),
        ack: true,
    }
    .encode_frame(&Compression::OFF);
    // The broker may close before reading all of it; the send may fail.
    let _ = client.ws.send(Message::Binary(frame)).await;
    let (code, _) = client.closed().await;
    assert_eq!(code, 1009);
    still_serving(&broker).await;
}

#[tokio::test]
async fn an_inflate_bomb_closes_with_1009() {
    let broker = TestBroker::start().await;
    let mut client = broker.client("t").await;
    // 64 MiB of zeros compresses to about 64 KiB; the inflate limit is 4 MiB.
    let mut bomb = FrameBuf::new();
    bomb.body_mut().extend(std::iter::repeat_n(0u8, 64 << 20));
    let bomb = bomb.seal(&Compression {
        threshold: 0,
        level: 9,
    });
    assert!(bomb.len() < 1 << 20);
    client.send_raw(bomb).await;
    let (code, reason) = client.closed().await;
    assert_eq!(code, 1009);
    assert!(reason.contains("inflates"), "{reason}");
    still_serving(&broker).await;
}

#[tokio::test]
async fn an_8_mib_frame_against_the_1_mib_limit_gets_1009_not_a_reset() {
    let broker = TestBroker::start().await;
    assert_eq!(
        broker.broker.config().limits.max_frame_size,
        bytesize::ByteSize::mib(1)
    );
    let frame = ClientMessage::Publish {
        id: 1,
        topic: "big".into(),
        payload: Payload::binary(&vec![7u8; 8 << 20]),
        ack: true,
    }
    .encode_frame(&Compression::OFF);
    // Every time, not usually: the broker keeps reading (and discarding)
    // what the client still sends, so no reset overtakes the close frame.
    for round in 0..5 {
        let mut client = broker.client("big").await;
        client
            .ws
            .send(Message::Binary(frame.clone()))
            .await
            .unwrap_or_else(|err| panic!("round {round}: the send failed: {err}"));
        let (code, reason) = client.closed().await;
        assert_eq!(code, 1009, "round {round}: {reason}");
        assert!(reason.contains("too large"), "{reason}");
    }
    still_serving(&broker).await;
}

#[tokio::test]
async fn a_client_that_never_stops_sending_after_1009_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let broker = TestBroker::start().await;
    let token = broker.token("flood");
    let mut tcp = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {token}\r\n\r\n",
        broker.addr
    );
    tcp.write_all(upgrade.as_bytes()).await.unwrap();
    // The 101 response and the welcome frame.
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    while !received.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = tokio::time::timeout(sockeye_testkit::WAIT, tcp.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(read > 0, "the handshake was answered");
        received.extend_from_slice(&buffer[..read]);
    }
    assert!(received.starts_with(b"HTTP/1.1 101"));
    // A masked binary frame header announcing 1 GiB, then bytes for ever.
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    tcp.write_all(&header).await.unwrap();
    let (mut reader, mut writer) = tcp.into_split();
    let flood = tokio::spawn(async move {
        let chunk = vec![0x5a; 64 * 1024];
        while writer.write_all(&chunk).await.is_ok() {}
    });
    // The broker answers with a close frame carrying 1009, then ends the
    // connection although the client never stops: it drains for a bounded
    // time only.
    let mut after_handshake = Vec::new();
    let ended = tokio::time::timeout(sockeye_testkit::WAIT, async {
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => after_handshake.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the broker stopped draining in time");
    flood.await.unwrap();
    let code = 1009u16.to_be_bytes();
    assert!(
        after_handshake
            .windows(4)
            .any(|window| window[0] == 0x88 && window[2..4] == code),
        "a close frame with 1009 arrived: {:02x?}",
        &after_handshake[after_handshake.len().saturating_sub(64)..]
    );
    still_serving(&broker).await;
}
