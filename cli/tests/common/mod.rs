//! The process-level test harness shared by the CLI's integration tests: one pipeline's
//! database, names, etcd prefixes and config files ([`Pipe`]), `etcdsync` run to completion
//! ([`etcdsync`]) or in the background ([`Run`]), and PostgreSQL/etcd read-backs.
#![allow(dead_code)] // each test binary uses its own part of the harness

use etcdsync_core::TableId;
use etcdsync_tests::pg::{
    env, etcd, etcd_dump, eventually, expected, unique, EtcdPrefixGuard, TestDb,
};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(60);

/// One pipeline's database, names, etcd prefixes (deleted on drop) and config files.
pub struct Pipe {
    pub db: TestDb,
    pub name: String,
    pub data: String,
    pub meta: String,
    pub dir: PathBuf,
    _prefixes: EtcdPrefixGuard,
}

impl Pipe {
    pub async fn new(tag: &str) -> Pipe {
        let db = TestDb::create(&format!("ops_{tag}")).await;
        let name = unique(tag);
        let data = format!("/ops-{name}");
        let meta = format!("/ops-meta-{name}");
        let dir = std::env::temp_dir().join(format!("etcdsync-ops-{name}"));
        std::fs::create_dir_all(&dir).expect("config dir");
        Pipe {
            _prefixes: EtcdPrefixGuard(vec![format!("{data}/"), format!("{meta}/")]),
            db,
            name,
            data,
            meta,
            dir,
        }
    }

    /// The slot etcdsync creates for this pipeline.
    pub fn slot(&self) -> String {
        format!("etcdsync_{}", self.name)
    }

    /// A config: `url` and `endpoint` replace the test servers' when given; `source_extra` and
    /// `sink_extra` are lines indented by two spaces; `top` is top-level YAML.
    pub fn config(&self, file: &str, parts: Parts<'_>) -> PathBuf {
        let url = parts
            .url
            .map_or_else(|| self.db.url.clone(), str::to_string);
        let endpoint = parts
            .endpoint
            .map_or_else(|| env("ETCDSYNC_TEST_ETCD"), str::to_string);
        let text = format!(
            "name: {name}\nsource:\n  type: pgx\n  url: \"{url}\"\n  sslmode: disable\n  heartbeat_interval: 1s\n  \
             tables:\n    include: [{include}]\n{source_extra}{transforms}sink:\n  type: etcd\n  endpoints: [\"{endpoint}\"]\n  \
             prefix: {data}\n  meta_prefix: {meta}\n{sink_extra}{top}",
            name = self.name,
            include = parts.include,
            source_extra = parts.source_extra,
            transforms = parts.transforms,
            data = self.data,
            meta = self.meta,
            sink_extra = parts.sink_extra,
            top = parts.top,
        );
        let path = self.dir.join(file);
        std::fs::write(&path, text).expect("write config");
        path
    }

    pub async fn sql(&self, sql: &str) {
        self.db
            .client()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The data keys and values in etcd.
    pub async fn etcd_data(&self) -> BTreeMap<String, String> {
        etcd_dump(&mut etcd().await, &format!("{}/", self.data)).await
    }

    /// What etcd must hold for `public.{table}` (int/text columns, key `id`).
    pub async fn expected(&self, table: &str) -> BTreeMap<String, String> {
        expected(
            &self.db.client().await,
            &self.data,
            &TableId::new("public", table),
            &["id"],
        )
        .await
    }

    /// The keys and values of `public.{table}` in etcd.
    pub async fn etcd_table(&self, table: &str) -> BTreeMap<String, String> {
        etcd_dump(&mut etcd().await, &format!("{}/public/{table}/", self.data)).await
    }

    pub async fn wait_synced(&self, table: &str, what: &str) {
        let ok = eventually(WAIT, || async {
            self.etcd_table(table).await == self.expected(table).await
        })
        .await;
        assert!(
            ok,
            "{what}: etcd does not match public.{table}: {} keys, {} rows",
            self.etcd_table(table).await.len(),
            self.expected(table).await.len()
        );
    }

    /// What etcd must hold for `tables`: (name, key columns) of `public` tables, default layout.
    pub async fn expected_of(&self, tables: &[(&str, &[&str])]) -> BTreeMap<String, String> {
        let client = self.db.client().await;
        let mut want = BTreeMap::new();
        for (table, key) in tables {
            want.extend(expected(&client, &self.data, &TableId::new("public", *table), key).await);
        }
        want
    }

    /// What etcd must hold by `sql`, a `SELECT key_text, value_text …`: each row's key below the
    /// data prefix and its value.
    pub async fn expected_from_sql(&self, sql: &str) -> BTreeMap<String, String> {
        self.db
            .client()
            .await
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .into_iter()
            .map(|r| {
                (
                    format!("{}/{}", self.data, r.get::<_, String>(0)),
                    r.get::<_, String>(1),
                )
            })
            .collect()
    }

    /// Waits until etcd's data prefix holds exactly `want()`; panics naming the missing, extra
    /// and differing keys (cut to 120 characters) and showing `run`'s stderr.
    pub async fn wait_data<F, Fut>(&self, run: &Run, what: &str, want: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = BTreeMap<String, String>>,
    {
        let ok = eventually(WAIT, || async { self.etcd_data().await == want().await }).await;
        if ok {
            return;
        }
        let (want, have) = (want().await, self.etcd_data().await);
        let short = |s: &String| s.chars().take(120).collect::<String>();
        let missing: Vec<String> = want
            .keys()
            .filter(|k| !have.contains_key(*k))
            .take(5)
            .map(short)
            .collect();
        let extra: Vec<String> = have
            .keys()
            .filter(|k| !want.contains_key(*k))
            .take(5)
            .map(short)
            .collect();
        let different: Vec<(String, String)> = have
            .iter()
            .filter(|(k, v)| want.get(*k).is_some_and(|w| w != *v))
            .take(5)
            .map(|(k, v)| (short(k), short(v)))
            .collect();
        panic!(
            "{what}: etcd differs: missing {missing:?}, extra {extra:?}, different (etcd) {different:?}; stderr:\n{}",
            run.stderr()
        );
    }

    /// Waits until etcd's data prefix holds exactly the rows of `tables` ([`Pipe::expected_of`]).
    pub async fn wait_exactly(&self, run: &Run, tables: &[(&str, &[&str])], what: &str) {
        self.wait_data(run, what, || self.expected_of(tables)).await;
    }

    /// Asserts no data key is under one of `partitions`' own names (they sync through the root).
    pub async fn assert_no_partition_keys(&self, partitions: &[&str]) {
        let data = self.etcd_data().await;
        let own = data
            .keys()
            .find(|k| partitions.iter().any(|p| k.contains(&format!("/{p}/"))));
        assert!(
            own.is_none(),
            "a partition was synced under its own name: {own:?}"
        );
    }

    /// Waits until the pipeline has recorded a checkpoint (it streams).
    pub async fn wait_streaming(&self, run: &Run) {
        let streaming = eventually(WAIT, || async { self.checkpoint().await.is_some() }).await;
        assert!(streaming, "never streamed: {}", run.stderr());
    }

    pub async fn checkpoint(&self) -> Option<Json> {
        let response = etcd()
            .await
            .get(format!("{}/checkpoint", self.meta), None)
            .await
            .expect("read the checkpoint");
        response
            .kvs()
            .first()
            .map(|kv| serde_json::from_slice(kv.value()).expect("checkpoint JSON"))
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Clone, Copy)]
pub struct Parts<'a> {
    pub include: &'a str,
    pub url: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub source_extra: &'a str,
    pub transforms: &'a str,
    pub sink_extra: &'a str,
    pub top: &'a str,
}

impl Default for Parts<'_> {
    fn default() -> Self {
        Parts {
            include: "\"public.*\"",
            url: None,
            endpoint: None,
            source_extra: "",
            transforms: "",
            sink_extra: "",
            top: "",
        }
    }
}

