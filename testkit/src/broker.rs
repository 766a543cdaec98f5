//! The in-process broker: served on 127.0.0.1:0 with its own temporary data
//! directory, tokens minted by its own authenticator, a graceful stop that
//! keeps the directory, and a restart on the same directory and address.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sockeye_broker::auth::unix_now;
use sockeye_broker::{Broker, Claims, Config};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::WAIT;
use crate::wire::{Carrier, Client};

/// How many times a restart retries opening the store or binding the old
/// address (the previous broker may take a moment to release them), and how
/// long it waits between tries: 5 s in all.
const RESTART_ATTEMPTS: u32 = 100;
const RESTART_PAUSE: Duration = Duration::from_millis(50);

/// The configuration every test broker starts from: `data_dir`, a loopback
/// listener on port 0, fast trimming, and short drain and reconnect windows
/// so a stop or a restart is quick.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config::default();
    config.server.data_dir = data_dir.to_path_buf();
    config.server.listen = "127.0.0.1:0".parse().expect("a valid address");
    config.store.trim_interval = Duration::from_millis(50);
    config.shutdown.drain_timeout = Duration::from_secs(5);
    config.shutdown.reconnect_spread = Duration::from_millis(500);
    config
}

/// A real broker serving WebSocket clients on 127.0.0.1 (and, when started
/// with the admin listener, the admin API on another port) until stopped or
/// dropped. Dropping it signals a shutdown without waiting for it.
#[derive(Debug)]
pub struct TestBroker {
    /// The broker itself, for tests that look inside.
    pub broker: Broker,
    /// The address of its WebSocket listener.
    pub addr: SocketAddr,
    /// The configuration it was opened with.
    pub config: Config,
    /// An HTTP client with [`WAIT`] as its timeout that does not follow
    /// redirects.
    #[cfg(feature = "admin")]
    pub http: reqwest::Client,
    pub(crate) admin_addr: Option<SocketAddr>,
    dir: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<std::io::Result<()>>>,
    admin_served: Option<JoinHandle<()>>,
}

