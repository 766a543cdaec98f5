//! The seam's hard cases, driven through the in-memory engine: no sockets,
//! no disk. Each subscriber is a real [`Peer`] whose outbound queue the test
//! drains.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sockeye_protocol::{CloseCode, Payload, Position, ServerMessage, TopicName, frame};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::engine::memory::MemoryEngine;
use crate::peer::{ConnId, Inbox, Peer};

const WAIT: Duration = Duration::from_secs(10);

struct Seam {
    hub: Arc<Hub>,
    engine: Arc<Engine>,
}

fn seam() -> Seam {
    let mut config = Config::default();
    config.store.replay_batch = 4;
    let hub = Arc::new(Hub::new(
        &config,
        Arc::new(Stats::default()),
        TaskTracker::new(),
    ));
    let engine = Arc::new(Engine::Memory(MemoryEngine::new(Arc::clone(&hub))));
    hub.attach(&engine);
    Seam { hub, engine }
}

impl Seam {
    fn memory(&self) -> &MemoryEngine {
        match &*self.engine {
            Engine::Memory(engine) => engine,
            Engine::Sled(_) | Engine::Redis(_) => {
                unreachable!("the seam tests use the memory engine")
            }
        }
    }

    fn publish(&self, topic: &TopicName, n: u64) {
        self.engine
            .publish(topic, &Payload::binary(&n.to_be_bytes()), "test")
            .expect("the memory engine stores everything");
    }

    /// A connection whose queue holds `queue` frames, subscribed to `topic`.
    fn subscribe(
        &self,
        id: u64,
        topic: &TopicName,
        queue: usize,
        position: Option<Position>,
    ) -> (Arc<Peer>, Inbox) {
        let peer = Arc::new(Peer::new(
            ConnId(id),
            "test".into(),
            "127.0.0.1:1".parse().expect("address"),
            None,
            queue,
            1 << 20,
        ));
        let inbox = peer.open_queue().expect("a new peer has no queue yet");
        let subscriber = Subscriber {
            outbox: peer.outbox().expect("opened above"),
            peer: Arc::clone(&peer),
            cancel: CancellationToken::new(),
        };
        self.hub
            .subscribe_exact(&self.engine, topic, subscriber, position)
            .expect("subscribe");
        (peer, inbox)
    }
}

async fn next_frame(inbox: &mut Inbox) -> ServerMessage {
    let frame = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("a frame within the wait")
        .expect("the queue is open");
    let body = frame::open(&frame, 1 << 20).expect("a frame");
    ServerMessage::decode(&body).expect("a message")
}

/// The `(epoch, offset)` of the next frame, which must be a message.
async fn next_delivery(inbox: &mut Inbox) -> (u64, u64) {
    match next_frame(inbox).await {
        ServerMessage::Message(delivery) => (delivery.epoch, delivery.offset),
        other => panic!("expected a message, got {other:?}"),
    }
}

fn topic(name: &str) -> TopicName {
    TopicName::parse(name, 255).expect("topic")
}

#[tokio::test]
async fn a_delivery_that_skips_offsets_moves_live_subscribers_to_a_replay_and_they_end_contiguous()
{
    let seam = seam();
    let topic = topic("seam.skip");
    let (_peer, mut inbox) = seam.subscribe(1, &topic, 64, None);
    for n in 1..=3 {
        seam.publish(&topic, n);
    }
    // This node misses 4..=6 (stored, never delivered), then sees 7.
    seam.memory().drop_deliveries.store(true, Ordering::Release);
    for n in 4..=6 {
        seam.publish(&topic, n);
    }
    seam.memory()
        .drop_deliveries
        .store(false, Ordering::Release);
    seam.publish(&topic, 7);
    for expected in 1..=7 {
        assert_eq!(next_delivery(&mut inbox).await, (1, expected));
    }
    // Back to live delivery, and the replay left nothing counted.
    let deadline = tokio::time::Instant::now() + WAIT;
    while seam.hub.local_info(&topic).expect("subscribed").catching_up != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replay never went live"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seam.publish(&topic, 8);
    assert_eq!(next_delivery(&mut inbox).await, (1, 8));
    assert!(inbox.try_recv().is_none(), "no duplicate");
}

#[tokio::test]
async fn a_duplicate_delivery_is_dropped() {
    let seam = seam();
    let topic = topic("seam.duplicate");
    let (_peer, mut inbox) = seam.subscribe(1, &topic, 64, None);
    seam.publish(&topic, 1);
    let frame =
        crate::engine::encode_delivery(topic.as_str(), 1, 1, 0, "test", &Payload::binary(b"again"))
            .seal(&Compression::default());
    seam.hub.deliver(
        &topic,
        Some(StreamPosition {
            epoch: 1,
            offset: 1,
        }),
        &frame,
        crate::hub::Accepted::now(),
    );
    seam.publish(&topic, 2);
    assert_eq!(next_delivery(&mut inbox).await, (1, 1));
    assert_eq!(next_delivery(&mut inbox).await, (1, 2));
    assert!(inbox.try_recv().is_none());
}

