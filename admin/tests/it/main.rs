//! Integration tests of the admin API: real HTTP against a real broker
//! served in-process, with real WebSocket clients.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod auth;
mod browser;
mod conformance;
mod connections;
mod console;
mod openapi;
mod stats;
mod tls;
mod topics;
