//! A lean WebSocket client (RFC 6455) for the load generator: the opening
//! handshake, masked binary frames out, and frames parsed in place from one
//! reused buffer per connection.
//!
//! The generator receives as many frames as the target sends, on a machine
//! it shares with the target: every instruction it spends per frame is one
//! the target cannot use. A general-purpose WebSocket stack allocates or
//! reference-counts each message, zero-fills its read buffer before every
//! read and registers wakers on every poll; at millions of deliveries per
//! second that was about half of the generator's instructions (see
//! docs/benchmarks.md, "The load generator"). Here a frame is a range of the
//! read buffer, handed to the caller as a slice, and the buffer is filled
//! once when allocated.
//!
//! Scope: what the targets use. Binary and text data frames (fragmented ones
//! reassembled), ping (answered with pong), pong, close (answered). No
//! extensions are offered, so a frame with RSV bits set is an error, as is a
//! masked frame from the server.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Largest HTTP response head accepted during the handshake.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Largest HTTP error body kept for the error message.
const MAX_ERROR_BODY: usize = 4 * 1024;

/// Largest control frame payload (RFC 6455, 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xa;

/// What can go wrong on a connection.
#[derive(Debug)]
pub(crate) enum WsError {
    /// The socket failed.
    Io(io::Error),
    /// The server answered the upgrade with another status than 101.
    Refused {
        /// Status code and reason phrase, e.g. `401 Unauthorized`.
        status: String,
        /// The start of the response body.
        body: String,
    },
    /// The server broke the protocol (a bad response head or frame).
    Protocol(String),
    /// The server closed the connection with a close frame.
    Closed {
        /// The close code, if the frame had one.
        code: Option<u16>,
        /// The close reason.
        reason: String,
    },
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WsError::Io(err) => write!(f, "{err}"),
            WsError::Refused { status, body } => {
                write!(f, "handshake refused: HTTP {status} {body}")
            }
            WsError::Protocol(what) => write!(f, "WebSocket protocol error: {what}"),
            WsError::Closed { code, reason } => match code {
                Some(code) => write!(f, "the target closed the connection: {code} {reason}"),
                None => write!(f, "the target closed the connection: without a code"),
            },
        }
    }
}

impl std::error::Error for WsError {}

impl From<io::Error> for WsError {
    fn from(err: io::Error) -> Self {
        WsError::Io(err)
    }
}

fn protocol(what: impl Into<String>) -> WsError {
    WsError::Protocol(what.into())
}

/// Buffer sizes and limits of one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WsConfig {
    /// Bytes read from the socket at most per read (the buffer grows beyond
    /// it only for a frame that does not fit).
    pub(crate) read_buffer: usize,
    /// Outgoing bytes gathered by [`WsStream::feed`] before they are
    /// written; 0 writes every frame at once.
    pub(crate) write_buffer: usize,
    /// Largest message accepted (a whole reassembled message).
    pub(crate) max_message: usize,
}

/// The header lines of the upgrade request beyond the required ones.
pub(crate) type ExtraHeaders<'a> = &'a [(&'a str, &'a str)];

/// Where a received message is: in the read buffer, or reassembled from
/// fragments.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Located {
    Buffer(std::ops::Range<usize>),
    Assembled,
}

/// One open connection, client side.
#[derive(Debug)]
pub(crate) struct WsStream {
    stream: TcpStream,
    config: WsConfig,
    /// Received bytes; `buf[start..end]` is not parsed yet. Its length is
    /// its capacity: filled with zeros once, when allocated.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes the frame being parsed needs in all (header and payload).
    needed: usize,
    /// A fragmented message: the data so far (text and binary are both
    /// handed on as bytes, so its opcode is not kept).
    partial: Option<Vec<u8>>,
    /// The last message reassembled from fragments.
    assembled: Vec<u8>,
    /// Outgoing bytes; `out[written..]` is not written yet.
    out: Vec<u8>,
    written: usize,
    /// Masking keys come from this xorshift state.
    mask_state: u32,
    /// A close frame was sent.
    close_sent: bool,
}

