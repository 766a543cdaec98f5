//! The shared half of a connection: what fan-out, replays and the admin API
//! hold to reach a connection, without owning its socket, and its outbound
//! queue, bounded in frames and in bytes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use sockeye_protocol::CloseCode;
use std::sync::Arc;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, TryAcquireError, mpsc};
use tokio_util::sync::CancellationToken;

/// A broker-unique connection id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Traffic counters of one connection.
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    /// Frames received.
    pub(crate) frames_in: AtomicU64,
    /// Bytes received.
    pub(crate) bytes_in: AtomicU64,
    /// Frames sent.
    pub(crate) frames_out: AtomicU64,
    /// Bytes sent.
    pub(crate) bytes_out: AtomicU64,
    /// Messages published.
    pub(crate) published: AtomicU64,
    /// Frames from the outbound queue written to the socket: messages (live
    /// and replayed), and the `gap` and `reset` frames of replays.
    pub(crate) delivered: AtomicU64,
}

/// The result of offering a frame to a peer without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Queued.
    Queued,
    /// The queue is full: the peer is a slow consumer.
    Full,
    /// The connection is gone.
    Closed,
}

/// The shared half of one connection.
#[derive(Debug)]
pub(crate) struct Peer {
    /// Broker-unique id.
    pub(crate) id: ConnId,
    /// The token's `sub`.
    pub(crate) subject: String,
    /// The client's address.
    pub(crate) remote: SocketAddr,
    /// The `User-Agent` of the handshake, if any.
    pub(crate) user_agent: Option<String>,
    /// When the connection was accepted.
    pub(crate) connected_at: SystemTime,
    /// Traffic counters.
    pub(crate) counters: PeerCounters,
    /// The filters currently subscribed, for display.
    pub(crate) subscriptions: Mutex<Vec<String>>,
    /// The outbound queue, created with the first subscription: a
    /// connection that never subscribes never pays for one.
    outbox: OnceLock<Outbox>,
    /// Capacity of the outbound queue, in frames and in bytes.
    queue: usize,
    queue_bytes: u32,
    close: CancellationToken,
    close_reason: Mutex<Option<(CloseCode, String)>>,
}

impl Peer {
    /// Creates the shared half of a connection whose outbound queue will
    /// hold `queue` frames and `queue_bytes` bytes of them.
    pub(crate) fn new(
        id: ConnId,
        subject: String,
        remote: SocketAddr,
        user_agent: Option<String>,
        queue: usize,
        queue_bytes: u64,
    ) -> Self {
        Self {
            id,
            subject,
            remote,
            user_agent,
            connected_at: SystemTime::now(),
            counters: PeerCounters::default(),
            subscriptions: Mutex::new(Vec::new()),
            outbox: OnceLock::new(),
            queue,
            queue_bytes: u32::try_from(queue_bytes.max(1)).unwrap_or(u32::MAX),
            close: CancellationToken::new(),
            close_reason: Mutex::new(None),
        }
    }

    /// Creates the outbound queue if it does not exist yet and returns its
    /// receiving end; `None` if it already existed. Only the connection's
    /// own session calls this, before its first subscription.
    pub(crate) fn open_queue(&self) -> Option<Inbox> {
        let mut receiver = None;
        self.outbox.get_or_init(|| {
            let (frames, inbox) = mpsc::channel(self.queue);
            let bytes = Arc::new(Semaphore::new(self.queue_bytes as usize));
            receiver = Some(Inbox {
                frames: inbox,
                bytes: Arc::clone(&bytes),
                budget: self.queue_bytes,
                taken: 0,
            });
            Outbox {
                frames,
                bytes,
                budget: self.queue_bytes,
            }
        });
        receiver
    }

    /// Offers a frame without waiting.
    pub(crate) fn offer(&self, frame: Bytes) -> Offer {
        match self.outbox.get() {
            Some(outbox) => outbox.offer(frame),
            // Nothing is offered to a connection that never subscribed.
            None => Offer::Closed,
        }
    }

    /// Queues a frame, waiting for room. Fails only when the connection is
    /// gone (or has no queue, which no subscribed connection lacks).
    pub(crate) async fn send(&self, frame: Bytes) -> Result<(), ConnectionGone> {
        match self.outbox.get() {
            Some(outbox) => outbox.send(frame).await,
            None => Err(ConnectionGone),
        }
    }

    /// Frames waiting in the outbound queue.
    pub(crate) fn queue_depth(&self) -> usize {
        self.outbox.get().map_or(0, |outbox| {
            outbox.frames.max_capacity() - outbox.frames.capacity()
        })
    }

    /// Bytes of frames waiting in the outbound queue.
    pub(crate) fn queue_bytes(&self) -> u64 {
        self.outbox.get().map_or(0, |outbox| {
            u64::from(outbox.budget).saturating_sub(outbox.bytes.available_permits() as u64)
        })
    }

    /// Asks the connection to close with `code`. The first reason wins.
    /// Returns true for that first call only, so that whoever counts closes
    /// (slow consumers, say) counts each connection once, however many
    /// publishes find it full while it is closing.
    pub(crate) fn close(&self, code: CloseCode, reason: impl Into<String>) -> bool {
        let first = {
            let mut slot = self
                .close_reason
                .lock()
                .expect("no code panics while holding close_reason");
            let first = slot.is_none();
            if first {
                *slot = Some((code, reason.into()));
            }
            first
        };
        self.close.cancel();
        first
    }

    /// Resolves when [`Peer::close`] was called.
    pub(crate) fn close_requested(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.close.cancelled()
    }

    /// True once [`Peer::close`] was called.
    pub(crate) fn is_closing(&self) -> bool {
        self.close.is_cancelled()
    }

