//! PostgreSQL helpers for the `pgx_*` tests: a database per test (dropped with its slots by a
//! guard), a source harness with an acknowledging in-memory sink, etcd read-back, and the
//! expected etcd content computed from the database (DESIGN §2–3).

pub use crate::common::{env, etcd, etcd_count, etcd_dump, eventually, unique, EtcdPrefixGuard};
use etcdsync_core::encode::json::encode_row;
use etcdsync_core::encode::key::{escape_component, row_key};
use etcdsync_core::source::{SourceConfig, SourceContext};
use etcdsync_core::{Checkpoint, Message, Op, Position, TableId};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

/// Replaces the database of a libpq URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let head = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{head}/{database}?{q}"),
        None => format!("{head}/{database}"),
    }
}

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A fresh database for one test, dropped (with its replication slots) when the guard drops.
pub struct TestDb {
    pub name: String,
    pub url: String,
    base_url: String,
}

impl TestDb {
    pub async fn create(prefix: &str) -> TestDb {
        let base_url = env("ETCDSYNC_TEST_PG");
        let name = unique(prefix);
        let admin = connect(&base_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let url = with_database(&base_url, &name);
        TestDb {
            name,
            url,
            base_url,
        }
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// The slot's confirmed_flush_lsn as a number.
    pub async fn confirmed_flush(&self, slot: &str) -> Option<u64> {
        let client = self.client().await;
        let row = client
            .query_opt(
                "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .expect("query slot");
        row.and_then(|r| r.get::<_, Option<i64>>(0))
            .map(|v| v as u64)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (name, base) = (self.name.clone(), self.base_url.clone());
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok((client, connection)) = tokio_postgres::connect(&base, NoTls).await else {
                    return;
                };
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                for _ in 0..20 {
                    let _ = client
                        .execute(
                            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                             WHERE database = $1 AND active_pid IS NOT NULL",
                            &[&name],
                        )
                        .await;
                    let _ = client
                        .execute(
                            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                             WHERE database = $1 AND NOT active",
                            &[&name],
                        )
                        .await;
                    let left = client
                        .query_one(
                            "SELECT count(*) FROM pg_replication_slots WHERE database = $1",
                            &[&name],
                        )
                        .await
                        .map(|r| r.get::<_, i64>(0))
                        .unwrap_or(0);
                    if left == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        });
        let _ = cleanup.join();
    }
}

/// A `pgx` source config section for a test database.
pub fn source_yaml(db: &TestDb, include: &[&str], extra: &str) -> String {
    let include = include
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "type: pgx\nurl: \"{}\"\ntables:\n  include: [{include}]\nsslmode: disable\nheartbeat_interval: 1s\ntable_refresh_interval: 1s\n{extra}",
        db.url
    )
}

/// A source running against an in-memory sink that records every message and acknowledges
/// every position at once.
pub struct SourceRun {
    pub messages: Arc<Mutex<Vec<Message>>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<etcdsync_core::Result<()>>,
    sink: tokio::task::JoinHandle<Option<Position>>,
}

impl SourceRun {
    pub async fn start(yaml: &str, name: &str, resume: Option<Position>) -> SourceRun {
        Self::start_with(yaml, name, resume, true).await
    }

    /// Like [`SourceRun::start`]; with `ack: false` the sink records but never acknowledges, as
    /// if etcd held the data but the confirmation never reached PostgreSQL (a crash in between).
    pub async fn start_with(
        yaml: &str,
        name: &str,
        resume: Option<Position>,
        ack: bool,
    ) -> SourceRun {
        Self::start_full(yaml, name, resume, ack, None).await
    }

    /// Like [`SourceRun::start`], as the pipeline's leader holding `fence` (DESIGN §7): the
    /// source may take over a slot an earlier session of the pipeline holds.
    pub async fn start_leading(
        yaml: &str,
        name: &str,
        fence: etcdsync_core::leadership::Fence,
    ) -> SourceRun {
        Self::start_full(yaml, name, None, true, Some(fence)).await
    }