impl WsStream {
    /// Performs the opening handshake on a connected socket: `GET
    /// path_and_query` with `host` and the extra header lines.
    pub(crate) async fn handshake(
        mut stream: TcpStream,
        host: &str,
        path_and_query: &str,
        extra: ExtraHeaders<'_>,
        config: WsConfig,
    ) -> Result<Self, WsError> {
        let key = generate_key();
        let mut request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (name, value) in extra {
            request.push_str(name);
            request.push_str(": ");
            request.push_str(value);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;

        let mut head = Vec::with_capacity(1024);
        let head_end = loop {
            if let Some(at) = memchr::memmem::find(&head, b"\r\n\r\n") {
                break at + 4;
            }
            if head.len() >= MAX_RESPONSE_HEAD {
                return Err(protocol("the upgrade response head is too long"));
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(protocol(
                    "the server closed the connection during the handshake",
                ));
            }
            head.extend_from_slice(&chunk[..n]);
        };
        let text = String::from_utf8_lossy(&head[..head_end]).into_owned();
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .ok_or_else(|| protocol(format!("not an HTTP response: {status_line:?}")))?
            .to_owned();
        let header = |name: &str| -> Option<&str> {
            text.split("\r\n").skip(1).find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then_some(value.trim())
            })
        };
        if !status.starts_with("101") {
            let length: usize = header("content-length")
                .and_then(|value| value.parse().ok())
                .unwrap_or(0)
                .min(MAX_ERROR_BODY);
            let mut body = head[head_end..].to_vec();
            while body.len() < length {
                let mut chunk = [0u8; 1024];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                }
            }
            body.truncate(if length > 0 {
                length
            } else {
                body.len().min(MAX_ERROR_BODY)
            });
            return Err(WsError::Refused {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let upgrade = header("upgrade").unwrap_or_default();
        if !upgrade.eq_ignore_ascii_case("websocket") {
            return Err(protocol(format!(
                "101 without Upgrade: websocket ({upgrade:?})"
            )));
        }
        let accept = header("sec-websocket-accept").unwrap_or_default();
        if accept != derive_accept_key(key.as_bytes()) {
            return Err(protocol("Sec-WebSocket-Accept does not match the key"));
        }
        // What followed the head is the first frames.
        let leftover = &head[head_end..];
        let mut buf = vec![0u8; config.read_buffer.max(leftover.len()).max(256)];
        buf[..leftover.len()].copy_from_slice(leftover);
        let seed = key.bytes().fold(0x9e37_79b9u32, |acc, byte| {
            acc.rotate_left(5) ^ u32::from(byte)
        });
        Ok(Self {
            stream,
            config,
            end: leftover.len(),
            buf,
            start: 0,
            needed: 0,
            partial: None,
            assembled: Vec::new(),
            out: Vec::new(),
            written: 0,
            mask_state: seed | 1,
            close_sent: false,
        })
    }

    /// The next data message's payload, or `None` once the server ended the
    /// stream without a close frame. Pings are answered; a close frame is
    /// answered and returned as [`WsError::Closed`]. Cancel-safe: if the
    /// future is dropped, nothing received is lost.
    pub(crate) async fn next(&mut self) -> Result<Option<&[u8]>, WsError> {
        let located = loop {
            if let Some(located) = self.parse()? {
                break located;
            }
            if !self.fill().await? {
                return Ok(None);
            }
        };
        Ok(Some(self.message(located)))
    }

    /// The next data message already received, without reading the socket:
    /// `None` when the buffer holds no complete message.
    pub(crate) fn next_buffered(&mut self) -> Result<Option<&[u8]>, WsError> {
        Ok(self.parse()?.map(|located| self.message(located)))
    }

    fn message(&self, located: Located) -> &[u8] {
        match located {
            Located::Buffer(range) => &self.buf[range],
            Located::Assembled => &self.assembled,
        }
    }

    /// Parses frames from the buffer until a data message is complete.
    fn parse(&mut self) -> Result<Option<Located>, WsError> {
        loop {
            let available = &self.buf[self.start..self.end];
            if available.len() < 2 {
                self.needed = 2;
                return Ok(None);
            }
            let first = available[0];
            let second = available[1];
            if second & 0x80 != 0 {
                return Err(protocol("a masked frame from the server"));
            }
            if first & 0x70 != 0 {
                return Err(protocol(
                    "a frame with RSV bits set (no extension was negotiated)",
                ));
            }
            let (header_len, length) = match second & 0x7f {
                126 => match available.get(2..4) {
                    Some(bytes) => (4, u64::from(u16::from_be_bytes([bytes[0], bytes[1]]))),
                    None => {
                        self.needed = 4;
                        return Ok(None);
                    }
                },
                127 => match available.get(2..10) {
                    Some(bytes) => {
                        let mut be = [0u8; 8];
                        be.copy_from_slice(bytes);
                        (10, u64::from_be_bytes(be))
                    }
                    None => {
                        self.needed = 10;
                        return Ok(None);
                    }
                },
                short => (2, u64::from(short)),
            };
            let length = usize::try_from(length)
                .ok()
                .filter(|length| *length <= self.config.max_message)
                .ok_or_else(|| protocol(format!("a frame of {length} bytes")))?;
            let total = header_len + length;
            if available.len() < total {
                self.needed = total;
                return Ok(None);
            }
            let payload = self.start + header_len..self.start + total;
            self.start += total;
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
            let fin = first & 0x80 != 0;
            let opcode = first & 0x0f;
            match opcode {
                OP_BINARY | OP_TEXT => {
                    if self.partial.is_some() {
                        return Err(protocol("a new message inside a fragmented one"));
                    }
                    if fin {
                        // The range stays valid: the buffer moves only in fill().
                        return Ok(Some(Located::Buffer(payload)));
                    }
                    self.partial = Some(self.buf[payload].to_vec());
                }
                OP_CONTINUATION => {
                    let Some(data) = self.partial.as_mut() else {
                        return Err(protocol("a continuation frame without a message"));
                    };
                    if data.len() + length > self.config.max_message {
                        return Err(protocol("a fragmented message over the size limit"));
                    }
                    data.extend_from_slice(&self.buf[payload]);
                    if fin {
                        self.assembled = self.partial.take().expect("checked above");
                        return Ok(Some(Located::Assembled));
                    }
                }
                OP_PING => {
                    if !fin || length > MAX_CONTROL_PAYLOAD {
                        return Err(protocol("a fragmented or oversized ping"));
                    }
                    let data = self.buf[payload].to_vec();
                    self.queue(OP_PONG, &data);
                }
                OP_PONG => {}
                OP_CLOSE => {
                    let data = &self.buf[payload];
                    let (code, reason) = match data {
                        [high, low, reason @ ..] => (
                            Some(u16::from_be_bytes([*high, *low])),
                            String::from_utf8_lossy(reason).into_owned(),
                        ),
                        _ => (None, String::new()),
                    };
                    if !self.close_sent {
                        // Echo the code, as RFC 6455 5.5.1 asks; best effort.
                        let echo: Vec<u8> = data.iter().take(2).copied().collect();
                        self.queue(OP_CLOSE, &echo);
                        self.close_sent = true;
                    }
                    return Err(WsError::Closed { code, reason });
                }
                other => return Err(protocol(format!("a frame with opcode {other:#x}"))),
            }
        }
    }

    /// Writes what is queued (pongs), then reads more bytes; `false` at the
    /// end of the stream.
    async fn fill(&mut self) -> Result<bool, WsError> {
        if self.written < self.out.len() {
            self.flush().await?;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let needed = self.needed.max(1);
        if self.buf.len() - self.start < needed || self.end == self.buf.len() {
            // Move the unparsed tail to the front, and grow for a frame
            // larger than the buffer.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < needed {
                let grown = needed.max(self.buf.len() * 2);
                self.buf.resize(grown, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// Appends one masked frame to the outgoing bytes.
    fn queue(&mut self, opcode: u8, payload: &[u8]) {
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        }
        self.out.push(0x80 | opcode);
        let length = payload.len();
        if length < 126 {
            self.out.push(0x80 | length as u8);
        } else if let Ok(short) = u16::try_from(length) {
            self.out.push(0x80 | 126);
            self.out.extend_from_slice(&short.to_be_bytes());
        } else {
            self.out.push(0x80 | 127);
            self.out.extend_from_slice(&(length as u64).to_be_bytes());
        }
        // xorshift32: a new masking key per frame.
        let mut state = self.mask_state;
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        self.mask_state = state;
        let key = state.to_ne_bytes();
        self.out.extend_from_slice(&key);
        let at = self.out.len();
        self.out.extend_from_slice(payload);
        apply_mask(&mut self.out[at..], key);
    }

    /// Queues a binary message; writes when a write buffer's worth is queued.
    pub(crate) async fn feed(&mut self, payload: &[u8]) -> Result<(), WsError> {
        self.queue(OP_BINARY, payload);
        if self.out.len() - self.written >= self.config.write_buffer {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes one binary message now (and whatever was queued before it).
    pub(crate) async fn send(&mut self, payload: &[u8]) -> Result<(), WsError> {
        self.queue(OP_BINARY, payload);
        self.flush().await
    }

    /// Writes everything queued. Cancel-safe: what was written is not
    /// written again.
    pub(crate) async fn flush(&mut self) -> Result<(), WsError> {
        while self.written < self.out.len() {
            let n = self.stream.write(&self.out[self.written..]).await?;
            if n == 0 {
                return Err(WsError::Io(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.out.clear();
        self.written = 0;
        Ok(())
    }

    /// Sends a close frame (1000) and waits, at most `linger`, for the
    /// server's close or the end of the stream.
    pub(crate) async fn close(mut self, linger: Duration) {
        if !self.close_sent {
            self.queue(OP_CLOSE, &1000u16.to_be_bytes());
            self.close_sent = true;
        }
        let _ = tokio::time::timeout(linger, async {
            if self.flush().await.is_err() {
                return;
            }
            while let Ok(Some(_)) = self.next().await {}
        })
        .await;
    }
}

/// XORs `data` with the 4-byte masking `key`, eight bytes at a time.
fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (index, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[index % 4];
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

    use super::*;

    const CONFIG: WsConfig = WsConfig {
        read_buffer: 1024,
        write_buffer: 4096,
        max_message: 1 << 20,
    };

    /// A tokio-tungstenite server on a free loopback port, running `serve`
    /// on its one connection, and a client connected to it.
    async fn pair<F, Fut>(serve: F) -> (WsStream, tokio::task::JoinHandle<()>)
    where
        F: FnOnce(tokio_tungstenite::WebSocketStream<TcpStream>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            serve(ws).await;
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let client = WsStream::handshake(stream, &addr.to_string(), "/ws?x=1", &[], CONFIG)
            .await
            .unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn receives_small_large_and_fragmented_messages_in_order() {
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let expected = big.clone();
        let (mut client, server) = pair(move |mut ws| async move {
            // Sent at once after the handshake: some arrive with its response.
            ws.send(Message::binary(b"first".to_vec())).await.unwrap();
            ws.send(Message::binary(big)).await.unwrap();
            ws.send(Message::Frame(Frame::message(
                b"frag".to_vec(),
                OpCode::Data(Data::Binary),
                false,
            )))
            .await
            .unwrap();
            ws.send(Message::Frame(Frame::message(
                b"ment".to_vec(),
                OpCode::Data(Data::Continue),
                true,
            )))
            .await
            .unwrap();
            ws.send(Message::text("last")).await.unwrap();
            // Wait for the client's close.
            while let Some(Ok(message)) = ws.next().await {
                if message.is_close() {
                    break;
                }
            }
        })
        .await;
        assert_eq!(client.next().await.unwrap(), Some(&b"first"[..]));
        assert_eq!(
            client.next().await.unwrap().map(<[u8]>::to_vec),
            Some(expected)
        );
        assert_eq!(client.next().await.unwrap(), Some(&b"fragment"[..]));
        assert_eq!(client.next().await.unwrap(), Some(&b"last"[..]));
        assert!(client.next_buffered().unwrap().is_none());
        client.close(Duration::from_secs(5)).await;
        server.await.unwrap();
    }

    #[tokio::test]
    async fn sends_masked_messages_of_every_length_form_and_answers_pings() {
        let sizes = [0usize, 1, 7, 8, 125, 126, 1000, 65_535, 65_536, 100_003];
        let (mut client, server) = pair(move |mut ws| async move {
            ws.send(Message::Ping(b"are you there".to_vec().into()))
                .await
                .unwrap();
            let mut pong = false;
            let mut received = Vec::new();
            while received.len() < sizes.len() {
                match ws.next().await.unwrap().unwrap() {
                    Message::Pong(data) => {
                        assert_eq!(&data[..], b"are you there");
                        pong = true;
                    }
                    Message::Binary(data) => received.push(data.to_vec()),
                    other => panic!("{other:?}"),
                }
            }
            assert!(pong, "no pong");
            for (data, size) in received.iter().zip(sizes) {
                assert_eq!(data.len(), size);
                assert!(data.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
            }
            ws.send(Message::binary(b"done".to_vec())).await.unwrap();
        })
        .await;
        client.send(b"").await.unwrap();
        for (index, size) in sizes.iter().enumerate().skip(1) {
            let data: Vec<u8> = (0..*size).map(|i| (i % 251) as u8).collect();
            client.feed(&data).await.unwrap();
            if index == 2 {
                // A read parses the ping and writes the pong; it then waits
                // for data that does not come, and is cancelled.
                let read = tokio::time::timeout(Duration::from_millis(200), client.next()).await;
                assert!(read.is_err(), "{read:?}");
            }
        }
        client.flush().await.unwrap();
        assert_eq!(client.next().await.unwrap(), Some(&b"done"[..]));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_close_frame_is_an_error_with_its_code_and_reason() {
        let (mut client, server) = pair(|mut ws| async move {
            ws.send(Message::binary(b"x".to_vec())).await.unwrap();
            ws.close(Some(CloseFrame {
                code: CloseCode::Library(4002),
                reason: "slow consumer".into(),
            }))
            .await
            .unwrap();
            // The client answers the close.
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        assert_eq!(client.next().await.unwrap(), Some(&b"x"[..]));
        match client.next().await {
            Err(WsError::Closed { code, reason }) => {
                assert_eq!(code, Some(4002));
                assert_eq!(reason, "slow consumer");
            }
            other => panic!("{other:?}"),
        }
        client.close(Duration::from_secs(5)).await;
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_upgrade_names_the_status_and_the_body() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            let _ = stream.read(&mut request).await.unwrap();
            let body = r#"{"code":"token_malformed"}"#;
            let response = format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await.unwrap();
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let err = WsStream::handshake(stream, &addr.to_string(), "/", &[], CONFIG)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"handshake refused: HTTP 401 Unauthorized {"code":"token_malformed"}"#
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_bad_frame_from_the_server_is_an_error_not_a_hang() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            // A frame over the client's limit: a 64-bit length of 2 MiB.
            let stream = ws.get_mut();
            let mut frame = vec![0x82, 127];
            frame.extend_from_slice(&(2u64 << 20).to_be_bytes());
            stream.write_all(&frame).await.unwrap();
            stream.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut client = WsStream::handshake(stream, &addr.to_string(), "/", &[], CONFIG)
            .await
            .unwrap();
        let err = client.next().await.unwrap_err();
        assert!(
            err.to_string().contains("a frame of 2097152 bytes"),
            "{err}"
        );
        server.await.unwrap();
    }

    #[test]
    fn masking_twice_restores_the_data() {
        for size in [0usize, 3, 8, 13, 64, 1001] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
            let mut masked = data.clone();
            let key = [0x12, 0x34, 0x56, 0x78];
            apply_mask(&mut masked, key);
            for (i, (m, d)) in masked.iter().zip(&data).enumerate() {
                assert_eq!(*m, d ^ key[i % 4]);
            }
            apply_mask(&mut masked, key);
            assert_eq!(masked, data);
        }
    }
}