/// Runs `etcdsync args…` to completion (off the async workers).
pub async fn etcdsync(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let envs: Vec<(String, String)> = envs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_etcdsync"))
            .args(&args)
            .env_remove("RUST_LOG")
            .envs(envs)
            .output()
            .expect("run etcdsync")
    })
    .await
    .expect("join")
}

pub fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub async fn status_json(config: &Path) -> Json {
    let output = etcdsync(&["status", "-c", path(config), "--json"], &[]).await;
    assert!(output.status.success(), "status: {}", text(&output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", text(&output)))
}

/// `etcdsync verify -c config --json extra…`: the exit code and the report.
pub async fn verify_json(config: &Path, extra: &[&str]) -> (Option<i32>, Json) {
    let mut args = vec!["verify", "-c", path(config), "--json"];
    args.extend_from_slice(extra);
    let output = etcdsync(&args, &[]).await;
    let report = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("verify --json is not JSON ({e}): {}", text(&output)));
    (output.status.code(), report)
}

/// Asserts `etcdsync verify` finds no drift for `config`.
pub async fn assert_verify_clean(config: &Path) {
    let (code, report) = verify_json(config, &[]).await;
    assert_eq!(code, Some(0), "verify found drift: {report:#}");
    assert_eq!(report["missing"]["count"], 0, "{report:#}");
    assert_eq!(report["different"]["count"], 0, "{report:#}");
    assert_eq!(report["extra"]["count"], 0, "{report:#}");
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `etcdsync run` in the background, stderr to a file; killed when dropped if still running.
pub struct Run {
    pub child: Child,
    pub stderr: PathBuf,
}

impl Run {
    pub fn start(config: &Path, envs: &[(&str, &str)]) -> Run {
        let stderr = config.with_extension(format!("stderr.{}", unique("log")));
        let file = std::fs::File::create(&stderr).expect("stderr file");
        let child = Command::new(env!("CARGO_BIN_EXE_etcdsync"))
            .args(["run", "-c", path(config)])
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start etcdsync run");
        Run { child, stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    pub async fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Stops the process with SIGTERM and asserts it exits successfully.
    pub async fn stop(&mut self) {
        self.signal("TERM");
        let status = self.wait(WAIT).await.expect("stops");
        assert!(status.success(), "{}", self.stderr());
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn still_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asserts the process has not exited (the pipeline keeps running), showing its stderr.
    pub fn assert_running(&mut self) {
        let exited = self.child.try_wait().expect("try_wait");
        assert!(
            exited.is_none(),
            "etcdsync run exited ({exited:?}); stderr:\n{}",
            self.stderr()
        );
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.still_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// `0/16B3748` → its 64-bit value.
pub fn lsn(text: &str) -> u64 {
    let (hi, lo) = text
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {text}"));
    (u64::from_str_radix(hi, 16).expect("LSN hi") << 32)
        | u64::from_str_radix(lo, 16).expect("LSN lo")
}

pub async fn current_lsn(pipe: &Pipe) -> u64 {
    let row = pipe
        .db
        .client()
        .await
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("current LSN");
    lsn(row.get::<_, &str>(0))
}

pub async fn confirmed_flush(pipe: &Pipe) -> Option<u64> {
    let row = pipe
        .db
        .client()
        .await
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&pipe.slot()],
        )
        .await
        .expect("read the slot");
    row.and_then(|r| r.get::<_, Option<String>>(0))
        .map(|t| lsn(&t))
}

pub async fn put(key: &str, value: &str) {
    etcd().await.put(key, value, None).await.expect("etcd put");
}
