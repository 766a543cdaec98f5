//! Slow applications: bounded subscription queues, without loss where the
//! broker can replay, and with explicit notices where it cannot.

use sockeye_sdk::{Client, ClientConfig, Event, Position, SubscribeOptions};

use crate::next_event;
use sockeye_testkit::TestBroker;

#[tokio::test]
async fn a_slow_reader_that_publishes_from_its_loop_gets_every_message_in_order() {
    let broker = TestBroker::start().await;
    let producer = Client::connect(broker.url(), broker.token("producer"))
        .await
        .unwrap();
    let worker = Client::connect(broker.url(), broker.token("worker"))
        .await
        .unwrap();
    let mut jobs = worker
        .subscribe_with::<u64>("jobs", SubscribeOptions::new().capacity(4))
        .await
        .unwrap();
    const JOBS: u64 = 300;
    for n in 1..=JOBS {
        producer.publish_unacked("jobs", &n).await.unwrap();
    }
    // The worker acknowledges each job with a publish on the same client
    // while its queue is far too small for the backlog.
    for n in 1..=JOBS {
        match next_event(&mut jobs).await {
            Event::Message(message) => {
                assert_eq!((message.offset, message.value), (n, n));
            }
            other => panic!("expected job {n}, got {other:?}"),
        }
        worker.publish("jobs.done", &n).await.unwrap();
    }
}

#[tokio::test]
async fn a_full_wildcard_queue_reports_how_many_messages_it_missed() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.url(), broker.token("alice"))
        .await
        .unwrap();
    let mut metrics = client
        .subscribe_with::<u64>("metrics.>", SubscribeOptions::new().capacity(2))
        .await
        .unwrap();
    const SENT: u64 = 50;
    // Publishing from the subscribing client: the broker writes each
    // delivery before the publish's acknowledgement, so when the last
    // publish returns every delivery has reached the (full) queue.
    for n in 1..=SENT {
        client.publish("metrics.cpu", &n).await.unwrap();
    }
    let mut received = Vec::new();
    let mut missed = 0;
    while received.len() as u64 + missed < SENT {
        match next_event(&mut metrics).await {
            Event::Message(message) => received.push(message.value),
            Event::Lagged { missed: count } => missed += count,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(missed > 0, "the queue of two overflowed");
    assert!(
        received.windows(2).all(|pair| pair[0] < pair[1]),
        "{received:?}"
    );
    assert_eq!(received.first(), Some(&1));
}

#[tokio::test]
async fn the_smallest_client_queues_still_carry_every_concurrent_request() {
    let broker = TestBroker::start().await;
    let mut config = ClientConfig::default();
    config.request_queue = 1;
    config.outbox = 1;
    config.write_queue = 1;
    config.max_in_flight = 1;
    let producer = Client::builder(broker.url())
        .token(broker.token("producer"))
        .config(config)
        .connect()
        .await
        .unwrap();
    const TASKS: u64 = 8;
    const EACH: u64 = 25;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let producer = producer.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..EACH {
                producer
                    .publish("orders", &(task * EACH + n))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let reader = Client::connect(broker.url(), broker.token("reader"))
        .await
        .unwrap();
    let mut orders = reader
        .subscribe_with::<u64>("orders", SubscribeOptions::new().position(Position::Oldest))
        .await
        .unwrap();
    let mut values = Vec::new();
    for offset in 1..=TASKS * EACH {
        match next_event(&mut orders).await {
            Event::Message(message) => {
                assert_eq!(message.offset, offset);
                values.push(message.value);
            }
            other => panic!("expected offset {offset}, got {other:?}"),
        }
    }
    values.sort_unstable();
    assert_eq!(values, (0..TASKS * EACH).collect::<Vec<_>>());
}
