//! The NATS text protocol, as much of it as the generator needs to drive
//! nats-server over WebSocket: `CONNECT`, `SUB`, `PUB` and `PING`/`PONG` out,
//! `INFO`, `MSG`, `PING`, `PONG`, `+OK` and `-ERR` in.
//!
//! nats-server sends binary WebSocket frames that may hold several protocol
//! operations or only part of one, so incoming frames are parsed as one byte
//! stream: [`NatsReader`] gathers the frames' bytes and parses whole
//! operations out of them.

use std::ops::Range;

use bytes::Bytes;

/// Longest control line accepted (nats-server's own default is 4 KiB); a
/// longer one means the stream is not NATS.
const MAX_CONTROL_LINE: usize = 64 * 1024;

/// One operation received from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NatsOp {
    /// `INFO {json}`: the server's greeting.
    Info,
    /// `MSG <subject> <sid> [reply-to] <#bytes>` and its payload, which
    /// [`NatsReader::payload`] returns.
    Msg,
    /// `PING`: must be answered with `PONG`.
    Ping,
    /// `PONG`: the answer to our `PING`.
    Pong,
    /// `+OK` (only sent in verbose mode).
    Ok,
    /// `-ERR '<text>'`.
    Err(String),
}

/// Why the byte stream is not valid NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NatsProtocolError(pub(crate) String);

impl std::fmt::Display for NatsProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a NATS stream: {}", self.0)
    }
}

impl std::error::Error for NatsProtocolError {}

/// Reassembles operations from WebSocket frames.
#[derive(Debug, Default)]
pub(crate) struct NatsReader {
    /// Bytes received; `buf[pos..]` is not parsed yet.
    buf: Vec<u8>,
    pos: usize,
    /// Where the payload of the last `MSG` returned is in `buf`.
    payload: Range<usize>,
}

impl NatsReader {
    /// Adds the contents of one WebSocket frame. Call only when
    /// [`NatsReader::next_op`] returned `Ok(None)`.
    pub(crate) fn push(&mut self, frame: &[u8]) {
        // Keep only the unfinished operation (usually nothing, or a few bytes).
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(frame);
    }

    /// The next complete operation, or `None` if more bytes are needed.
    pub(crate) fn next_op(&mut self) -> Result<Option<NatsOp>, NatsProtocolError> {
        let Some((op, used)) = parse(&self.buf[self.pos..])? else {
            return Ok(None);
        };
        let op = match op {
            RawOp::Msg(range) => {
                self.payload = self.pos + range.start..self.pos + range.end;
                NatsOp::Msg
            }
            RawOp::Info => NatsOp::Info,
            RawOp::Ping => NatsOp::Ping,
            RawOp::Pong => NatsOp::Pong,
            RawOp::Ok => NatsOp::Ok,
            RawOp::Err(text) => NatsOp::Err(text),
        };
        self.pos += used;
        Ok(Some(op))
    }

    /// The payload of the last [`NatsOp::Msg`] returned (until the next push).
    pub(crate) fn payload(&self) -> &[u8] {
        &self.buf[self.payload.clone()]
    }
}

/// An operation whose payload is still a range of the parsed buffer.
enum RawOp {
    Info,
    Msg(Range<usize>),
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// Parses one operation at the start of `buf`: the operation and how many
/// bytes it used, or `None` if `buf` ends before it does.
fn parse(buf: &[u8]) -> Result<Option<(RawOp, usize)>, NatsProtocolError> {
    let Some(line_end) = memchr::memmem::find(buf, b"\r\n") else {
        if buf.len() > MAX_CONTROL_LINE {
            return Err(NatsProtocolError("control line too long".into()));
        }
        return Ok(None);
    };
    let line = &buf[..line_end];
    let after_line = line_end + 2;
    let (verb, args) = match line.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(space) => (&line[..space], &line[space + 1..]),
        None => (line, &line[line.len()..]),
    };
    let op = if verb.eq_ignore_ascii_case(b"MSG") {
        let size_text = args
            .split(|b| *b == b' ' || *b == b'\t')
            .rfind(|part| !part.is_empty())
            .ok_or_else(|| NatsProtocolError("MSG without arguments".into()))?;
        let size =
            parse_size(size_text).ok_or_else(|| NatsProtocolError("MSG with a bad size".into()))?;
        let end = after_line
            .checked_add(size)
            .and_then(|end| end.checked_add(2))
            .ok_or_else(|| NatsProtocolError("MSG size overflows".into()))?;
        if buf.len() < end {
            return Ok(None);
        }
        if &buf[end - 2..end] != b"\r\n" {
            return Err(NatsProtocolError("MSG payload not followed by CRLF".into()));
        }
        return Ok(Some((RawOp::Msg(after_line..after_line + size), end)));
    } else if verb.eq_ignore_ascii_case(b"PING") {
        RawOp::Ping
    } else if verb.eq_ignore_ascii_case(b"PONG") {
        RawOp::Pong
    } else if verb.eq_ignore_ascii_case(b"INFO") {
        RawOp::Info
    } else if verb.eq_ignore_ascii_case(b"+OK") {
        RawOp::Ok
    } else if verb.eq_ignore_ascii_case(b"-ERR") {
        RawOp::Err(String::from_utf8_lossy(args).trim().to_owned())
    } else {
        let shown = String::from_utf8_lossy(&verb[..verb.len().min(32)]).into_owned();
        return Err(NatsProtocolError(format!("unknown operation {shown:?}")));
    };
    Ok(Some((op, after_line)))
}

