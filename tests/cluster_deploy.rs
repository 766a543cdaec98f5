//! The example cluster's files in `deploy/cluster/` agree with each other
//! and with what cluster mode needs: the three node files differ only in
//! their listeners, data directory and node name (same secret file, Redis,
//! key prefix and retention rules); nginx forwards to exactly those three
//! listeners, and `nginx -t` accepts the file; Redis started with
//! `redis.conf` runs with the append-only file fsynced on every write and
//! keeps what it acknowledged across a SIGKILL. (`tests/cluster_nginx.rs`
//! runs the whole example under load.)
//!
//! `redis-server` and nginx must be installed; the tests fail, not skip,
//! without them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use support::cluster::{NGINX_CONF, NGINX_LISTEN, NGINX_NODES, Nginx, Redis, unused_port};

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/cluster")
        .join(name)
}

fn node_file(letter: char) -> toml::Table {
    let path = deploy_file(&format!("node-{letter}.toml"));
    std::fs::read_to_string(&path)
        .unwrap()
        .parse()
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Removes the dotted `key` from `table` and returns its value.
fn take(table: &mut toml::Table, key: &str) -> toml::Value {
    let (parents, last) = key.rsplit_once('.').expect("a dotted key");
    let mut at = &mut *table;
    for part in parents.split('.') {
        at = at
            .get_mut(part)
            .and_then(toml::Value::as_table_mut)
            .unwrap_or_else(|| panic!("no [{parents}]"));
    }
    at.remove(last).unwrap_or_else(|| panic!("no {key}"))
}

#[test]
fn the_node_files_differ_only_in_listeners_data_dir_and_name() {
    let mut shared = None;
    let mut listens = Vec::new();
    let mut admins = BTreeSet::new();
    let mut data_dirs = BTreeSet::new();
    let mut names = BTreeSet::new();
    for letter in ['a', 'b', 'c'] {
        let mut node = node_file(letter);
        assert_eq!(
            node["engine"]["kind"].as_str(),
            Some("redis"),
            "node-{letter}"
        );
        assert!(
            node["auth"].get("secret_file").is_some() && node["auth"].get("secret").is_none(),
            "node-{letter} reads the shared key from a file"
        );
        assert!(
            node.get("retention").is_some(),
            "node-{letter} states its retention rules"
        );
        listens.push(
            take(&mut node, "server.listen")
                .as_str()
                .unwrap()
                .to_owned(),
        );
        admins.insert(take(&mut node, "admin.listen").as_str().unwrap().to_owned());
        data_dirs.insert(
            take(&mut node, "server.data_dir")
                .as_str()
                .unwrap()
                .to_owned(),
        );
        names.insert(
            take(&mut node, "engine.redis.node_name")
                .as_str()
                .unwrap()
                .to_owned(),
        );
        // Everything else, the same for all three.
        match &shared {
            None => shared = Some(node),
            Some(first) => assert_eq!(first, &node, "node-{letter} differs from node-a"),
        }
    }
    assert_eq!(
        listens, NGINX_NODES,
        "nginx forwards to the three nodes, in order"
    );
    assert_eq!(admins.len(), 3, "{admins:?}");
    assert_eq!(data_dirs.len(), 3, "{data_dirs:?}");
    assert_eq!(
        names,
        BTreeSet::from([
            "node-a".to_owned(),
            "node-b".to_owned(),
            "node-c".to_owned()
        ])
    );
    let all: BTreeSet<&String> = listens.iter().chain(&admins).collect();
    assert_eq!(all.len(), 6, "six distinct listeners");
    assert!(
        !all.contains(&NGINX_LISTEN.to_owned()),
        "nginx has its own port"
    );
    // The Redis they share is the one redis.conf configures.
    let shared = shared.unwrap();
    let url = shared["engine"]["redis"]["url"].as_str().unwrap();
    let redis_conf = std::fs::read_to_string(deploy_file("redis.conf")).unwrap();
    let directive = |name: &str| {
        redis_conf
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("redis.conf sets {name}"))
            .trim()
            .to_owned()
    };
    assert_eq!(
        url,
        format!("redis://{}:{}", directive("bind"), directive("port")),
        "the nodes' Redis is redis.conf's"
    );
    // Only loopback addresses in an example meant for one host.
    for addr in listens.iter().chain(&admins) {
        let addr: SocketAddr = addr.parse().unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
    }
    assert!(NGINX_CONF.contains(&format!("listen {NGINX_LISTEN};")));
}

#[test]
fn nginx_accepts_the_cluster_config() {
    let dir = tempfile::tempdir().unwrap();
    let port = |_| SocketAddr::from(([127, 0, 0, 1], unused_port()));
    let nodes = [0, 1, 2].map(port);
    let output = Nginx::check(dir.path(), port(3), nodes);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "nginx -t: {stderr}");
    assert!(stderr.contains("test is successful"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_conf_fsyncs_every_write_and_keeps_it_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start_with(dir.path(), Some(&deploy_file("redis.conf")), &[]).await;
    assert_eq!(redis.config_get("appendonly").await, "yes");
    assert_eq!(redis.config_get("appendfsync").await, "always");
    assert_eq!(redis.config_get("save").await, "");
    assert_eq!(redis.config_get("maxmemory-policy").await, "noeviction");
    assert_eq!(redis.cli(&["SET", "acked", "kept"]).await, "OK");
    redis.kill().await;
    redis.restart_with(&[]).await;
    assert_eq!(redis.cli(&["GET", "acked"]).await, "kept");
    redis.terminate().await;
}