#[tokio::test]
async fn a_reset_during_a_replay_sends_reset_and_continues_in_the_new_epoch() {
    let seam = seam();
    let topic = topic("seam.reset");
    for n in 1..=40 {
        seam.publish(&topic, n);
    }
    // A queue of two frames keeps the replay waiting on the subscriber.
    let (_peer, mut inbox) = seam.subscribe(1, &topic, 2, Some(Position::Oldest));
    assert_eq!(next_delivery(&mut inbox).await, (1, 1));
    let fresh = seam.memory().reset(&topic).expect("the topic exists");
    assert_eq!(fresh, 2);
    for n in 1..=3 {
        seam.publish(&topic, n);
    }
    // Old-epoch messages the replay already read may still arrive, in
    // order; then `reset`, then the new epoch from its first offset.
    let mut last_old = 1;
    loop {
        match next_frame(&mut inbox).await {
            ServerMessage::Message(delivery) => {
                assert_eq!(delivery.epoch, 1);
                assert_eq!(delivery.offset, last_old + 1);
                last_old = delivery.offset;
            }
            ServerMessage::Reset { epoch, .. } => {
                assert_eq!(epoch, 2);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for expected in 1..=3 {
        assert_eq!(next_delivery(&mut inbox).await, (2, expected));
    }
    seam.publish(&topic, 4);
    assert_eq!(next_delivery(&mut inbox).await, (2, 4));
}

#[tokio::test]
async fn a_read_error_closes_the_replaying_subscriber_with_1011() {
    let seam = seam();
    let topic = topic("seam.read-error");
    for n in 1..=5 {
        seam.publish(&topic, n);
    }
    seam.memory().fail_reads.store(true, Ordering::Release);
    let (peer, _inbox) = seam.subscribe(1, &topic, 64, Some(Position::Oldest));
    let deadline = tokio::time::Instant::now() + WAIT;
    while !peer.is_closing() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscriber was never closed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (code, _) = peer.close_reason().expect("a reason");
    assert_eq!(code, CloseCode::InternalError);
    // The replay's count was released with it.
    while seam
        .hub
        .local_info(&topic)
        .is_some_and(|info| info.catching_up != 0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replay stayed counted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn after_position_inside_retention_is_complete() {
    let bounds = StreamBounds {
        epoch: 7,
        first: 1,
        next: 11,
        holes: &[],
    };
    let plan = plan_start(
        &bounds,
        11,
        Some(Position::After {
            epoch: 7,
            offset: 4,
        }),
    );
    assert_eq!((plan.start, plan.complete, plan.gap), (5, true, None));
}

#[test]
fn after_position_before_retention_reports_the_gap() {
    let bounds = StreamBounds {
        epoch: 7,
        first: 6,
        next: 11,
        holes: &[],
    };
    let plan = plan_start(
        &bounds,
        11,
        Some(Position::After {
            epoch: 7,
            offset: 2,
        }),
    );
    assert_eq!(plan.start, 6);
    assert!(!plan.complete);
    assert_eq!(plan.gap, Some(OffsetRange { from: 3, to: 5 }));
}

#[test]
fn after_position_past_the_head_replays_nothing_and_another_epoch_restarts() {
    let bounds = StreamBounds {
        epoch: 7,
        first: 3,
        next: 11,
        holes: &[],
    };
    let past = plan_start(
        &bounds,
        11,
        Some(Position::After {
            epoch: 7,
            offset: 99,
        }),
    );
    assert_eq!((past.start, past.complete), (11, true));
    let other = plan_start(
        &bounds,
        11,
        Some(Position::After {
            epoch: 8,
            offset: 5,
        }),
    );
    assert_eq!(
        (other.start, other.epoch_changed, other.complete),
        (3, true, false)
    );
}

#[test]
fn last_n_is_clamped_and_a_resume_across_a_hole_is_not_complete() {
    let bounds = StreamBounds {
        epoch: 7,
        first: 8,
        next: 11,
        holes: &[],
    };
    let two = plan_start(&bounds, 11, Some(Position::Last { count: 2 }));
    assert_eq!((two.start, two.complete), (9, true));
    let five = plan_start(&bounds, 11, Some(Position::Last { count: 5 }));
    assert_eq!((five.start, five.complete), (8, false));
    let holes = [OffsetRange { from: 5, to: 7 }];
    let holed = StreamBounds {
        epoch: 7,
        first: 1,
        next: 11,
        holes: &holes,
    };
    let resume = |offset| plan_start(&holed, 11, Some(Position::After { epoch: 7, offset }));
    assert!(!resume(2).complete, "the replay crosses offsets 5..=7");
    assert!(resume(7).complete, "the replay starts after the hole");
}

#[test]
fn rate_window_reports_the_last_complete_second() {
    let mut rate = RateWindow::default();
    for ms in [1000, 1100, 1200] {
        rate.record(ms);
    }
    rate.record(2000);
    assert_eq!(rate.per_second(2500), 3);
    assert_eq!(rate.per_second(3500), 1);
    assert_eq!(rate.per_second(9000), 0);
}
