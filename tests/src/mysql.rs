//! MariaDB helpers for the `mysql_*` tests: databases per test (dropped by a guard), a source
//! harness with an acknowledging in-memory sink, the state a sink would hold after a message
//! stream, the database's state as a fresh snapshot sees it, and etcd read-back (DESIGN §2–3).

use etcdsync_core::encode::json::encode_row;
use etcdsync_core::encode::key::{row_key, table_prefix};
use etcdsync_core::source::{SourceConfig, SourceContext, SourceIo};
use etcdsync_core::{Checkpoint, Message, Op, Position};
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// An environment variable of `tools/testenv.sh`; missing → panic (never skip).
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run tools/testenv.sh start and source target/testenv/env")
    })
}

/// The test server's URL (`ETCDSYNC_TEST_MYSQL`), with a trailing `/`.
pub fn url() -> String {
    let url = env("ETCDSYNC_TEST_MYSQL");
    if url.ends_with('/') || url.contains('?') {
        url
    } else {
        format!("{url}/")
    }
}

/// A name unique to this process and call, usable as database name and etcd prefix.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 1_000_000)
        .unwrap_or(0);
    format!("{prefix}_{}_{t}_{n}", std::process::id())
}

pub async fn connect() -> Conn {
    let url = url();
    let opts = Opts::from_url(&url).unwrap_or_else(|e| panic!("bad ETCDSYNC_TEST_MYSQL: {e}"));
    let mut conn = Conn::new(opts)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to MariaDB at {url}: {e}"));
    conn.query_drop("SET NAMES utf8mb4, time_zone = '+00:00'")
        .await
        .expect("session setup");
    conn
}

/// Runs statements separated by `;\n` one by one (so errors name the statement).
pub async fn exec(conn: &mut Conn, sql: &str) {
    for statement in sql.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
        conn.query_drop(statement)
            .await
            .unwrap_or_else(|e| panic!("`{statement}`: {e}"));
    }
}

/// Databases that exist for one test and are dropped when it ends.
pub struct TestDbs {
    pub names: Vec<String>,
}

impl TestDbs {
    pub async fn create(prefix: &str, count: usize) -> TestDbs {
        let mut conn = connect().await;
        let names: Vec<String> = (0..count).map(|_| unique(prefix)).collect();
        for name in &names {
            conn.query_drop(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
                .await
                .expect("create database");
        }
        TestDbs { names }
    }

    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }
}

