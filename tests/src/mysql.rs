//! MariaDB helpers for the `mysql_*` tests: databases per test (dropped by a guard), a source
//! harness with an acknowledging in-memory sink, the state a sink would hold after a message
//! stream, the database's state as a fresh snapshot sees it, and etcd read-back (DESIGN §2–3).

pub use crate::common::{env, etcd, etcd_count, etcd_dump, eventually, unique, EtcdPrefixGuard};
use etcdsync_core::config::PipelineConfig;
use etcdsync_core::encode::json::encode_row;
use etcdsync_core::encode::key::{row_key, table_prefix};
use etcdsync_core::source::{SourceConfig, SourceContext};
use etcdsync_core::{Checkpoint, Message, Op, Position, TableId};
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The test server's URL (`ETCDSYNC_TEST_MYSQL`), with a trailing `/`.
pub fn url() -> String {
    let url = env("ETCDSYNC_TEST_MYSQL");
    if url.ends_with('/') || url.contains('?') {
        url
    } else {
        format!("{url}/")
    }
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

/// `tables.include` globs selecting every table of the test's databases.
pub fn includes(dbs: &TestDbs) -> Vec<String> {
    dbs.names.iter().map(|n| format!("{n}.*")).collect()
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
    name: String,
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
    let written_tables = if resume.is_some() {
        written_by(name)
    } else {
        Default::default()
    };
    config
        .build(SourceContext {
            name: name.into(),
            resume,
            fence: None,
            written_tables,
        })
        .await
}

/// Tables a recorded run of pipeline `name` received rows of, as the etcd sink's table markers
/// keep them: what a resumed source is told the sink holds.
fn written_by(name: &str) -> std::collections::HashSet<TableId> {
    WRITTEN
        .lock()
        .map(|all| all.get(name).cloned().unwrap_or_default())
        .unwrap_or_default()
}

fn record_written(name: &str, messages: &[Message]) {
    let tables = messages.iter().flat_map(|m| match m {
        Message::Changes(changes) => changes.iter().map(|c| c.table.id.clone()).collect(),
        _ => Vec::new(),
    });
    if let Ok(mut all) = WRITTEN.lock() {
        all.entry(name.to_string()).or_default().extend(tables);
    }
}

static WRITTEN: std::sync::LazyLock<
    Mutex<std::collections::HashMap<String, std::collections::HashSet<TableId>>>,
> = std::sync::LazyLock::new(Default::default);

impl SourceRun {
    pub async fn start(yaml: &str, name: &str, resume: Option<Position>) -> SourceRun {
        let source = build(yaml, name, resume)
            .await
            .unwrap_or_else(|e| panic!("build source: {e}"));
        let run = crate::common::run_recorded(source, true);
        SourceRun {
            name: name.to_string(),
            messages: run.messages,
            shutdown: run.shutdown,
            task: run.task,
            sink: run.sink,
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
        record_written(&self.name, &messages);
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

/// A snapshot step (the first snapshot, or a copy while streaming) removes, when it finishes,
/// the keys of its tables it did not write, as the etcd sink does.
pub fn apply_into(state: &mut BTreeMap<String, String>, messages: &[Message], prefix: &str) {
    let mut step: Option<(Vec<String>, std::collections::HashSet<String>)> = None;
    for message in messages {
        let changes = match message {
            Message::SnapshotStarted { tables } => {
                let prefixes = tables.iter().map(|t| table_prefix(prefix, t)).collect();
                step = Some((prefixes, std::collections::HashSet::new()));
                continue;
            }
            Message::SnapshotFinished { .. } => {
                if let Some((prefixes, written)) = step.take() {
                    state.retain(|k, _| {
                        written.contains(k) || !prefixes.iter().any(|p| k.starts_with(p))
                    });
                }
                continue;
            }
            Message::Changes(changes) => changes,
            _ => continue,
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
                    if let Some((_, written)) = &mut step {
                        written.insert(key(row));
                    }
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

/// Rows encoded as the sink would store them, split into the snapshot (by id) and the binlog
/// (`(op, id, json)` in order; deletes give their old row). The first column must be an INT id;
/// it is zeroed in the JSON so rows with different ids compare equal.
pub type Phases = (BTreeMap<i64, String>, Vec<(String, i64, String)>);

pub fn split_phases(messages: &[Message]) -> Phases {
    let mut snapshot = BTreeMap::new();
    let mut binlog = Vec::new();
    let mut in_snapshot = true;
    for message in messages {
        match message {
            Message::SnapshotFinished { .. } => in_snapshot = false,
            Message::Changes(changes) => {
                for change in changes {
                    let (what, row) = match &change.op {
                        Op::Insert { row } => ("insert", row),
                        Op::Update { row, .. } => ("update", row),
                        Op::Delete { old } => ("delete", old),
                        Op::Truncate => continue,
                    };
                    let etcdsync_core::Value::Int(id) = row[0] else {
                        panic!("the first column is an int id: {:?}", row[0])
                    };
                    let mut without_id = row.clone();
                    without_id[0] = etcdsync_core::Value::Int(0);
                    let json =
                        String::from_utf8(encode_row(&change.table, &without_id).expect("encode"))
                            .expect("utf8");
                    if in_snapshot {
                        snapshot.insert(id, json);
                    } else {
                        binlog.push((what.to_string(), id, json));
                    }
                }
            }
            _ => {}
        }
    }
    (snapshot, binlog)
}

/// Asserts that every binlog row `id` encodes exactly like snapshot row `id % 100`.
pub fn assert_parity(phases: &Phases) {
    let (snapshot, binlog) = phases;
    for (what, id, json) in binlog {
        let original = id % 100;
        assert_eq!(
            Some(json),
            snapshot.get(&original),
            "{what} of row {id} differs from the snapshot of row {original}"
        );
    }
}

/// The database's state as a fresh snapshot of `include` sees it.
pub async fn db_state(include: &[String], prefix: &str) -> BTreeMap<String, String> {
    db_state_yaml(&source_yaml(include, ""), prefix).await
}

/// The database's state as a fresh snapshot with this `source:` YAML sees it (its own
/// `server_id`, as the source under test may still be streaming).
pub async fn db_state_yaml(yaml: &str, prefix: &str) -> BTreeMap<String, String> {
    let yaml: String = yaml
        .lines()
        .filter(|l| !l.starts_with("server_id:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let run = SourceRun::start(&yaml, &unique("state"), None).await;
    run.wait_for("state snapshot", Duration::from_secs(120), snapshot_done)
        .await;
    let (messages, _) = run.stop().await;
    apply(&messages, prefix)
}

/// A replica server id no other test process uses at the same time.
pub fn unique_server_id() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    1_000_000 + (std::process::id() % 100_000) * 100 + COUNTER.fetch_add(1, Ordering::Relaxed) % 100
}

/// The environment variable that makes [`child_pipeline_main`] run a pipeline.
pub const CHILD_CONFIG_ENV: &str = "ETCDSYNC_TEST_CHILD_PIPELINE";

/// The body of a helper test that [`PipelineProcess`] runs in a child process: when
/// `ETCDSYNC_TEST_CHILD_PIPELINE` names a config file, runs that pipeline with
/// `core::pipeline::run` until the process is killed (or the pipeline fails); otherwise `None`.
pub async fn child_pipeline_main() -> Option<etcdsync_core::Result<()>> {
    let path = std::env::var(CHILD_CONFIG_ENV).ok()?;
    let config = etcdsync_core::config::PipelineConfig::load(std::path::Path::new(&path))
        .unwrap_or_else(|e| panic!("child pipeline config {path}: {e}"));
    eprintln!(
        "child pipeline {} started (pid {})",
        config.name,
        std::process::id()
    );
    Some(etcdsync_core::pipeline::run(&config, CancellationToken::new()).await)
}

/// A pipeline in a child process (the current test binary re-executed to run one helper test
/// whose body is [`child_pipeline_main`]), so a test can `kill -9` it as an operator or the
/// kernel would: no destructor, no flush, no last acknowledgement.
pub struct PipelineProcess {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl PipelineProcess {
    /// Starts `helper_test` of this test binary with the pipeline config `yaml`.
    pub fn start(helper_test: &str, yaml: &str) -> PipelineProcess {
        let dir = std::env::temp_dir().join(unique("etcdsync-child"));
        std::fs::create_dir_all(&dir).expect("child dir");
        let config = dir.join("pipeline.yaml");
        std::fs::write(&config, yaml).expect("child config");
        let log = std::fs::File::create(dir.join("child.log")).expect("child log");
        let err = log.try_clone().expect("child log");
        let exe = std::env::current_exe().expect("test binary");
        let child = std::process::Command::new(exe)
            .args([
                helper_test,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_CONFIG_ENV, &config)
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawn the child pipeline");
        PipelineProcess { child, dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// False once the process has exited (it should only end by being killed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL (`kill -9`), then reaps the process.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `VmHWM` (peak resident memory) of the running process, in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// `VmRSS` (resident memory now) of the running process, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// What the child printed (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("child.log")).unwrap_or_default()
    }
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

impl Drop for PipelineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A MariaDB server of the test's own (data under /tmp, a free port, ROW/FULL/FULL binlog,
/// root without password over TCP), for tests that stop and restart the server.
pub struct PrivateMariaDb {
    dir: std::path::PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateMariaDb {
    /// Installs and starts a fresh server (a few seconds).
    pub async fn start() -> PrivateMariaDb {
        let dir = std::env::temp_dir().join(unique("etcdsync-mdb"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let install_dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&install_dir).expect("server dir");
            let run = |program: &str, args: &[&str]| {
                let out = std::process::Command::new(program)
                    .args(args)
                    .current_dir("/")
                    .output()
                    .unwrap_or_else(|e| {
                        panic!("{program}: {e} (is MariaDB installed? tools/testenv.sh install)")
                    });
                assert!(
                    out.status.success(),
                    "{program} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            let path = install_dir.to_string_lossy().into_owned();
            run("chown", &["mysql:", &path]);
            run(
                "mariadb-install-db",
                &[
                    "--no-defaults",
                    "--user=mysql",
                    &format!("--datadir={path}/data"),
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--skip-name-resolve",
                ],
            );
        })
        .await
        .expect("install");
        let mut server = PrivateMariaDb {
            dir,
            port,
            child: None,
        };
        server.launch().await;
        server
    }

    /// `mysql://root@127.0.0.1:port/`.
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/", self.port)
    }

    pub async fn connect(&self) -> Conn {
        let opts = Opts::from_url(&self.url()).expect("url");
        let mut conn = Conn::new(opts)
            .await
            .expect("connect to the private server");
        conn.query_drop("SET NAMES utf8mb4, time_zone = '+00:00'")
            .await
            .expect("session setup");
        conn
    }

    async fn launch(&mut self) {
        let path = self.dir.to_string_lossy().into_owned();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mariadbd.out"))
            .expect("server log");
        let err = log.try_clone().expect("server log");
        let child = std::process::Command::new("mariadbd")
            .args([
                "--no-defaults",
                "--user=mysql",
                &format!("--datadir={path}/data"),
                &format!("--socket={path}/mysql.sock"),
                &format!("--port={}", self.port),
                "--bind-address=127.0.0.1",
                &format!("--pid-file={path}/mariadb.pid"),
                &format!("--log-error={path}/mariadb.log"),
                &format!("--log-bin={path}/data/mysql-bin"),
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--binlog-row-metadata=FULL",
                "--server-id=1",
                "--innodb-buffer-pool-size=32M",
                "--character-set-server=utf8mb4",
                "--skip-name-resolve",
            ])
            .current_dir("/")
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start mariadbd");
        self.child = Some(child);
        let url = self.url();
        let ready = eventually(Duration::from_secs(60), || {
            let url = url.clone();
            async move {
                let Ok(opts) = Opts::from_url(&url) else {
                    return false;
                };
                match Conn::new(opts).await {
                    Ok(conn) => {
                        let _ = conn.disconnect().await;
                        true
                    }
                    Err(_) => false,
                }
            }
        })
        .await;
        assert!(
            ready,
            "the private MariaDB did not come up: {}",
            std::fs::read_to_string(self.dir.join("mariadb.log")).unwrap_or_default()
        );
    }

    /// Stops the server as `systemctl restart` would (SIGTERM, wait for exit).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            tokio::task::spawn_blocking(move || {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid])
                    .status();
                let _ = child.wait();
            })
            .await
            .expect("stop");
        }
    }

    /// Starts the stopped server again on the same port and data.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `mysql` source's inspector (what `etcdsync check`, `status` and `verify` use) for this
/// `source:` YAML and pipeline name.
pub async fn inspector(yaml: &str, name: &str) -> Box<dyn etcdsync_core::inspect::SourceInspector> {
    let config: Box<dyn SourceConfig> = serde_yaml::from_str(yaml).expect("source yaml");
    config.validate(name).expect("source config validates");
    config
        .inspect(name)
        .await
        .unwrap_or_else(|e| panic!("inspect: {e}"))
}

/// The server's binlog position now (`SHOW MASTER STATUS`) as `file:offset`.
pub async fn binlog_position(conn: &mut Conn) -> String {
    let status: mysql_async::Row = conn
        .query_first("SHOW MASTER STATUS")
        .await
        .expect("SHOW MASTER STATUS")
        .expect("the binary log is on");
    let file: String = status.get(0).expect("File");
    let offset: u64 = status.get(1).expect("Position");
    format!("{file}:{offset}")
}

/// The `source:` section alone (for [`db_state_yaml`]).
pub fn source_section(url: &str, include: &[String]) -> String {
    let include = include
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!("type: mysql\nurl: \"{url}\"\ntables: {{ include: [{include}] }}\n")
}

pub fn yaml_for(name: &str, url: &str, include: &[String], prefix: &str) -> String {
    let source: String = source_section(url, include)
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    format!(
        "name: {name}
source:
{source}sink:
  type: etcd
  endpoints: [\"{}\"]
  prefix: \"{prefix}\"
  meta_prefix: \"{prefix}-meta\"
  heartbeat_interval: 1s
",
        env("ETCDSYNC_TEST_ETCD")
    )
}

/// A pipeline running in this process (`core::pipeline::run` on a YAML config).
pub struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<etcdsync_core::Result<()>>,
}

pub fn start(yaml: &str) -> Running {
    crate::logs_from_env();
    let config = PipelineConfig::parse(yaml).unwrap_or_else(|e| panic!("config: {e}"));
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { etcdsync_core::pipeline::run(&config, token).await });
    Running { stop, task }
}

impl Running {
    /// Waits for the pipeline to end by itself (an error) within `timeout`.
    pub async fn failed(self, timeout: Duration) -> etcdsync_core::Error {
        match tokio::time::timeout(timeout, self.task).await {
            Ok(Ok(Err(e))) => e,
            Ok(Ok(Ok(()))) => panic!("the pipeline stopped without an error"),
            Ok(Err(e)) => panic!("pipeline panicked: {e}"),
            Err(_) => panic!("the pipeline did not stop within {timeout:?}"),
        }
    }

    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    pub async fn stop(self) {
        self.stop.cancel();
        match tokio::time::timeout(Duration::from_secs(30), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("pipeline failed: {e}"),
            Ok(Err(e)) => panic!("pipeline panicked: {e}"),
            Err(_) => panic!("pipeline did not stop within 30 s"),
        }
    }
}

pub async fn converges(prefix: &str, expected: &BTreeMap<String, String>) -> bool {
    let mut client = etcd().await;
    let data_prefix = format!("{prefix}/");
    let ok = eventually(Duration::from_secs(60), || {
        let mut client = client.clone();
        let data_prefix = data_prefix.clone();
        async move { etcd_dump(&mut client, &data_prefix).await == *expected }
    })
    .await;
    if !ok {
        let got = etcd_dump(&mut client, &data_prefix).await;
        panic!("etcd did not converge:\n got: {got:#?}\nwant: {expected:#?}");
    }
    ok
}
