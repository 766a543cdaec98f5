//! A real broker run in-process for tests: it binds 127.0.0.1:0, keeps its
//! data in a temporary directory, and can be stopped and started again on the
//! same directory and port. Also used (by path) by the example crates' tests.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use sockeye_broker::{Broker, Claims, Config};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A broker serving on loopback until stopped or dropped.
pub struct TestBroker {
    pub broker: Broker,
    pub addr: SocketAddr,
    pub config: Config,
    dir: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// The configuration tests start from: a temporary data directory and a
/// short reconnect spread, so clients return quickly after a restart.
pub fn test_config(dir: &tempfile::TempDir) -> Config {
    let mut config = Config::default();
    config.server.data_dir = dir.path().to_owned();
    config.server.listen = "127.0.0.1:0".parse().expect("a valid address");
    config.shutdown.reconnect_spread = Duration::from_millis(100);
    config
}

impl TestBroker {
    /// Starts a broker with the default test configuration.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker after letting `adjust` change the configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut config = test_config(&dir);
        adjust(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(config, dir, listener).await
    }

    async fn serve(config: Config, dir: tempfile::TempDir, listener: TcpListener) -> Self {
        let broker = Broker::open(config.clone())
            .await
            .expect("the broker opens");
        Self::serve_broker(broker, config, dir, listener)
    }

    /// Serves an already opened broker (for example one that was given
    /// messages before accepting connections).
    pub fn serve_broker(
        broker: Broker,
        config: Config,
        dir: tempfile::TempDir,
        listener: TcpListener,
    ) -> Self {
        let addr = listener.local_addr().expect("a bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(broker.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            broker,
            addr,
            config,
            dir: Some(dir),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The WebSocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// A token for `subject`, valid for an hour.
    pub fn token(&self, subject: &str) -> String {
        self.token_with(Claims {
            sub: subject.to_owned(),
            exp: Some(sockeye_broker::auth::unix_now() + 3600),
            ..Claims::default()
        })
    }

    /// A token with the given claims.
    pub fn token_with(&self, claims: Claims) -> String {
        self.broker
            .authenticator()
            .mint(claims)
            .expect("the test broker can mint tokens")
    }

    /// Shuts the broker down gracefully (clients get 1001) and waits until
    /// it has released its store. Returns what is needed to start it again.
    pub async fn stop(mut self) -> Stopped {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("the serve task does not panic")
                .expect("serve ends cleanly");
        }
        let dir = self.dir.take().expect("the directory is kept until stop");
        Stopped {
            config: self.config.clone(),
            addr: self.addr,
            dir,
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

/// A stopped broker's configuration, directory and address.
pub struct Stopped {
    pub config: Config,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Stopped {
    /// Opens the broker again on the same data directory, without serving.
    pub async fn reopen(&self) -> Broker {
        // The previous broker's store may take a moment to release its lock.
        let mut attempts = 0;
        loop {
            match Broker::open(self.config.clone()).await {
                Ok(broker) => return broker,
                Err(err) if attempts < 100 => {
                    attempts += 1;
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("the broker does not reopen: {err}"),
            }
        }
    }

    /// Serves `broker` on the same address as before.
    pub async fn serve_again(self, broker: Broker) -> TestBroker {
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(err) if attempts < 100 => {
                    attempts += 1;
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("cannot bind {} again: {err}", self.addr),
            }
        };
        TestBroker::serve_broker(broker, self.config, self.dir, listener)
    }
}