/// A decimal byte count.
fn parse_size(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 12 {
        return None;
    }
    digits.iter().try_fold(0usize, |size, digit| {
        digit
            .is_ascii_digit()
            .then(|| size * 10 + usize::from(digit - b'0'))
    })
}

/// `CONNECT` with the options the generator needs, then a `PING` whose
/// `PONG` confirms the server processed it.
pub(crate) fn connect_command() -> Bytes {
    Bytes::from_static(
        b"CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":false,\
\"name\":\"sockeye-bench\",\"lang\":\"rust\",\"version\":\"0.1.0\",\"protocol\":1,\
\"echo\":false,\"headers\":false,\"no_responders\":false}\r\nPING\r\n",
    )
}

/// `SUB <subject> <sid>` followed by a `PING`: the `PONG` that answers it
/// confirms the subscription is in place.
pub(crate) fn subscribe_command(subject: &str, sid: u64) -> Bytes {
    Bytes::from(format!("SUB {subject} {sid}\r\nPING\r\n"))
}

/// `PUB <subject> <#bytes>` and the payload.
pub(crate) fn publish_command(subject: &str, payload: &[u8]) -> Bytes {
    let header = format!("PUB {subject} {}\r\n", payload.len());
    let mut out = Vec::with_capacity(header.len() + payload.len() + 2);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// The answer to a server `PING`.
pub(crate) fn pong_command() -> Bytes {
    Bytes::from_static(b"PONG\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation parsed so far, with `MSG` payloads as text.
    fn drain(reader: &mut NatsReader) -> Vec<(NatsOp, String)> {
        let mut ops = Vec::new();
        while let Some(op) = reader.next_op().unwrap() {
            let payload = if op == NatsOp::Msg {
                String::from_utf8(reader.payload().to_vec()).unwrap()
            } else {
                String::new()
            };
            ops.push((op, payload));
        }
        ops
    }

    #[test]
    fn parses_several_operations_in_one_frame() {
        let mut reader = NatsReader::default();
        reader.push(
            b"INFO {\"server_id\":\"x\"}\r\nPING\r\nMSG a.b 1 5\r\nhello\r\nMSG a.b 1 _INBOX.r 3\r\nabc\r\n+OK\r\n",
        );
        assert_eq!(
            drain(&mut reader),
            vec![
                (NatsOp::Info, String::new()),
                (NatsOp::Ping, String::new()),
                (NatsOp::Msg, "hello".into()),
                (NatsOp::Msg, "abc".into()),
                (NatsOp::Ok, String::new()),
            ]
        );
    }

    #[test]
    fn reassembles_an_operation_split_across_frames_at_every_byte() {
        let stream: &[u8] = b"MSG s 9 4\r\n\r\n\r\n\r\nPONG\r\n-ERR 'Slow Consumer'\r\n";
        for cut in 0..stream.len() {
            let mut reader = NatsReader::default();
            reader.push(&stream[..cut]);
            let mut ops = drain(&mut reader);
            reader.push(&stream[cut..]);
            ops.extend(drain(&mut reader));
            assert_eq!(
                ops,
                vec![
                    (NatsOp::Msg, "\r\n\r\n".into()),
                    (NatsOp::Pong, String::new()),
                    (NatsOp::Err("'Slow Consumer'".into()), String::new()),
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn rejects_garbage_instead_of_waiting_for_ever() {
        let mut reader = NatsReader::default();
        reader.push(b"HELLO world\r\n");
        assert!(reader.next_op().is_err());
        let mut reader = NatsReader::default();
        reader.push(b"MSG a 1 2\r\nabcd\r\n");
        assert!(reader.next_op().is_err());
        let mut reader = NatsReader::default();
        reader.push(b"MSG a 1 -2\r\nab\r\n");
        assert!(reader.next_op().is_err());
        let mut reader = NatsReader::default();
        reader.push(&vec![b'x'; MAX_CONTROL_LINE + 1]);
        assert!(reader.next_op().is_err());
    }

    #[test]
    fn commands_are_well_formed() {
        assert_eq!(&publish_command("a.b", b"xyz")[..], b"PUB a.b 3\r\nxyz\r\n");
        assert_eq!(&subscribe_command("a.>", 7)[..], b"SUB a.> 7\r\nPING\r\n");
        assert!(connect_command().ends_with(b"}\r\nPING\r\n"));
    }
}
