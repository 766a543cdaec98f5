//! Integration tests of the SDK against a real broker run in-process.

#![allow(clippy::unwrap_used)]

mod lifecycle;
mod reconnect;
mod refresh;
mod roundtrip;
mod slow;

use std::time::Duration;

use futures_util::StreamExt;
use sockeye_sdk::{Event, Message, Subscription};

/// A safety net so a broken test fails instead of hanging; never a
/// performance assertion.
const PATIENCE: Duration = Duration::from_secs(60);

/// The next event of `subscription`, which must arrive.
async fn next_event<T: std::fmt::Debug>(subscription: &mut Subscription<T>) -> Event<T> {
    tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .expect("an event arrives")
        .expect("the subscription is open")
        .expect("the event is not an error")
}

/// The next event, which must be a message.
async fn next_message<T: std::fmt::Debug>(subscription: &mut Subscription<T>) -> Message<T> {
    match next_event(subscription).await {
        Event::Message(message) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}
