//! Sockeye example: a service that publishes notes with the Rust SDK and
//! prints where each was stored.
//!
//! Run with: `cargo run -p example-publisher -- --url ws://127.0.0.1:8080/ws --token "$TOKEN" --topic notes.demo --count 3 hello`
//!
//! (or set `SOCKEYE_URL`, `SOCKEYE_TOKEN`, `SOCKEYE_TOPIC`). A token for a
//! local broker: `sockeye token --sub publisher`. Prints one line per note:
//! `published notes.demo epoch=E offset=N seq=S`, then `done`.

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use sockeye_sdk::Client;

/// A note, as every example encodes it: a MessagePack map
/// `{"seq": uint, "text": string}`.
#[derive(Debug, Serialize)]
struct Note<'a> {
    seq: u64,
    text: &'a str,
}

#[derive(Debug, Parser)]
#[command(about = "Publish notes to a Sockeye topic")]
struct Args {
    /// Broker WebSocket URL.
    #[arg(long, env = "SOCKEYE_URL", default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// JWT to authenticate with.
    #[arg(long, env = "SOCKEYE_TOKEN")]
    token: String,
    /// Topic to publish to.
    #[arg(long, env = "SOCKEYE_TOPIC", default_value = "notes.demo")]
    topic: String,
    /// How many notes to publish.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// The text of each note.
    #[arg(default_value = "hello")]
    text: String,
}

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
    for seq in 1..=args.count {
        let note = Note {
            seq,
            text: &args.text,
        };
        let stored = client
            .publish(&args.topic, &note)
            .await
            .with_context(|| format!("publishing note {seq}"))?;
        #[allow(clippy::print_stdout)]
        {
            println!(
                "published {} epoch={} offset={} seq={seq}",
                args.topic, stored.epoch, stored.offset
            );
        }
    }
    client.close().await;
    #[allow(clippy::print_stdout)]
    {
        println!("done");
    }
    Ok(())
}