impl TestBroker {
    /// Starts a broker with [`test_config`].
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker after `tweak` has changed [`test_config`].
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::launch(tweak, false).await
    }

    /// Opens a broker on a fresh directory and serves it on port 0, with the
    /// admin listener on another port 0 if `admin`.
    pub(crate) async fn launch(tweak: impl FnOnce(&mut Config), admin: bool) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let broker = Broker::open(config.clone())
            .await
            .expect("the broker opens");
        let listener = bind("127.0.0.1:0".parse().expect("a valid address")).await;
        let admin = if admin {
            Some(bind("127.0.0.1:0".parse().expect("a valid address")).await)
        } else {
            None
        };
        Self::serve(broker, config, dir, listener, admin)
    }

    fn serve(
        broker: Broker,
        config: Config,
        dir: tempfile::TempDir,
        listener: TcpListener,
        admin: Option<TcpListener>,
    ) -> Self {
        let addr = listener.local_addr().expect("a bound address");
        let admin_addr = admin
            .as_ref()
            .map(|listener| listener.local_addr().expect("a bound address"));
        let (stop, stopped) = oneshot::channel::<()>();
        let (admin_stop, admin_stopped) = oneshot::channel::<()>();
        // The admin listener stops when the broker is told to, not after it
        // has drained.
        let served = tokio::spawn(broker.clone().serve(listener, async move {
            let _ = stopped.await;
            let _ = admin_stop.send(());
        }));
        let admin_served = admin.map(|listener| serve_admin(&broker, listener, admin_stopped));
        Self {
            broker,
            addr,
            config,
            #[cfg(feature = "admin")]
            http: reqwest::Client::builder()
                .timeout(WAIT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client"),
            admin_addr,
            dir: Some(dir),
            stop: Some(stop),
            served: Some(served),
            admin_served,
        }
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.config.server.data_dir
    }

    /// The WebSocket URL, `ws://ADDR/ws`.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// A token for `sub` with full permissions, valid for an hour.
    pub fn token(&self, sub: &str) -> String {
        self.token_with(Claims {
            sub: sub.into(),
            exp: Some(unix_now() + 3600),
            ..Claims::default()
        })
    }

    /// Like [`TestBroker::token`], with the admin claim.
    pub fn admin_token(&self, sub: &str) -> String {
        self.token_with(Claims {
            sub: sub.into(),
            exp: Some(unix_now() + 3600),
            admin: true,
            ..Claims::default()
        })
    }

    /// A token with exactly these claims, signed by this broker.
    pub fn token_with(&self, claims: Claims) -> String {
        self.broker
            .authenticator()
            .mint(claims)
            .expect("the test broker can mint tokens")
    }

    /// A connected client authenticated as `sub` with full permissions.
    pub async fn client(&self, sub: &str) -> Client {
        Client::connect(&self.url(), Carrier::Header, &self.token(sub))
            .await
            .expect("the broker accepts a valid token")
    }

    /// Shuts the broker down gracefully (clients get 1001) and waits, bounded,
    /// until it has stopped serving. Returns what is needed to start it again
    /// on the same directory and address.
    pub async fn stop(mut self) -> Stopped {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            tokio::time::timeout(WAIT, served)
                .await
                .expect("the broker stops in time")
                .expect("the serve task does not panic")
                .expect("serve ends cleanly");
        }
        if let Some(admin) = self.admin_served.take() {
            tokio::time::timeout(WAIT, admin)
                .await
                .expect("the admin listener stops in time")
                .expect("the admin task does not panic");
        }
        Stopped {
            config: self.config.clone(),
            addr: self.addr,
            admin_addr: self.admin_addr,
            dir: self.dir.take().expect("the directory is kept until stop"),
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A stopped broker's configuration, data directory and addresses.
#[derive(Debug)]
pub struct Stopped {
    /// The configuration it ran with.
    pub config: Config,
    /// The address its WebSocket listener had.
    pub addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    dir: tempfile::TempDir,
}

impl Stopped {
    /// The data directory, still there.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Opens the broker again on the same data directory, without serving
    /// (so a test can publish before clients can reach it).
    pub async fn reopen(&self) -> Broker {
        let mut attempts = 0;
        loop {
            match Broker::open(self.config.clone()).await {
                Ok(broker) => return broker,
                // The previous broker's store may still hold its lock.
                Err(_) if attempts < RESTART_ATTEMPTS => {
                    attempts += 1;
                    tokio::time::sleep(RESTART_PAUSE).await;
                }
                Err(err) => panic!("the broker does not reopen: {err}"),
            }
        }
    }

    /// Serves `broker` on the same address (and admin address) as before.
    pub async fn serve_again(self, broker: Broker) -> TestBroker {
        let listener = rebind(self.addr).await;
        let admin = match self.admin_addr {
            Some(addr) => Some(rebind(addr).await),
            None => None,
        };
        TestBroker::serve(broker, self.config, self.dir, listener, admin)
    }

    /// [`Stopped::reopen`], then [`Stopped::serve_again`].
    pub async fn restart(self) -> TestBroker {
        let broker = self.reopen().await;
        self.serve_again(broker).await
    }
}

async fn bind(addr: SocketAddr) -> TcpListener {
    tokio::time::timeout(WAIT, TcpListener::bind(addr))
        .await
        .expect("bind in time")
        .unwrap_or_else(|err| panic!("cannot bind {addr}: {err}"))
}

/// Binds `addr` again, retrying while the previous listener lets go of it.
async fn rebind(addr: SocketAddr) -> TcpListener {
    let mut attempts = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(_) if attempts < RESTART_ATTEMPTS => {
                attempts += 1;
                tokio::time::sleep(RESTART_PAUSE).await;
            }
            Err(err) => panic!("cannot bind {addr} again: {err}"),
        }
    }
}

#[cfg(feature = "admin")]
fn serve_admin(
    broker: &Broker,
    listener: TcpListener,
    stopped: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    tokio::spawn(sockeye_admin::serve(broker.clone(), listener, async move {
        let _ = stopped.await;
    }))
}

#[cfg(not(feature = "admin"))]
fn serve_admin(
    _broker: &Broker,
    _listener: TcpListener,
    _stopped: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    unreachable!("an admin listener is only bound with the `admin` feature")
}