    /// The reason given to [`Peer::close`].
    pub(crate) fn close_reason(&self) -> Option<(CloseCode, String)> {
        self.close_reason
            .lock()
            .expect("no code panics while holding close_reason")
            .clone()
    }

    /// A handle on the outbound queue, for subscriptions that fan out to
    /// it; `None` before [`Peer::open_queue`].
    pub(crate) fn outbox(&self) -> Option<Outbox> {
        self.outbox.get().cloned()
    }

    /// Counts one frame of `bytes` written to this peer.
    pub(crate) fn count_out(&self, bytes: usize) {
        self.counters.frames_out.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_out
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// The sending half of a connection's outbound queue: a bounded channel of
/// frames plus a budget of bytes. A frame takes `min(len, budget)` bytes of
/// the budget (so one frame larger than the whole budget still passes, alone)
/// until the session writes it to the socket. A full queue, by either
/// measure, is what makes a subscriber slow.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    frames: mpsc::Sender<Bytes>,
    bytes: Arc<Semaphore>,
    budget: u32,
}

fn cost(frame: &Bytes, budget: u32) -> u32 {
    u32::try_from(frame.len()).unwrap_or(u32::MAX).min(budget)
}

impl Outbox {
    /// Queues `frame` if it fits now.
    pub(crate) fn offer(&self, frame: Bytes) -> Offer {
        let cost = cost(&frame, self.budget);
        match self.bytes.try_acquire_many(cost) {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::NoPermits) => return Offer::Full,
            Err(TryAcquireError::Closed) => return Offer::Closed,
        }
        match self.frames.try_send(frame) {
            Ok(()) => Offer::Queued,
            Err(TrySendError::Full(_)) => {
                self.bytes.add_permits(cost as usize);
                Offer::Full
            }
            Err(TrySendError::Closed(_)) => Offer::Closed,
        }
    }

    /// Queues `frame`, waiting until it fits.
    pub(crate) async fn send(&self, frame: Bytes) -> Result<(), ConnectionGone> {
        let cost = cost(&frame, self.budget);
        self.bytes
            .acquire_many(cost)
            .await
            .map_err(|_| ConnectionGone)?
            .forget();
        if self.frames.send(frame).await.is_err() {
            self.bytes.add_permits(cost as usize);
            return Err(ConnectionGone);
        }
        Ok(())
    }
}

/// The receiving half of an outbound queue, owned by the session.
///
/// A frame taken out keeps its bytes of the budget until the session has
/// written and flushed the batch it was in and says so
/// ([`written`](Self::written)). So the budget bounds what is queued plus
/// what is being written, and the semaphore (whose `add_permits` takes a
/// lock) is touched once per batch rather than once per frame. A session
/// that ends mid-batch drops the inbox, which closes the budget anyway.
#[derive(Debug)]
pub(crate) struct Inbox {
    frames: mpsc::Receiver<Bytes>,
    bytes: Arc<Semaphore>,
    budget: u32,
    /// Budget held by frames taken out and not yet reported written.
    taken: usize,
}

impl Inbox {
    /// The next frame, waiting for one; `None` once every sender is gone.
    pub(crate) async fn recv(&mut self) -> Option<Bytes> {
        let frame = self.frames.recv().await?;
        self.taken += cost(&frame, self.budget) as usize;
        Some(frame)
    }

    /// The next frame if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<Bytes> {
        let frame = self.frames.try_recv().ok()?;
        self.taken += cost(&frame, self.budget) as usize;
        Some(frame)
    }

    /// The frames taken so far are written: their bytes go back to the
    /// budget.
    pub(crate) fn written(&mut self) {
        if self.taken > 0 {
            self.bytes.add_permits(std::mem::take(&mut self.taken));
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // Wakes replays waiting for room: the connection is gone.
        self.bytes.close();
    }
}

/// A snapshot of one connection, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Broker-unique id (the `connection_id` of its `welcome`).
    pub id: ConnId,
    /// The token's `sub`.
    pub subject: String,
    /// The client's address (behind a trusted proxy, the forwarded one).
    pub remote: SocketAddr,
    /// The `User-Agent` of the handshake, if any.
    pub user_agent: Option<String>,
    /// When the connection was accepted.
    pub connected_at: SystemTime,
    /// The filters subscribed now.
    pub subscriptions: Vec<String>,
    /// Messages it published.
    pub messages_in: u64,
    /// Frames from its outbound queue written to it: messages (live and
    /// replayed), `gap` and `reset` frames.
    pub messages_out: u64,
    /// Frames received.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Frames waiting in its outbound queue.
    pub queue_depth: u64,
    /// Bytes of those frames.
    pub queue_bytes: u64,
}

impl Peer {
    /// A snapshot of this connection.
    pub(crate) fn info(&self) -> ConnectionInfo {
        let counters = &self.counters;
        ConnectionInfo {
            id: self.id,
            subject: self.subject.clone(),
            remote: self.remote,
            user_agent: self.user_agent.clone(),
            connected_at: self.connected_at,
            subscriptions: self
                .subscriptions
                .lock()
                .map(|filters| filters.clone())
                .unwrap_or_default(),
            messages_in: counters.published.load(Ordering::Relaxed),
            messages_out: counters.delivered.load(Ordering::Relaxed),
            frames_in: counters.frames_in.load(Ordering::Relaxed),
            frames_out: counters.frames_out.load(Ordering::Relaxed),
            bytes_in: counters.bytes_in.load(Ordering::Relaxed),
            bytes_out: counters.bytes_out.load(Ordering::Relaxed),
            queue_depth: self.queue_depth() as u64,
            queue_bytes: self.queue_bytes(),
        }
    }
}

/// The connection a frame was meant for has closed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the connection is gone")]
pub(crate) struct ConnectionGone;