impl Drop for TestDbs {
    fn drop(&mut self) {
        let names = self.names.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(opts) = Opts::from_url(&url()) else {
                    return;
                };
                let Ok(mut conn) = Conn::new(opts).await else {
                    return;
                };
                for name in names {
                    let _ = conn
                        .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// `source:` YAML of a `mysql` source over the test server.
pub fn source_yaml(include: &[String], extra: &str) -> String {
    let include = include
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "type: mysql\nurl: \"{}\"\ntables: {{ include: [{include}] }}\n{extra}",
        url()
    )
}

/// The source alone, with a sink that records every message and acknowledges every position.
pub struct SourceRun {
    pub messages: Arc<Mutex<Vec<Message>>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<etcdsync_core::Result<()>>,
    sink: tokio::task::JoinHandle<Option<Position>>,
}

/// Builds the source from YAML (panics on a build error; see [`build_error`]).
pub async fn build(
    yaml: &str,
    name: &str,
    resume: Option<Position>,
) -> etcdsync_core::Result<Box<dyn etcdsync_core::source::Source>> {
    let config: Box<dyn SourceConfig> = serde_yaml::from_str(yaml).expect("source yaml");
    config.validate(name)?;
    let resume = resume.map(|position| Checkpoint {
        source: "mysql".into(),
        position,
        committed_at: None,
        applied_at: "2000-01-01T00:00:00Z".into(),
    });
    config
        .build(SourceContext {
            name: name.into(),
            resume,
        })
        .await
}

impl SourceRun {
    pub async fn start(yaml: &str, name: &str, resume: Option<Position>) -> SourceRun {
        let source = build(yaml, name, resume)
            .await
            .unwrap_or_else(|e| panic!("build source: {e}"));
        let (tx, mut rx) = mpsc::channel(16);
        let (ack_tx, ack_rx) = watch::channel(None);
        let shutdown = CancellationToken::new();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let recorded = messages.clone();
        let sink = tokio::spawn(async move {
            let mut last = None;
            while let Some(message) = rx.recv().await {
                let position = match &message {
                    Message::Commit(commit) => Some(commit.position.clone()),
                    Message::SnapshotFinished { position } | Message::Heartbeat { position } => {
                        Some(position.clone())
                    }
                    _ => None,
                };
                if let Ok(mut all) = recorded.lock() {
                    all.push(message);
                }
                if let Some(position) = position {
                    last = Some(position.clone());
                    let _ = ack_tx.send(Some(position));
                }
            }
            last
        });
        let io = SourceIo {
            output: tx,
            acked: ack_rx,
            shutdown: shutdown.clone(),
        };
        let task = tokio::spawn(source.run(io));
        SourceRun {
            messages,
            shutdown,
            task,
            sink,
        }
    }

    pub fn snapshot(&self) -> Vec<Message> {
        self.messages.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Waits until `done` holds for the messages so far (panics after `timeout`).
    pub async fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&[Message]) -> bool) {
        let start = Instant::now();
        loop {
            if let Ok(all) = self.messages.lock() {
                if done(&all) {
                    return;
                }
            }
            assert!(
                !self.task.is_finished(),
                "source stopped while waiting for {what}"
            );
            assert!(start.elapsed() < timeout, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the source task to end on its own and returns its result.
    pub async fn join(self, timeout: Duration) -> etcdsync_core::Result<()> {
        match tokio::time::timeout(timeout, self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => panic!("source panicked: {e}"),
            Err(_) => panic!("source did not end within {timeout:?}"),
        }
    }

    /// Stops the source; returns every message and the last acknowledged position.
    pub async fn stop(self) -> (Vec<Message>, Option<Position>) {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(20), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("source failed: {e}"),
            Ok(Err(e)) => panic!("source panicked: {e}"),
            Err(_) => panic!("source did not stop within 20 s"),
        }
        let last = self.sink.await.unwrap_or(None);
        let messages = self.messages.lock().map(|m| m.clone()).unwrap_or_default();
        (messages, last)
    }
}

pub fn snapshot_done(messages: &[Message]) -> bool {
    messages
        .iter()
        .any(|m| matches!(m, Message::SnapshotFinished { .. }))
}

pub fn commits(messages: &[Message]) -> usize {
    messages
        .iter()
        .filter(|m| matches!(m, Message::Commit(_)))
        .count()
}

/// The key → JSON value map a sink holds after applying `messages` in order.
pub fn apply(messages: &[Message], prefix: &str) -> BTreeMap<String, String> {
    let mut state = BTreeMap::new();
    apply_into(&mut state, messages, prefix);
    state
}

pub fn apply_into(state: &mut BTreeMap<String, String>, messages: &[Message], prefix: &str) {
    for message in messages {
        let Message::Changes(changes) = message else {
            continue;
        };
        for change in changes {
            let schema = &change.table;
            let key =
                |row: &[etcdsync_core::Value]| row_key(prefix, &schema.id, schema.key_values(row));
            let json = |row: &[etcdsync_core::Value]| {
                String::from_utf8(encode_row(schema, row).expect("encode row")).expect("utf8")
            };
            match &change.op {
                Op::Insert { row } => {
                    state.insert(key(row), json(row));
                }
                Op::Update { old, row } => {
                    if let Some(old) = old {
                        state.remove(&key(old));
                    }
                    state.insert(key(row), json(row));
                }
                Op::Delete { old } => {
                    state.remove(&key(old));
                }
                Op::Truncate => {
                    let prefix = table_prefix(prefix, &schema.id);
                    state.retain(|k, _| !k.starts_with(&prefix));
                }
            }
        }
    }
}

/// The database's state as a fresh snapshot of `include` sees it.
pub async fn db_state(include: &[String], prefix: &str) -> BTreeMap<String, String> {
    let run = SourceRun::start(&source_yaml(include, ""), &unique("state"), None).await;
    run.wait_for("state snapshot", Duration::from_secs(60), snapshot_done)
        .await;
    let (messages, _) = run.stop().await;
    apply(&messages, prefix)
}

/// Every key and value under `prefix` in etcd.
pub async fn etcd_dump(client: &mut etcd_client::Client, prefix: &str) -> BTreeMap<String, String> {
    let options = etcd_client::GetOptions::new().with_prefix();
    let response = client.get(prefix, Some(options)).await.expect("etcd get");
    response
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect()
}

pub async fn etcd() -> etcd_client::Client {
    let endpoint = env("ETCDSYNC_TEST_ETCD");
    etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to etcd at {endpoint}: {e}"))
}

/// Deletes etcd prefixes when dropped.
pub struct EtcdPrefixGuard(pub Vec<String>);

impl Drop for EtcdPrefixGuard {
    fn drop(&mut self) {
        let prefixes = self.0.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(endpoint) = std::env::var("ETCDSYNC_TEST_ETCD") else {
                    return;
                };
                let Ok(mut client) = etcd_client::Client::connect([endpoint.as_str()], None).await
                else {
                    return;
                };
                for prefix in prefixes {
                    let _ = client
                        .delete(
                            prefix,
                            Some(etcd_client::DeleteOptions::new().with_prefix()),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

/// Polls until `f` returns true or `timeout` passes; returns whether it became true.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