    async fn start_full(
        yaml: &str,
        name: &str,
        resume: Option<Position>,
        ack: bool,
        fence: Option<etcdsync_core::leadership::Fence>,
    ) -> SourceRun {
        let config: Box<dyn SourceConfig> = serde_yaml::from_str(yaml).expect("source yaml");
        config.validate(name).expect("valid source config");
        let resume = resume.map(|position| Checkpoint {
            source: "pgx".into(),
            position,
            committed_at: None,
            applied_at: "2000-01-01T00:00:00Z".into(),
        });
        let source = config
            .build(SourceContext {
                name: name.into(),
                resume,
                fence,
                written_tables: Default::default(),
            })
            .await
            .unwrap_or_else(|e| panic!("build source: {e}"));
        let run = crate::common::run_recorded(source, ack);
        SourceRun {
            messages: run.messages,
            shutdown: run.shutdown,
            task: run.task,
            sink: run.sink,
        }
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
            if self.task.is_finished() {
                panic!("source stopped while waiting for {what}");
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}: {:#?}",
                self.messages.lock().map(|m| m.len())
            );
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
        let result = tokio::time::timeout(Duration::from_secs(20), self.task).await;
        match result {
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

/// Rows (by key text) of one table as the messages leave them: applies inserts, updates,
/// deletes and truncates in order, the way a sink would. Values are the JSON encodings.
pub fn apply(messages: &[Message], prefix: &str) -> BTreeMap<String, String> {
    let mut state = BTreeMap::new();
    for message in messages {
        let Message::Changes(changes) = message else {
            continue;
        };
        for change in changes {
            let schema = &change.table;
            let key =
                |row: &[etcdsync_core::Value]| row_key(prefix, &schema.id, schema.key_values(row));
            match &change.op {
                Op::Insert { row } => {
                    state.insert(key(row), json(schema, row));
                }
                Op::Update { old, row } => {
                    if let Some(old) = old {
                        state.remove(&key(old));
                    }
                    let mut row = row.clone();
                    if let Some(prev) = state.get(&key(&row)) {
                        // fill unchanged TOAST values from the previous value
                        let prev: serde_json::Value =
                            serde_json::from_str(prev).unwrap_or_default();
                        for (i, value) in row.iter_mut().enumerate() {
                            if *value == etcdsync_core::Value::Unchanged {
                                let name = &schema.columns[i].name;
                                *value = etcdsync_core::Value::Json(prev[name].to_string());
                            }
                        }
                    }
                    state.insert(key(&row), json(schema, &row));
                }
                Op::Delete { old } => {
                    state.remove(&key(old));
                }
                Op::Truncate => {
                    let table_prefix = etcdsync_core::encode::key::table_prefix(prefix, &schema.id);
                    state.retain(|k, _| !k.starts_with(&table_prefix));
                }
            }
        }
    }
    state
}

fn json(schema: &etcdsync_core::TableSchema, row: &[etcdsync_core::Value]) -> String {
    String::from_utf8(encode_row(schema, row).expect("encode row")).expect("utf8")
}

/// The expected content of a table under `prefix`: key from the key columns (given in key
/// order), value `row_to_json` of the row (valid for int/text/bool columns, whose JSON the
/// database renders exactly as DESIGN §3 does).
pub async fn expected(
    client: &Client,
    prefix: &str,
    table: &TableId,
    key_columns: &[&str],
) -> BTreeMap<String, String> {
    let keys = key_columns
        .iter()
        .map(|c| format!("t.\"{c}\"::text"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT ARRAY[{keys}], row_to_json(t)::text FROM \"{}\".\"{}\" t",
        table.schema, table.table
    );
    let rows = client.query(&sql, &[]).await.expect("read table");
    let base = etcdsync_core::encode::key::table_prefix(prefix, table);
    rows.into_iter()
        .map(|r| {
            let parts: Vec<String> = r.get(0);
            let key = format!(
                "{base}{}",
                parts
                    .iter()
                    .map(|p| escape_component(p))
                    .collect::<Vec<_>>()
                    .join("/")
            );
            (key, r.get::<_, String>(1))
        })
        .collect()
}

/// A login role for one test (cluster-wide, so uniquely named), dropped when the guard drops.
/// Declare it before the [`TestDb`] whose objects it is granted, so the database goes first.
pub struct TestRole {
    pub name: String,
    pub password: String,
}

impl TestRole {
    /// `CREATE ROLE … LOGIN` plus `attributes` (e.g. `NOREPLICATION NOSUPERUSER`).
    pub async fn create(prefix: &str, attributes: &str) -> TestRole {
        let name = unique(prefix).to_lowercase();
        let password = "pw".to_string();
        let admin = connect(&env("ETCDSYNC_TEST_PG")).await;
        admin
            .batch_execute(&format!(
                "CREATE ROLE {name} LOGIN PASSWORD '{password}' {attributes}"
            ))
            .await
            .unwrap_or_else(|e| panic!("CREATE ROLE {name}: {e}"));
        TestRole { name, password }
    }

    /// `url` with this role's credentials instead of its own.
    pub fn url(&self, url: &str) -> String {
        let scheme_end = url.find("://").map_or(0, |i| i + 3);
        let host = url[scheme_end..]
            .find('@')
            .map_or(scheme_end, |at| scheme_end + at + 1);
        format!(
            "{}{}:{}@{}",
            &url[..scheme_end],
            self.name,
            self.password,
            &url[host..]
        )
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(base) = std::env::var("ETCDSYNC_TEST_PG") else {
                    return;
                };
                let Ok((client, connection)) = tokio_postgres::connect(&base, NoTls).await else {
                    return;
                };
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                let _ = client
                    .batch_execute(&format!("DROP ROLE IF EXISTS {name}"))
                    .await;
            });
        })
        .join();
    }
}

/// A private PostgreSQL server for one test, for settings the shared server must keep (such as
/// `wal_level`): `initdb` and `pg_ctl` from `ETCDSYNC_TEST_PG_BIN` run as the `postgres` OS user,
/// as tools/testenv.sh does. Stopped and removed when dropped.
pub struct PrivatePg {
    /// `postgres://postgres@127.0.0.1:PORT/postgres` (trust authentication).
    pub url: String,
    dir: std::path::PathBuf,
    bin: String,
}

impl PrivatePg {
    /// Starts a server whose `postgresql.conf` ends with `settings` (one per line).
    pub fn start(settings: &str) -> PrivatePg {
        let bin = env("ETCDSYNC_TEST_PG_BIN");
        let dir = std::env::temp_dir().join(unique("etcdsync_private_pg"));
        std::fs::create_dir_all(&dir).expect("create the server directory");
        run_command("chown", &["postgres:", &dir.display().to_string()]);
        let data = dir.join("data").display().to_string();
        run_command(
            "runuser",
            &[
                "-u",
                "postgres",
                "--",
                &format!("{bin}/initdb"),
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\n{settings}\n",
            dir.display()
        );
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(format!("{data}/postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .expect("write postgresql.conf");
        let server = PrivatePg {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir: dir.clone(),
            bin: bin.clone(),
        };
        run_command(
            "runuser",
            &[
                "-u",
                "postgres",
                "--",
                &format!("{bin}/pg_ctl"),
                "-D",
                &data,
                "-l",
                &format!("{}/postgres.log", dir.display()),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        server
    }
}

fn run_command(program: &str, args: &[&str]) {
    let output = std::process::Command::new(program)
        .args(args)
        .current_dir("/")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ = std::process::Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &format!("{}/pg_ctl", self.bin),
                "-D",
                &data,
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .current_dir("/")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
