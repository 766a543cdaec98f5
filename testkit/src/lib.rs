//! Test support shared by the workspace's integration tests: a real broker
//! served in-process on 127.0.0.1:0 with its own data directory
//! ([`TestBroker`], optionally with the admin listener), token minting through
//! the broker's own authenticator, a raw WebSocket client that speaks the
//! protocol ([`Client`]), and (feature `admin`) HTTP helpers for the admin
//! API ([`http`]). Every wait is bounded by [`WAIT`], so a hang fails a test
//! instead of stalling it.
//!
//! Nothing here is a mock: the broker is the real one, on a real socket.
// Test support fails loudly by design: a broken setup is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

mod broker;
#[cfg(feature = "admin")]
pub mod http;
mod wire;

pub use broker::{Stopped, TestBroker, test_config};
pub use wire::{
    Carrier, Client, Refused, Socket, handshake_request, number, read_number, reply_id,
};

/// How long any single wait in a test may take before it fails. A hang
/// detector for a busy machine, never a speed requirement.
pub const WAIT: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Some`, for at most [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
