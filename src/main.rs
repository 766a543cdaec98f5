//! The `sockeye` binary: command line, configuration loading and wiring.
//!
//! - `sockeye serve`: runs the broker and, when `admin.enabled`, the admin
//!   API on its own listener; both stop on SIGINT or SIGTERM.
//! - `sockeye token`: prints a token signed with the configured key.
//! - `sockeye config`: prints the default configuration file.

mod cli;
mod settings;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sockeye_broker::{Broker, Claims};
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, ServeArgs, TokenArgs};

/// mimalloc instead of glibc's malloc: every publish allocates and frees a
/// few small buffers, often on two worker threads (a delivery is encoded by
/// the publisher's task and dropped by the subscriber's); glibc's malloc and
/// free were 11% of the broker's instructions per delivery at 1->1.
/// Measured (docs/benchmarks.md, "Allocator"): -8% instructions per
/// delivery, idle connections 3% smaller. Transparent huge pages are off
/// (`no_thp`): with them every thread's first segment was a resident 2 MiB
/// page, +40 MiB of RSS at start.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
        #[allow(clippy::print_stdout, reason = "the file is the command's output")]
        Command::Config => {
            print!("{}", settings::DEFAULT_CONFIG);
            Ok(())
        }
    }
}

/// Dependencies whose `debug` and `trace` events can show what crosses the
/// wire: tungstenite dumps every frame's payload at `trace` (a `refresh`
/// frame holds a token), and the HTTP stack may print request heads
/// (`Authorization`, `?token=`). Their events above `info` are dropped
/// whatever `RUST_LOG` says, so no level logs a token.
const CAPPED_TARGETS: [&str; 10] = [
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "hyper_util",
    "h2",
    "axum",
    "axum_core",
    "tower",
    "rustls",
    "tokio_rustls",
];

fn init_logging() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let requested = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // sled logs an error for every handle it drops after an I/O error (a
    // full disk: dozens of lines per recovery attempt); the broker reports
    // store failures itself, once. Ask for `sled=...` to see them.
    if !requested.contains("sled") {
        filter = filter.add_directive("sled=off".parse().expect("`sled=off` is a valid directive"));
    }
    // A second, fixed filter: an event is logged only if both let it pass.
    // Its default is the first filter's most verbose level, not TRACE: the
    // subscriber's level hint is the larger of the two, and it becomes the
    // `log` crate's max level, so a TRACE default would make every
    // `log::trace!` of the WebSocket stack build a record per frame only to
    // be filtered out (about 2,700 instructions per delivery at 1->1).
    let most_verbose = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let cap = Targets::new()
        .with_default(most_verbose)
        .with_targets(CAPPED_TARGETS.map(|target| (target, LevelFilter::INFO)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .finish()
        .with(cap)
        .init();
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let config = settings::load(&args.common, args.overrides())?;
    warn_of_ephemeral_topics(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listen = config.server.listen;
        let data_dir = config.server.data_dir.clone();
        let admin = config.admin.clone();
        let admin_tls = config.tls.admin;
        let drain_timeout = config.shutdown.drain_timeout;
        let broker = Broker::open(config)
            .await
            .context("cannot start the broker")?;
        #[cfg(unix)]
        reload_tls_on_sighup(broker.clone())?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let admin_listener = if admin.enabled {
            let admin_listener = tokio::net::TcpListener::bind(admin.listen)
                .await
                .with_context(|| format!("cannot listen on {} for the admin API", admin.listen))?;
            Some(admin_listener)
        } else {
            None
        };
        // One shutdown for both listeners: a signal, or the broker stopping.
        let shutdown = CancellationToken::new();
        let signal = shutdown_signal()?;
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                signal.await;
                shutdown.cancel();
            }
        });
        let admin_task = admin_listener.map(|admin_listener| {
            tracing::info!(
                listen = %admin_listener.local_addr().unwrap_or(admin.listen),
                tls = admin_tls,
                "sockeye is serving the admin API (Swagger UI at /docs)"
            );
            tokio::spawn(sockeye_admin::serve(
                broker.clone(),
                admin_listener,
                shutdown.clone().cancelled_owned(),
            ))
        });
        tracing::info!(
            listen = %listener.local_addr().unwrap_or(listen),
            data_dir = %data_dir.display(),
            "sockeye is serving WebSocket clients at /ws"
        );
        let served = broker
            .serve(listener, shutdown.clone().cancelled_owned())
            .await;
        shutdown.cancel();
        if let Some(admin_task) = admin_task {
            match tokio::time::timeout(drain_timeout, admin_task).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::error!(cause = %err, "the admin API task panicked"),
                Err(_) => tracing::warn!("admin requests did not finish in time"),
            }
        }
        served?;
        tracing::info!("sockeye stopped");
        Ok(())
    })
}

/// Reloads the TLS certificate whenever the process gets SIGHUP.
#[cfg(unix)]
fn reload_tls_on_sighup(broker: Broker) -> anyhow::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match broker.reload_tls() {
                Ok(()) if broker.tls().is_some() => tracing::info!("reloaded the TLS certificate"),
                Ok(()) => tracing::info!("SIGHUP ignored: TLS is not configured"),
                Err(err) => {
                    tracing::error!(cause = %err, "TLS reload failed; keeping the current certificate")
                }
            }
        }
    });
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled, so a signal sent as soon as
/// the listeners are announced is not lost (nor fatal).
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    Ok(async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(cause = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    })
}

/// Says loudly when some topics will keep no history because of the
/// retention rules: `[[retention]]` entries in a file replace the built-in
/// rule (`pattern = ">"`, stored) instead of being added to it, so one rule
/// for `chat.>` alone leaves every other topic live-only.
fn warn_of_ephemeral_topics(config: &sockeye_broker::Config) {
    if config.retention.iter().any(|rule| rule.pattern == ">") {
        return;
    }
    let patterns: Vec<&str> = config
        .retention
        .iter()
        .map(|rule| rule.pattern.as_str())
        .collect();
    tracing::warn!(
        rules = ?patterns,
        "no retention rule has pattern \">\": topics that match none of these are ephemeral \
         (live only, no history, no resume); [[retention]] rules replace the built-in one, \
         so add a last rule with pattern = \">\" to store the others"
    );
}

#[allow(clippy::print_stdout, reason = "the token is the command's output")]
fn token(args: TokenArgs) -> anyhow::Result<()> {
    let config = settings::load(&args.common, Vec::new())?;
    let authenticator = sockeye_broker::Authenticator::from_config(
        &config.auth,
        &config.server.data_dir,
        config.limits.max_topic_length,
    )
    .context("cannot load the signing key")?;
    if authenticator.generated_secret() {
        eprintln!(
            "sockeye: generated a development signing secret in {}",
            config.server.data_dir.display()
        );
    }
    let now = sockeye_broker::auth::unix_now();
    let ttl: Duration = args.ttl.into();
    let claims = Claims {
        sub: args.sub,
        exp: Some(now + ttl.as_secs().max(1)),
        iat: Some(now),
        subscribe: (!args.subscribe.is_empty()).then_some(args.subscribe),
        publish: (!args.publish.is_empty()).then_some(args.publish),
        admin: args.admin,
        ..Claims::default()
    };
    let token = authenticator
        .mint(claims)
        .context("cannot sign the token")?;
    println!("{token}");
    Ok(())
}
