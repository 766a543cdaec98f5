//! Sockeye example: a service that subscribes with the Rust SDK, replays
//! what the topic holds, and prints every note it receives.
//!
//! Run with: `cargo run -p example-subscriber -- --url ws://127.0.0.1:8080/ws --token "$TOKEN" --topic notes.demo --count 3`
//!
//! (or set `SOCKEYE_URL`, `SOCKEYE_TOKEN`, `SOCKEYE_TOPIC`). Prints
//! `subscribed notes.demo epoch=E next_offset=N`, then one line per note:
//! `received notes.demo offset=N from=SUB seq=S text=TEXT`, and exits after
//! `--count` notes (runs until interrupted without it).

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::StreamExt;
use serde::Deserialize;
use sockeye_sdk::{Client, Event, Position, SubscribeOptions};

/// A note, as every example encodes it.
#[derive(Debug, Deserialize)]
struct Note {
    seq: u64,
    text: String,
}

#[derive(Debug, Parser)]
#[command(about = "Print the notes of a Sockeye topic")]
struct Args {
    /// Broker WebSocket URL.
    #[arg(long, env = "SOCKEYE_URL", default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// JWT to authenticate with.
    #[arg(long, env = "SOCKEYE_TOKEN")]
    token: String,
    /// Topic to read.
    #[arg(long, env = "SOCKEYE_TOPIC", default_value = "notes.demo")]
    topic: String,
    /// Exit after this many notes.
    #[arg(long)]
    count: Option<u64>,
    /// Only live notes, instead of everything the topic still holds.
    #[arg(long)]
    live: bool,
}

#[allow(clippy::print_stdout)]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let client = Client::connect(&args.url, &args.token)
        .await
        .with_context(|| format!("connecting to {}", args.url))?;
    let mut options = SubscribeOptions::new();
    if !args.live {
        options = options.position(Position::Oldest);
    }
    let mut notes = client
        .subscribe_with::<Note>(&args.topic, options)
        .await
        .with_context(|| format!("subscribing to {}", args.topic))?;
    println!(
        "subscribed {} epoch={} next_offset={}",
        args.topic,
        notes.info().epoch,
        notes.info().next_offset
    );
    let mut received = 0;
    while args.count.is_none_or(|count| received < count) {
        let Some(event) = notes.next().await else {
            bail!("the subscription ended");
        };
        match event {
            Ok(Event::Message(message)) => {
                received += 1;
                println!(
                    "received {} offset={} from={} seq={} text={}",
                    message.topic,
                    message.offset,
                    message.publisher,
                    message.value.seq,
                    message.value.text
                );
            }
            Ok(Event::Gap { topic, gap }) => {
                println!("gap {topic} offsets {}..={} are gone", gap.from, gap.to);
            }
            Ok(Event::EpochChanged { topic, epoch, .. }) => {
                println!("reset {topic} now in epoch {epoch}");
            }
            Ok(other) => println!("notice {other:?}"),
            Err(err) => eprintln!("skipping a message: {err}"),
        }
    }
    client.close().await;
    Ok(())
}
