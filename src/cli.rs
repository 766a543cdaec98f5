//! The command line: subcommands and their flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Sockeye: a pub/sub message broker with a WebSocket front-end.
#[derive(Debug, Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Print a token signed with the configured (or generated) key.
    Token(TokenArgs),
    /// Print the default configuration file, with comments.
    Config,
}

/// Flags shared by every subcommand that reads the configuration.
#[derive(Debug, Args)]
pub(crate) struct CommonArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Data directory (history store, development secret).
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// Address of the WebSocket listener.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// Address of the admin API listener (overrides `admin.listen`).
    #[arg(long, value_name = "ADDR")]
    pub(crate) admin_listen: Option<SocketAddr>,
    /// Start even if stored topics lost acknowledged messages, giving each
    /// damaged topic a new epoch (sets `store.on_damage = "new_epoch"`; see
    /// docs/operations.md, "A damaged store").
    #[arg(long)]
    pub(crate) reset_damaged_topics: bool,
    /// Where stored topics live: `sled` (this node) or `redis` (a cluster;
    /// sets `engine.kind`).
    #[arg(long, value_name = "KIND")]
    pub(crate) engine: Option<String>,
    /// The Redis server of a cluster (sets `engine.redis.url`).
    #[arg(long, value_name = "URL")]
    pub(crate) redis_url: Option<String>,
}

impl ServeArgs {
    /// Command-line values that override the configuration, as
    /// `(dotted key, value)`.
    pub(crate) fn overrides(&self) -> Vec<(&'static str, String)> {
        let mut overrides = Vec::new();
        if let Some(listen) = self.listen {
            overrides.push(("server.listen", listen.to_string()));
        }
        if let Some(listen) = self.admin_listen {
            overrides.push(("admin.listen", listen.to_string()));
        }
        if self.reset_damaged_topics {
            overrides.push(("store.on_damage", "new_epoch".to_owned()));
        }
        if let Some(engine) = &self.engine {
            overrides.push(("engine.kind", engine.clone()));
        }
        if let Some(url) = &self.redis_url {
            overrides.push(("engine.redis.url", url.clone()));
        }
        overrides
    }
}

#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// The token's subject (`sub` claim).
    #[arg(long, value_name = "NAME")]
    pub(crate) sub: String,
    /// A filter the holder may subscribe to (repeatable; default from config).
    #[arg(long, value_name = "FILTER")]
    pub(crate) subscribe: Vec<String>,
    /// A filter of topics the holder may publish to (repeatable; default from config).
    #[arg(long, value_name = "FILTER")]
    pub(crate) publish: Vec<String>,
    /// Lifetime of the token, like "1h" or "30m".
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub(crate) ttl: humantime::Duration,
    /// Grant access to the admin API.
    #[arg(long)]
    pub(crate) admin: bool,
}
