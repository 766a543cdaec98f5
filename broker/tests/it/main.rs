//! Broker integration tests: a real broker on a loopback port, real
//! WebSocket clients.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod bad_input;
mod claims;
mod disk;
mod handshake;
mod history;
mod lifecycle;
mod promises;
mod pubsub;
mod security;
mod wildcard;
