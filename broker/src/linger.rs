//! The TCP close after a WebSocket close: a connection's I/O that, when the
//! session asked for it, keeps reading and discarding for a bounded time
//! after it is dropped, so the peer receives the close frame instead of a
//! reset.
//!
//! A socket closed while received data is still unread makes the kernel send
//! RST, and a RST can overtake (destroy) the close frame written just before
//! it. That is exactly the case of a frame over `limits.max_frame_size`:
//! the broker refuses it after reading its header, while the rest is still
//! arriving.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Bytes read per step while draining; the data is thrown away.
const DRAIN_CHUNK: usize = 8 * 1024;

/// The session's handle on its connection's linger, put in the upgrade
/// request's extensions by the HTTP server.
#[derive(Debug, Clone, Default)]
pub(crate) struct CloseLinger {
    /// How long to drain after the drop, in milliseconds; 0: not asked.
    millis: Arc<AtomicU64>,
}

impl CloseLinger {
    /// Asks the connection to drain for `linger` once it is dropped.
    pub(crate) fn request(&self, linger: Duration) {
        let millis = u64::try_from(linger.as_millis()).unwrap_or(u64::MAX);
        self.millis.store(millis, Ordering::Release);
    }

    fn requested(&self) -> Option<Duration> {
        match self.millis.load(Ordering::Acquire) {
            0 => None,
            millis => Some(Duration::from_millis(millis)),
        }
    }
}

/// A connection's I/O that lingers when dropped, if its [`CloseLinger`] was
/// asked to: it then shuts its write side (the peer reads everything sent,
/// then end of stream) and reads and discards until the peer closes too or
/// the linger time ends, in a task of its own.
/// (`Drop` must hold for every `I` the type admits, hence the bounds here.)
#[derive(Debug)]
pub(crate) struct LingeringIo<I: Connection> {
    /// `None` only once dropped.
    io: Option<I>,
    linger: CloseLinger,
}

/// What a connection's I/O must be to be drained in a task of its own.
pub(crate) trait Connection: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connection for I {}

impl<I: Connection> LingeringIo<I> {
    pub(crate) fn new(io: I, linger: CloseLinger) -> Self {
        Self {
            io: Some(io),
            linger,
        }
    }

    fn io(self: Pin<&mut Self>) -> Pin<&mut I> {
        Pin::new(
            self.get_mut()
                .io
                .as_mut()
                .expect("the I/O is only taken when dropped"),
        )
    }
}

impl<I: Connection> Drop for LingeringIo<I> {
    fn drop(&mut self) {
        // Without a runtime (it is shutting down) there is nothing to drain
        // with: the socket just closes.
        let Some(linger) = self.linger.requested() else {
            return;
        };
        let (Some(io), Ok(runtime)) = (self.io.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(drain(io, linger));
    }
}

impl<I: Connection> AsyncRead for LingeringIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl<I: Connection> AsyncWrite for LingeringIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
}

/// Shuts the write side, then reads and discards until end of stream, an
/// error, or `linger` has passed.
async fn drain<I: Connection>(mut io: I, linger: Duration) {
    let _ = tokio::time::timeout(linger, async {
        let _ = io.shutdown().await;
        let mut discard = vec![0u8; DRAIN_CHUNK];
        while let Ok(1..) = io.read(&mut discard).await {}
    })
    .await;
}
