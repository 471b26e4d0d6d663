//! Helpers for the etcd sink's integration tests: servers from the environment (a missing one
//! fails the test), unique prefixes cleaned up by a guard, driving the sink through its public
//! API, and a private etcd child process for tests that kill or inspect the whole server.
#![allow(dead_code)]

// Links the plugin so its typetag/inventory registrations exist in every test binary.
use etcdsync_etcd as _;

use etcd_client::{Client, DeleteOptions, GetOptions};
use etcdsync_core::change::Column;
use etcdsync_core::sink::{Sink, SinkConfig, SinkContext, SinkIo};
use etcdsync_core::{Change, Commit, Message, Position, Row, TableId, TableSchema, Value};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The pipeline name and source type the tests build sinks with.
pub const PIPELINE: &str = "test";
pub const SOURCE: &str = "test-source";

/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// An environment variable the test environment must provide.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set. The integration tests need tools/testenv.sh's servers: run `tools/testenv.sh start` \
             and `. target/testenv/env`, or run tools/test.sh (with the integration-tests feature they never skip)"
        )
    })
}

pub fn etcd_url() -> String {
    env("ETCDSYNC_TEST_ETCD")
}

/// A name no other test run uses.
pub fn unique(tag: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{tag}-{:x}-{}-{}",
        nanos & 0xffff_ffff_ffff,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A test's own data and meta prefixes, deleted when dropped.
pub struct Prefixes {
    pub data: String,
    pub meta: String,
    endpoint: String,
    connect: fn(&str) -> Option<etcd_client::ConnectOptions>,
}

impl Prefixes {
    pub fn new(test: &str, endpoint: &str) -> Self {
        Self::with_options(test, endpoint, |_| None)
    }

    pub fn with_options(
        test: &str,
        endpoint: &str,
        connect: fn(&str) -> Option<etcd_client::ConnectOptions>,
    ) -> Self {
        let id = unique(test);
        Self {
            data: format!("/t-{id}"),
            meta: format!("/tmeta-{id}"),
            endpoint: endpoint.to_string(),
            connect,
        }
    }

    /// A sink config with these prefixes and `extra` YAML lines.
    pub fn yaml(&self, extra: &str) -> String {
        format!(
            "type: etcd\nendpoints: [\"{}\"]\nprefix: {}\nmeta_prefix: {}\nretry_max_backoff: 500ms\n{extra}",
            self.endpoint, self.data, self.meta
        )
    }

    pub fn checkpoint_key(&self) -> String {
        format!("{}/checkpoint", self.meta)
    }

    pub fn key(&self, schema: &str, table: &str, id: i64) -> String {
        format!("{}/{schema}/{table}/{id}", self.data)
    }
}

impl Drop for Prefixes {
    fn drop(&mut self) {
        let endpoint = self.endpoint.clone();
        let options = (self.connect)(&endpoint);
        let prefixes = [format!("{}/", self.data), format!("{}/", self.meta)];
        // A thread with its own runtime: drop may run inside (or outside) a test's runtime.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let connected = tokio::time::timeout(
                    Duration::from_secs(5),
                    Client::connect([endpoint], options),
                )
                .await;
                if let Ok(Ok(mut client)) = connected {
                    for prefix in prefixes {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            client.delete(prefix, Some(DeleteOptions::new().with_prefix())),
                        )
                        .await;
                    }
                }
            });
        })
        .join();
    }
}

pub async fn client(endpoint: &str) -> Client {
    Client::connect([endpoint], None)
        .await
        .expect("connect to etcd")
}

