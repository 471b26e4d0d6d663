//! High availability and fencing (issue 10, DESIGN §7) with real processes, PostgreSQL, MariaDB
//! and etcd: two instances under a steady write load, the leader frozen with SIGSTOP past its
//! lease and thawed (it never writes again: the checkpoint's whole history in etcd never moves
//! backwards), a third instance with `ha.enabled: false` refused naming the leader, a rolling
//! restart, and the etcd leader member of a 3-member cluster killed mid-run and restarted. Every
//! scenario ends with etcd equal to the table and no extra key.
#![cfg(feature = "integration-tests")]

mod common;

use common::*;
use etcd_client::{Client, EventType, WatchOptions};
use etcdsync_tests::mysql;
use etcdsync_tests::pg::{env, etcd_dump, eventually, unique, EtcdPrefixGuard};
use mysql_async::prelude::Queryable as _;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Lease TTL of the freeze and rolling-restart scenarios.
const TTL_SECS: u64 = 2;

fn ha_top(ttl_secs: u64) -> String {
    format!("ha:\n  enabled: true\n  lease_ttl: {ttl_secs}s\n")
}

async fn etcd_at(endpoints: &str) -> Client {
    let endpoints: Vec<&str> = endpoints.split(',').collect();
    Client::connect(endpoints, None)
        .await
        .expect("connect to etcd")
}

/// The leader record `{meta}/leader`, if any.
async fn leader(client: &mut Client, meta: &str) -> Option<Json> {
    let response = client
        .get(format!("{meta}/leader"), None)
        .await
        .expect("read the leader key");
    response
        .kvs()
        .first()
        .map(|kv| serde_json::from_slice(kv.value()).expect("leader record is JSON"))
}

async fn wait_leader_pid(client: &mut Client, meta: &str, pid: u32, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if leader(client, meta).await.is_some_and(|l| l["pid"] == pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Every value the checkpoint key ever had, oldest first (`etcdctl watch --rev=1`).
async fn checkpoint_history(client: &mut Client, meta: &str) -> Vec<String> {
    let key = format!("{meta}/checkpoint");
    let last = client
        .get(key.as_str(), None)
        .await
        .expect("read checkpoint");
    let Some(last) = last.kvs().first().map(|kv| kv.mod_revision()) else {
        return Vec::new();
    };
    let mut stream = client
        .watch(
            key.as_str(),
            Some(WatchOptions::new().with_start_revision(1)),
        )
        .await
        .expect("watch the checkpoint from revision 1");
    let mut positions = Vec::new();
    loop {
        let response = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("watch history in time")
            .expect("watch")
            .expect("watch stream open");
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            assert_eq!(
                event.event_type(),
                EventType::Put,
                "the checkpoint was deleted"
            );
            let value: Json = serde_json::from_slice(kv.value()).expect("checkpoint JSON");
            positions.push(value["position"].as_str().expect("position").to_string());
            if kv.mod_revision() >= last {
                return positions;
            }
        }
    }
}

/// Asserts a sequence of positions, mapped to comparable keys, never goes backwards.
fn assert_monotonic<K: Ord + std::fmt::Debug>(positions: &[String], key: impl Fn(&str) -> K) {
    assert!(positions.len() > 2, "too few checkpoints: {positions:?}");
    for pair in positions.windows(2) {
        assert!(
            key(&pair[0]) <= key(&pair[1]),
            "the checkpoint moved backwards: {} then {}",
            pair[0],
            pair[1]
        );
    }
}

/// `mysql-bin.000003:1234 gtid=…` → (file number, offset).
fn binlog_position(text: &str) -> (u64, u64) {
    let file_offset = text.split_whitespace().next().unwrap_or_default();
    let (file, offset) = file_offset
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("not a binlog position: {text}"));
    let number = file.rsplit('.').next().unwrap_or_default();
    (
        number.parse().expect("binlog file number"),
        offset.parse().expect("binlog offset"),
    )
}

/// What a writer does against the source, one statement at a time.
trait Writer: Send + 'static {
    fn write(&mut self, sql: String) -> impl std::future::Future<Output = ()> + Send;
}

/// A steady write load until stopped: a new row every ~10 ms and an update of an earlier one.
struct Load {
    stop: CancellationToken,
    task: JoinHandle<i64>,
}

impl Load {
    fn start<W: Writer>(mut writer: W, table: String, first: i64) -> Load {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut next = first;
            // Bounded: at most 20 000 rows (about 200 s of load).
            while !token.is_cancelled() && next < first + 20_000 {
                writer
                    .write(format!(
                        "INSERT INTO {table} (id, v) VALUES ({next}, 0); \
                         UPDATE {table} SET v = v + 1 WHERE id = {}",
                        next / 2
                    ))
                    .await;
                next += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            next
        });
        Load { stop, task }
    }

    /// Stops the load; the first id not written.
    async fn finish(self) -> i64 {
        self.stop.cancel();
        self.task.await.expect("load task")
    }
}

struct PgWriter(tokio_postgres::Client);

impl Writer for PgWriter {
    async fn write(&mut self, sql: String) {
        self.0
            .batch_execute(&format!("BEGIN; {sql}; COMMIT"))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

struct MyWriter(mysql_async::Conn);

impl Writer for MyWriter {
    async fn write(&mut self, sql: String) {
        self.0
            .query_drop(format!("START TRANSACTION; {sql}; COMMIT"))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// Rows `(id, v)` as the etcd sink writes them under `table_prefix`.
fn rows_as_keys(
    table_prefix: &str,
    rows: impl IntoIterator<Item = (i64, i64)>,
) -> BTreeMap<String, String> {
    rows.into_iter()
        .map(|(id, v)| {
            (
                format!("{table_prefix}{id}"),
                format!("{{\"id\":{id},\"v\":{v}}}"),
            )
        })
        .collect()
}

async fn pg_rows(pipe: &Pipe) -> BTreeMap<String, String> {
    let rows = pipe
        .db
        .client()
        .await
        .query("SELECT id::int8, v::int8 FROM t", &[])
        .await
        .expect("read t");
    rows_as_keys(
        &format!("{}/public/t/", pipe.data),
        rows.iter().map(|r| (r.get(0), r.get(1))),
    )
}

/// Waits until `etcd` holds exactly `expected` under `prefix`; the assertion names the difference.
async fn assert_converges<F, Fut>(client: &mut Client, prefix: &str, expected: F, what: &str)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = BTreeMap<String, String>>,
{
    let start = Instant::now();
    loop {
        let want = expected().await;
        let have = etcd_dump(client, prefix).await;
        if have == want {
            return;
        }
        if start.elapsed() > WAIT {
            let missing = want.keys().filter(|k| !have.contains_key(*k)).count();
            let extra = have.keys().filter(|k| !want.contains_key(*k)).count();
            let different = want
                .iter()
                .filter(|(k, v)| have.get(*k).is_some_and(|h| h != *v))
                .count();
            panic!("{what}: etcd differs from the table: {missing} missing, {extra} extra, {different} different");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn pg_pipe(tag: &str, rows: i64) -> Pipe {
    let pipe = Pipe::new(tag).await;
    pipe.sql(&format!(
        "CREATE TABLE t (id int8 PRIMARY KEY, v int8 NOT NULL); \
         INSERT INTO t SELECT g, 0 FROM generate_series(1, {rows}) g;"
    ))
    .await;
    pipe
}

fn pg_ha_config(pipe: &Pipe, file: &str, top: &str, endpoint: Option<&str>) -> PathBuf {
    pipe.config(
        file,
        Parts {
            include: "\"public.t\"",
            endpoint,
            top,
            ..Parts::default()
        },
    )
}

// ---- PostgreSQL ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_frozen_leader_is_replaced_and_never_writes_again() {
    let pipe = pg_pipe("hafrz", 200).await;
    let mut etcd = etcd_at(&env("ETCDSYNC_TEST_ETCD")).await;
    let config = pg_ha_config(&pipe, "ha.yaml", &ha_top(TTL_SECS), None);

    let mut first = Run::start(&config, &[]);
    assert!(
        wait_leader_pid(&mut etcd, &pipe.meta, first.pid(), WAIT).await,
        "the first instance never led: {}",
        first.stderr()
    );
    let table = format!("{}/public/t/", pipe.data);
    assert_converges(&mut etcd, &table, || pg_rows(&pipe), "snapshot").await;
    let second = Run::start(&config, &[]);
    let standing_by = eventually(WAIT, || async { second.stderr().contains("standing by") }).await;
    assert!(
        standing_by,
        "the second instance is not a standby: {}",
        second.stderr()
    );

    let load = Load::start(PgWriter(pipe.db.client().await), "t".into(), 1_000);
    tokio::time::sleep(Duration::from_secs(1)).await;

    first.signal("STOP");
    let frozen_at = Instant::now();
    assert!(
        wait_leader_pid(&mut etcd, &pipe.meta, second.pid(), WAIT).await,
        "the standby never took over: {}",
        second.stderr()
    );
    eprintln!(
        "takeover {:.1} s after the freeze (lease_ttl {TTL_SECS} s)",
        frozen_at.elapsed().as_secs_f64()
    );
    // Rows keep flowing through the new leader.
    let flowing = eventually(WAIT, || async {
        etcd_dump(&mut etcd_at(&env("ETCDSYNC_TEST_ETCD")).await, &table)
            .await
            .len()
            > 400
    })
    .await;
    assert!(
        flowing,
        "no rows arrived after the takeover: {}",
        second.stderr()
    );

    // The old leader thaws: its in-flight and later writes are refused, it stands by.
    first.signal("CONT");
    let deposed = eventually(WAIT, || async {
        first.stderr().contains("lost the pipeline's leadership")
    })
    .await;
    assert!(
        deposed,
        "the thawed leader did not notice: {}",
        first.stderr()
    );
    tokio::time::sleep(Duration::from_secs(TTL_SECS * 2)).await;
    assert!(
        first.still_running(),
        "with ha on the old leader stays as standby"
    );
    assert_eq!(
        leader(&mut etcd, &pipe.meta)
            .await
            .map(|l| l["pid"].clone()),
        Some(second.pid().into()),
        "leadership moved back"
    );

    // A third instance with ha off refuses, naming the leader.
    let refused = pg_ha_config(
        &pipe,
        "noha.yaml",
        "ha:\n  enabled: false\n  lease_ttl: 2s\n",
        None,
    );
    let output = etcdsync(&["run", "-c", path(&refused)], &[]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is already running on host")
            && stderr.contains(&format!("pid {}", second.pid())),
        "{}",
        text(&output)
    );

    let written = load.finish().await;
    assert!(
        written > 1_100,
        "the load wrote only {} rows",
        written - 1_000
    );
    assert_converges(&mut etcd, &table, || pg_rows(&pipe), "after the failover").await;
    assert_eq!(
        etcd_dump(&mut etcd, &format!("{}/", pipe.data)).await.len(),
        pg_rows(&pipe).await.len(),
        "keys outside the table's"
    );
    assert_monotonic(&checkpoint_history(&mut etcd, &pipe.meta).await, lsn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_rolling_restart_loses_nothing() {
    let pipe = pg_pipe("haroll", 100).await;
    let mut etcd = etcd_at(&env("ETCDSYNC_TEST_ETCD")).await;
    let config = pg_ha_config(&pipe, "ha.yaml", &ha_top(TTL_SECS), None);
    let table = format!("{}/public/t/", pipe.data);

    let mut old = Run::start(&config, &[]);
    assert!(
        wait_leader_pid(&mut etcd, &pipe.meta, old.pid(), WAIT).await,
        "{}",
        old.stderr()
    );
    assert_converges(&mut etcd, &table, || pg_rows(&pipe), "snapshot").await;
    let load = Load::start(PgWriter(pipe.db.client().await), "t".into(), 1_000);

    // Start the new instance, then stop the old one: the new one takes over at once (the old
    // resigns its lease on a clean stop).
    let new = Run::start(&config, &[]);
    let standing_by = eventually(WAIT, || async { new.stderr().contains("standing by") }).await;
    assert!(standing_by, "{}", new.stderr());
    old.signal("TERM");
    let status = old.wait(WAIT).await.expect("the old instance stops");
    assert!(status.success(), "old instance: {status}: {}", old.stderr());
    assert!(
        old.stderr().contains("resigned the pipeline's leadership"),
        "{}",
        old.stderr()
    );
    assert!(
        wait_leader_pid(
            &mut etcd,
            &pipe.meta,
            new.pid(),
            Duration::from_secs(TTL_SECS)
        )
        .await,
        "the standby did not take over within the lease TTL of a clean stop: {}",
        new.stderr()
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    load.finish().await;
    assert_converges(
        &mut etcd,
        &table,
        || pg_rows(&pipe),
        "after the rolling restart",
    )
    .await;
    assert_monotonic(&checkpoint_history(&mut etcd, &pipe.meta).await, lsn);
}

/// Runs `tools/testenv.sh cluster ARGS…` and returns its standard output.
fn testenv_cluster(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/testenv.sh");
    let output = std::process::Command::new("bash")
        .arg(script)
        .arg("cluster")
        .args(args)
        .output()
        .expect("run tools/testenv.sh cluster");
    assert!(
        output.status.success(),
        "testenv.sh cluster {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Stops the on-demand cluster when the test ends, however it ends.
struct ClusterGuard;

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| testenv_cluster(&["stop"]));
    }
}

/// The member number (1-based, in endpoint order) that is the cluster's raft leader.
async fn leader_member(endpoints: &[&str]) -> usize {
    for _ in 0..100 {
        for (i, endpoint) in endpoints.iter().enumerate() {
            let Ok(mut client) = Client::connect([*endpoint], None).await else {
                continue;
            };
            let Ok(status) = client.status().await else {
                continue;
            };
            let member = status.header().map(|h| h.member_id());
            if member.is_some() && member == Some(status.leader()) {
                return i + 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no etcd cluster member says it leads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_etcd_leader_member_killed_mid_run_pauses_and_resumes() {
    let _cluster = ClusterGuard;
    let started = testenv_cluster(&["start"]);
    let endpoints = started
        .lines()
        .find_map(|l| l.strip_prefix("ETCDSYNC_TEST_ETCD_CLUSTER="))
        .expect("cluster endpoints")
        .trim()
        .to_string();
    let members: Vec<&str> = endpoints.split(',').collect();

    let pipe = pg_pipe("haetcd", 100).await;
    // `Parts::endpoint` is written inside `["…"]`: quote the list's inner separators.
    let endpoint_list = members.join("\", \"");
    let config = pipe.config(
        "cluster.yaml",
        Parts {
            include: "\"public.t\"",
            endpoint: Some(&endpoint_list),
            top: &ha_top(6),
            ..Parts::default()
        },
    );

    let mut etcd = etcd_at(&endpoints).await;
    let run = Run::start(&config, &[]);
    assert!(
        wait_leader_pid(&mut etcd, &pipe.meta, run.pid(), WAIT).await,
        "{}",
        run.stderr()
    );
    let token_before = etcd
        .get(format!("{}/leader", pipe.meta), None)
        .await
        .expect("leader key")
        .kvs()
        .first()
        .map(|kv| kv.create_revision());
    let table = format!("{}/public/t/", pipe.data);
    assert_converges(&mut etcd, &table, || pg_rows(&pipe), "snapshot").await;

    let load = Load::start(PgWriter(pipe.db.client().await), "t".into(), 1_000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = leader_member(&members).await;
    testenv_cluster(&["kill", &killed.to_string()]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Writes resumed through the remaining members.
    let survivors: Vec<&str> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| i + 1 != killed)
        .map(|(_, e)| *e)
        .collect();
    let mut survivor = etcd_at(&survivors.join(",")).await;
    let before = etcd_dump(&mut survivor, &table).await.len();
    let grew = eventually(WAIT, || async {
        etcd_dump(&mut etcd_at(&survivors.join(",")).await, &table)
            .await
            .len()
            > before + 50
    })
    .await;
    assert!(
        grew,
        "no writes after the etcd leader member was killed: {}",
        run.stderr()
    );
    testenv_cluster(&["start-member", &killed.to_string()]);

    tokio::time::sleep(Duration::from_secs(1)).await;
    load.finish().await;
    let mut etcd = etcd_at(&endpoints).await;
    assert_converges(
        &mut etcd,
        &table,
        || pg_rows(&pipe),
        "after the member loss",
    )
    .await;
    // Without operator action the instance leads and writes again (normally under the same
    // token: etcd keeps leases across its own leader changes).
    assert!(
        wait_leader_pid(&mut etcd, &pipe.meta, run.pid(), WAIT).await,
        "the instance does not lead after the member loss: {}",
        run.stderr()
    );
    let token_after = etcd
        .get(format!("{}/leader", pipe.meta), None)
        .await
        .expect("leader key")
        .kvs()
        .first()
        .map(|kv| kv.create_revision());
    if token_after != token_before {
        eprintln!("leadership was taken again during the member loss: {token_before:?} -> {token_after:?}");
    }
    assert_monotonic(&checkpoint_history(&mut etcd, &pipe.meta).await, lsn);
    // The prefixes live in the cluster, not in the test etcd the guard cleans.
    let _ = etcd
        .delete(
            format!("{}/", pipe.data),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await;
}

// ---- MariaDB -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_frozen_leader_is_replaced_and_never_writes_again() {
    let dbs = mysql::TestDbs::create("hamy", 1).await;
    let database = dbs.name(0).to_string();
    let mut conn = mysql::connect().await;
    mysql::exec(
        &mut conn,
        &format!(
            "CREATE TABLE `{database}`.t (id BIGINT PRIMARY KEY, v BIGINT NOT NULL);\n\
             INSERT INTO `{database}`.t (id, v) SELECT seq, 0 FROM `{database}`.seq_1_to_200"
        ),
    )
    .await;
    let name = unique("hamy").replace('_', "-");
    let data = format!("/ha-{name}");
    let meta = format!("/ha-meta-{name}");
    let _prefixes = EtcdPrefixGuard(vec![format!("{data}/"), format!("{meta}/")]);
    let dir = std::env::temp_dir().join(format!("etcdsync-ha-{name}"));
    std::fs::create_dir_all(&dir).expect("config dir");
    let source = mysql::source_yaml(
        &[format!("{database}.t")],
        &format!("server_id: {}\n", mysql::unique_server_id()),
    )
    .replace('\n', "\n  ");
    let config = dir.join("ha.yaml");
    std::fs::write(
        &config,
        format!(
            "name: {name}\nsource:\n  {source}\nsink:\n  type: etcd\n  endpoints: [\"{}\"]\n  prefix: {data}\n  \
             meta_prefix: {meta}\n{}",
            env("ETCDSYNC_TEST_ETCD"),
            ha_top(TTL_SECS)
        ),
    )
    .expect("write config");

    let table = format!("{data}/{database}/t/");
    let my_rows = || async {
        let mut conn = mysql::connect().await;
        let rows: Vec<(i64, i64)> = conn
            .query(format!("SELECT id, v FROM `{database}`.t"))
            .await
            .expect("read t");
        rows_as_keys(&table, rows)
    };
    let mut etcd = etcd_at(&env("ETCDSYNC_TEST_ETCD")).await;
    let mut first = Run::start(&config, &[]);
    assert!(
        wait_leader_pid(&mut etcd, &meta, first.pid(), WAIT).await,
        "{}",
        first.stderr()
    );
    assert_converges(&mut etcd, &table, my_rows, "snapshot").await;
    let second = Run::start(&config, &[]);
    let standing_by = eventually(WAIT, || async { second.stderr().contains("standing by") }).await;
    assert!(standing_by, "{}", second.stderr());

    let load = Load::start(
        MyWriter(mysql::connect().await),
        format!("`{database}`.t"),
        1_000,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.signal("STOP");
    assert!(
        wait_leader_pid(&mut etcd, &meta, second.pid(), WAIT).await,
        "the standby never took over: {}",
        second.stderr()
    );
    let flowing = eventually(WAIT, || async {
        etcd_dump(&mut etcd_at(&env("ETCDSYNC_TEST_ETCD")).await, &table)
            .await
            .len()
            > 400
    })
    .await;
    assert!(flowing, "no rows after the takeover: {}", second.stderr());
    first.signal("CONT");
    let deposed = eventually(WAIT, || async {
        first.stderr().contains("lost the pipeline's leadership")
    })
    .await;
    assert!(
        deposed,
        "the thawed leader did not notice: {}",
        first.stderr()
    );
    tokio::time::sleep(Duration::from_secs(TTL_SECS * 2)).await;
    assert!(
        first.still_running(),
        "with ha on the old leader stays as standby"
    );
    assert!(
        !second.stderr().contains("server_id clash")
            && !second.stderr().contains("set source.server_id"),
        "the new leader's binlog connection was reported as a clash: {}",
        second.stderr()
    );

    load.finish().await;
    assert_converges(&mut etcd, &table, my_rows, "after the failover").await;
    assert_eq!(
        leader(&mut etcd, &meta).await.map(|l| l["pid"].clone()),
        Some(second.pid().into())
    );
    assert_monotonic(&checkpoint_history(&mut etcd, &meta).await, binlog_position);
    let _ = std::fs::remove_dir_all(&dir);
}