/// Every key under `prefix` with its value (as text).
pub async fn dump(client: &mut Client, prefix: &str) -> BTreeMap<String, String> {
    let response = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("get prefix");
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

pub async fn get(client: &mut Client, key: &str) -> Option<String> {
    let response = client.get(key, None).await.expect("get");
    response
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}

/// A table `schema.table (id int primary key, name text, note text)`.
pub fn table(schema: &str, name: &str) -> Arc<TableSchema> {
    Arc::new(TableSchema::new(
        TableId::new(schema, name),
        vec![
            Column::new("id", "int4"),
            Column::new("name", "text"),
            Column::new("note", "text"),
        ],
        vec![0],
    ))
}

pub fn row(id: i64, name: &str) -> Row {
    vec![Value::Int(id), Value::Text(name.into()), Value::Null]
}

/// The JSON the sink writes for [`row`].
pub fn json(id: i64, name: &str) -> String {
    format!("{{\"id\":{id},\"name\":\"{name}\",\"note\":null}}")
}

pub fn insert(table: &Arc<TableSchema>, id: i64, name: &str) -> Change {
    Change::insert(Arc::clone(table), row(id, name))
}

/// Positions compare as text; zero-padding keeps them in order.
pub fn pos(n: u64) -> Position {
    Position::new(format!("p{n:010}"))
}

pub fn commit(n: u64) -> Message {
    Message::Commit(Commit {
        position: pos(n),
        commit_time: Some(SystemTime::now()),
    })
}

/// Parses a sink config from YAML (through typetag, as the CLI does) and validates it.
pub fn parse(yaml: &str) -> etcdsync_core::Result<Box<dyn SinkConfig>> {
    let config: Box<dyn SinkConfig> = serde_yaml::from_str(yaml)
        .map_err(|e| etcdsync_core::Error::config(format!("invalid sink config: {e}")))?;
    config.validate(PIPELINE)?;
    Ok(config)
}

pub async fn build(yaml: &str) -> etcdsync_core::Result<Box<dyn Sink>> {
    parse(yaml)?
        .build(SinkContext {
            name: PIPELINE.into(),
            source_type: SOURCE.into(),
            former_source_names: Vec::new(),
            fence: None,
        })
        .await
}

/// The sink's inspector (`check`, `status`, `verify`, `--repair`) for a YAML config.
pub async fn inspector(yaml: &str) -> Box<dyn etcdsync_core::inspect::SinkInspector> {
    parse(yaml)
        .expect("valid config")
        .inspect(SinkContext {
            name: PIPELINE.into(),
            source_type: SOURCE.into(),
            former_source_names: Vec::new(),
            fence: None,
        })
        .await
        .expect("inspector")
}

/// The checkpoint the sink keeps in etcd, if any.
pub async fn checkpoint_in_etcd(
    client: &mut Client,
    p: &Prefixes,
) -> Option<etcdsync_core::Checkpoint> {
    get(client, &p.checkpoint_key())
        .await
        .map(|text| serde_json::from_str(&text).expect("checkpoint JSON"))
}

/// etcd's current revision.
pub async fn revision_now(etcd: &mut Client) -> i64 {
    etcd.get("/", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

/// A sink running in a task, fed through a channel.
pub struct Running {
    pub tx: mpsc::Sender<Message>,
    pub acked: watch::Receiver<Option<Position>>,
    pub handle: JoinHandle<etcdsync_core::Result<()>>,
    pub shutdown: CancellationToken,
}

pub async fn start(yaml: &str) -> Running {
    let sink = build(yaml).await.expect("build the sink");
    run(sink)
}

pub fn run(sink: Box<dyn Sink>) -> Running {
    let (tx, input) = mpsc::channel(16);
    let (ack_tx, acked) = watch::channel(None);
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(sink.run(SinkIo {
        input,
        acked: ack_tx,
        shutdown: shutdown.clone(),
        fetcher: None,
    }));
    Running {
        tx,
        acked,
        handle,
        shutdown,
    }
}

impl Running {
    pub async fn send(&self, message: Message) {
        self.tx.send(message).await.expect("the sink stopped early");
    }

    /// One source transaction: its changes, then the commit at position `n`.
    pub async fn txn(&self, changes: Vec<Change>, n: u64) {
        self.send(Message::Changes(changes)).await;
        self.send(commit(n)).await;
    }

    pub fn last_ack(&self) -> Option<Position> {
        self.acked.borrow().clone()
    }

    /// Waits until the acknowledged position reaches `position` (acks may skip positions).
    pub async fn wait_ack(&mut self, position: &Position) {
        let wait = async {
            loop {
                if self
                    .acked
                    .borrow_and_update()
                    .as_ref()
                    .is_some_and(|p| p.as_str() >= position.as_str())
                {
                    return;
                }
                if self.acked.changed().await.is_err() {
                    panic!("the sink stopped before acknowledging {position}");
                }
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("no ack of {position} in time"));
    }

    /// Closes the input and returns the sink's result.
    pub async fn close(self) -> etcdsync_core::Result<()> {
        drop(self.tx);
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("sink finished in time")
            .expect("sink task")
    }

    /// Waits for the sink to stop on its own (after an error) and returns its result.
    pub async fn result(self) -> etcdsync_core::Result<()> {
        let Running { tx, handle, .. } = self;
        let result = tokio::time::timeout(PATIENCE, handle)
            .await
            .expect("sink stopped in time")
            .expect("sink task");
        drop(tx);
        result
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A private single-member etcd child process on free ports, with its own data dir; killed
/// and removed when dropped.
pub struct PrivateEtcd {
    pub dir: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    /// Extra etcd flags (`--max-txn-ops=32`, …).
    args: Vec<String>,
    child: Option<Child>,
}

impl PrivateEtcd {
    pub async fn start(tag: &str) -> Self {
        Self::start_with(tag, &[]).await
    }

    /// [`Self::start`] with extra etcd flags.
    pub async fn start_with(tag: &str, args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("etcdsync-{}", unique(tag)));
        std::fs::create_dir_all(&dir).expect("create etcd dir");
        let mut etcd = Self {
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        etcd.spawn();
        etcd.wait_ready().await;
        etcd
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let bin = std::env::var("ETCDSYNC_TEST_ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("etcd log file");
        let child = Command::new(&bin)
            .arg("--name=private")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={}", self.url()))
            .arg(format!("--advertise-client-urls={}", self.url()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=private={peer}"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{bin}` (install etcd-server, or set ETCDSYNC_TEST_ETCD_BIN): {e}"));
        self.child = Some(child);
    }

    pub async fn wait_ready(&self) {
        let url = self.url();
        let ready = async {
            loop {
                if let Ok(Ok(mut client)) = tokio::time::timeout(
                    Duration::from_secs(2),
                    Client::connect([url.as_str()], None),
                )
                .await
                {
                    if let Ok(Ok(_)) =
                        tokio::time::timeout(Duration::from_secs(2), client.get("/", None)).await
                    {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(PATIENCE, ready)
            .await
            .unwrap_or_else(|_| {
                let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
                panic!("private etcd on {url} did not come up; log:\n{log}")
            });
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same data dir and ports.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }
}

impl Drop for PrivateEtcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
