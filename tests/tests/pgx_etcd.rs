//! PostgreSQL → etcd end to end (tools/testenv.sh servers): the pipeline is built from YAML and
//! run with `core::pipeline::run`; every key and value under the data prefix is compared with
//! the database (DESIGN §2–6).
#![cfg(feature = "integration-tests")]

use etcdsync_core::config::PipelineConfig;
use etcdsync_core::TableId;
use etcdsync_etcd as _;
use etcdsync_pgx as _;
use etcdsync_tests::pg::{
    env, etcd, etcd_dump, eventually, expected, unique, EtcdPrefixGuard, TestDb,
};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(40);

struct Pipeline {
    name: String,
    data: String,
    meta: String,
    yaml: String,
}

impl Pipeline {
    fn new(db: &TestDb, include: &[&str], source_extra: &str) -> Pipeline {
        let name = unique("e").replace('_', "-");
        let data = format!("/t-{name}");
        let meta = format!("/m-{name}");
        let include = include
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let yaml = format!(
            "name: {name}\nsource:\n  type: pgx\n  url: \"{url}\"\n  sslmode: disable\n  heartbeat_interval: 1s\n  \
             tables:\n    include: [{include}]\n{source_extra}\
             sink:\n  type: etcd\n  endpoints: [\"{etcd}\"]\n  prefix: {data}\n  meta_prefix: {meta}\n  heartbeat_interval: 1s\n",
            url = db.url,
            etcd = env("ETCDSYNC_TEST_ETCD"),
        );
        Pipeline {
            name,
            data,
            meta,
            yaml,
        }
    }

    fn guard(&self) -> EtcdPrefixGuard {
        EtcdPrefixGuard(vec![format!("{}/", self.data), format!("{}/", self.meta)])
    }

    fn slot(&self) -> String {
        format!("etcdsync_{}", self.name.replace('-', "_"))
    }

    fn start(
        &self,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<etcdsync_core::Result<()>>,
    ) {
        let config =
            PipelineConfig::parse(&self.yaml).unwrap_or_else(|e| panic!("pipeline config: {e}"));
        let token = CancellationToken::new();
        let stop = token.clone();
        let task = tokio::spawn(async move { etcdsync_core::pipeline::run(&config, stop).await });
        (token, task)
    }
}

async fn stop(token: CancellationToken, task: tokio::task::JoinHandle<etcdsync_core::Result<()>>) {
    token.cancel();
    match tokio::time::timeout(Duration::from_secs(30), task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => panic!("pipeline failed: {e}"),
        Ok(Err(e)) => panic!("pipeline panicked: {e}"),
        Err(_) => panic!("pipeline did not stop within 30 s"),
    }
}

/// Waits until etcd under the data prefix equals the database's tables; on timeout shows both.
async fn converge(db: &TestDb, p: &Pipeline, tables: &[(TableId, &[&str])]) {
    let pg = db.client().await;
    let mut client = etcd().await;
    let mut last = (BTreeMap::new(), BTreeMap::new());
    for _ in 0..(WAIT.as_millis() / 200) {
        let mut want = BTreeMap::new();
        for (table, key) in tables {
            want.extend(expected(&pg, &p.data, table, key).await);
        }
        let got = etcd_dump(&mut client, &format!("{}/", p.data)).await;
        if got == want {
            return;
        }
        last = (got, want);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        last.0, last.1,
        "etcd (left) never matched the database (right)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_stream_with_composite_keys_truncate_and_key_change() {
    let db = TestDb::create("pgx_e2e").await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TABLE items (id int, sub text, name text, PRIMARY KEY (id, sub));
         INSERT INTO items SELECT g, 's' || g, 'row ' || g FROM generate_series(1, 600) g;
         INSERT INTO items VALUES (0, 'a/b%c', 'slash and percent'), (0, 'é ü', 'unicode');
         CREATE TABLE other (k text PRIMARY KEY, v int);
         INSERT INTO other VALUES ('k/1', 1);",
    )
    .await
    .expect("setup");
    let p = Pipeline::new(&db, &["public.*"], "");
    let _guard = p.guard();
    let items = TableId::new("public", "items");
    let other = TableId::new("public", "other");
    let tables: [(TableId, &[&str]); 2] =
        [(items.clone(), &["id", "sub"]), (other.clone(), &["k"])];
    let (token, task) = p.start();
    converge(&db, &p, &tables).await;
    let mut client = etcd().await;
    let dump = etcd_dump(&mut client, &format!("{}/", p.data)).await;
    assert!(
        dump.contains_key(&format!("{}/public/items/0/a%2Fb%25c", p.data)),
        "escaped key missing"
    );
    assert!(dump.contains_key(&format!("{}/public/other/k%2F1", p.data)));

    pg.batch_execute("INSERT INTO items VALUES (1000, 'q/r', 'new')")
        .await
        .expect("insert");
    pg.batch_execute("UPDATE items SET name = 'changed' WHERE id = 2")
        .await
        .expect("update");
    pg.batch_execute("UPDATE items SET id = 2000, sub = '%%' WHERE id = 0 AND sub = 'a/b%c'")
        .await
        .expect("key change");
    pg.batch_execute("DELETE FROM items WHERE id BETWEEN 10 AND 20")
        .await
        .expect("delete");
    pg.batch_execute(
        "BEGIN; INSERT INTO other VALUES ('k2', 2); UPDATE other SET v = 3 WHERE k = 'k/1'; COMMIT",
    )
    .await
    .expect("txn");
    converge(&db, &p, &tables).await;

    pg.batch_execute("TRUNCATE items; INSERT INTO items VALUES (7, 'after', 'truncate')")
        .await
        .expect("truncate");
    converge(&db, &p, &tables).await;
    stop(token, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_the_checkpoint_without_loss() {
    let db = TestDb::create("pgx_e2e_resume").await;
    let pg = db.client().await;
    pg.batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv SELECT g, 'v' || g FROM generate_series(1, 100) g")
        .await
        .expect("setup");
    let p = Pipeline::new(&db, &["public.kv"], "");
    let _guard = p.guard();
    let tables: [(TableId, &[&str]); 1] = [(TableId::new("public", "kv"), &["k"])];

    let (token, task) = p.start();
    converge(&db, &p, &tables).await;
    pg.batch_execute("UPDATE kv SET v = 'first run' WHERE k <= 10")
        .await
        .expect("update");
    converge(&db, &p, &tables).await;
    stop(token, task).await;

    // changes while stopped arrive after the restart
    pg.batch_execute("INSERT INTO kv VALUES (101, 'while down'); DELETE FROM kv WHERE k = 5")
        .await
        .expect("down");
    pg.batch_execute("UPDATE kv SET v = 'second' WHERE k = 6")
        .await
        .expect("down 2");
    let (token, task) = p.start();
    converge(&db, &p, &tables).await;

    // an abrupt stop (task aborted, no final status update) loses nothing either
    pg.batch_execute("INSERT INTO kv SELECT g, 'bulk' FROM generate_series(200, 1200) g")
        .await
        .expect("bulk");
    tokio::time::sleep(Duration::from_millis(300)).await;
    task.abort();
    drop(token);
    pg.batch_execute("UPDATE kv SET v = 'after abort' WHERE k > 1100")
        .await
        .expect("after abort");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (token, task) = p.start();
    converge(&db, &p, &tables).await;
    stop(token, task).await;

    // the slot never confirmed more than etcd holds
    let mut client = etcd().await;
    let meta = etcd_dump(&mut client, &format!("{}/", p.meta)).await;
    let checkpoint = meta
        .iter()
        .find(|(k, _)| k.ends_with("checkpoint"))
        .map(|(_, v)| v.clone())
        .expect("checkpoint key");
    let checkpoint: serde_json::Value = serde_json::from_str(&checkpoint).expect("checkpoint json");
    let position = checkpoint["position"]
        .as_str()
        .expect("position")
        .to_string();
    let (hi, lo) = position.split_once('/').expect("lsn");
    let position = (u64::from_str_radix(hi, 16).expect("hex") << 32)
        | u64::from_str_radix(lo, 16).expect("hex");
    let confirmed = db.confirmed_flush(&p.slot()).await.expect("slot");
    assert!(
        confirmed <= position,
        "slot confirmed {confirmed:X} beyond etcd's checkpoint {position:X}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_database_does_not_retain_wal() {
    let db = TestDb::create("pgx_e2e_idle").await;
    let pg = db.client().await;
    pg.batch_execute("CREATE TABLE synced (k int PRIMARY KEY); CREATE TABLE noise (k int PRIMARY KEY); INSERT INTO synced VALUES (1)")
        .await
        .expect("setup");
    let p = Pipeline::new(&db, &["public.synced"], "");
    let _guard = p.guard();
    let tables: [(TableId, &[&str]); 1] = [(TableId::new("public", "synced"), &["k"])];
    let (token, task) = p.start();
    converge(&db, &p, &tables).await;
    for round in 0..3 {
        pg.batch_execute(&format!(
            "INSERT INTO noise SELECT g FROM generate_series({0} * 1000 + 1, {0} * 1000 + 1000) g",
            round
        ))
        .await
        .expect("noise");
        let target: i64 = pg
            .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8", &[])
            .await
            .expect("lsn")
            .get(0);
        let slot = p.slot();
        let advanced = eventually(WAIT, || async {
            db.confirmed_flush(&slot)
                .await
                .is_some_and(|c| c >= target as u64)
        })
        .await;
        assert!(
            advanced,
            "round {round}: confirmed_flush_lsn did not reach {target:X}"
        );
    }
    stop(token, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_stream_write_identical_values() {
    let db = TestDb::create("pgx_e2e_types").await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE TABLE typed (id int PRIMARY KEY, n numeric(8,3), f float8, tz timestamptz, iv interval,
            a int[][], j jsonb, b bytea, m mood, d date, t text);",
    )
    .await
    .expect("ddl");
    let values =
        "1.500, 'NaN', '2024-05-06 07:08:09.123+00', '1 day 02:00:00', '{{1,NULL},{3,4}}', \
                  '{\"k\": [true, null]}', '\\xdeadbeef', 'happy', 'infinity', E'line\\nbreak/%'";
    pg.batch_execute(&format!("INSERT INTO typed VALUES (1, {values})"))
        .await
        .expect("row 1");
    let p = Pipeline::new(&db, &["public.typed"], "");
    let _guard = p.guard();
    let (token, task) = p.start();
    let mut client = etcd().await;
    let key = |id: i32| format!("{}/public/typed/{id}", p.data);
    assert!(
        eventually(WAIT, || {
            let mut c = client.clone();
            let k = key(1);
            async move { etcd_dump(&mut c, &k).await.contains_key(&k) }
        })
        .await,
        "snapshot row missing"
    );
    pg.batch_execute(&format!("INSERT INTO typed VALUES (2, {values})"))
        .await
        .expect("row 2");
    assert!(
        eventually(WAIT, || {
            let mut c = client.clone();
            let k = key(2);
            async move { etcd_dump(&mut c, &k).await.contains_key(&k) }
        })
        .await,
        "streamed row missing"
    );
    let dump = etcd_dump(&mut client, &format!("{}/", p.data)).await;
    let one = dump[&key(1)].replacen("{\"id\":1,", "{", 1);
    let two = dump[&key(2)].replacen("{\"id\":2,", "{", 1);
    assert_eq!(one, two);
    assert_eq!(
        one,
        r#"{"n":"1.500","f":"NaN","tz":"2024-05-06T07:08:09.123Z","iv":"P1DT2H","a":[[1,null],[3,4]],"j":{"k":[true,null]},"b":"3q2+7w==","m":"happy","d":"infinity","t":"line\nbreak/%"}"#
    );
    stop(token, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connections_are_retried_and_nothing_is_lost() {
    let db = TestDb::create("pgx_e2e_reconnect").await;
    let pg = db.client().await;
    pg.batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv VALUES (1, 'a')")
        .await
        .expect("setup");
    let p = Pipeline::new(&db, &["public.kv"], "");
    let _guard = p.guard();
    let tables: [(TableId, &[&str]); 1] = [(TableId::new("public", "kv"), &["k"])];
    let (token, task) = p.start();
    converge(&db, &p, &tables).await;
    for round in 0..2 {
        // every connection of the pipeline to this database goes away (as on a server restart)
        pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db.name],
        )
        .await
        .expect("terminate");
        pg.batch_execute(&format!("INSERT INTO kv SELECT g, 'round {round}' FROM generate_series({0} * 100 + 10, {0} * 100 + 60) g", round))
            .await
            .expect("insert while reconnecting");
        converge(&db, &p, &tables).await;
    }
    assert!(
        !task.is_finished(),
        "the pipeline gave up instead of retrying"
    );
    stop(token, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_interrupted_by_a_crash_starts_over() {
    let db = TestDb::create("pgx_e2e_snapcrash").await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TABLE big (id int PRIMARY KEY, v text);
         INSERT INTO big SELECT g, repeat('x', 100) || g FROM generate_series(1, 50000) g;",
    )
    .await
    .expect("setup");
    let p = Pipeline::new(&db, &["public.big"], "");
    let _guard = p.guard();
    let tables: [(TableId, &[&str]); 1] = [(TableId::new("public", "big"), &["id"])];
    let (token, task) = p.start();
    // abort somewhere inside the snapshot
    let mut client = etcd().await;
    let prefix = format!("{}/", p.data);
    let started = eventually(WAIT, || {
        let mut c = client.clone();
        let prefix = prefix.clone();
        async move { !etcd_dump(&mut c, &prefix).await.is_empty() }
    })
    .await;
    assert!(started, "the snapshot wrote nothing");
    task.abort();
    drop(token);
    let partial = etcd_dump(&mut client, &prefix).await.len();
    // rows deleted meanwhile must not survive as stale keys after the new snapshot
    pg.batch_execute("DELETE FROM big WHERE id <= 100")
        .await
        .expect("delete");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (token, task) = p.start();
    converge(&db, &p, &tables).await;
    stop(token, task).await;
    tracing::info!(partial, "keys written before the crash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_created_while_running_is_copied_and_streamed() {
    let db = TestDb::create("pgx_e2e_newtable").await;
    let pg = db.client().await;
    pg.batch_execute("CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a VALUES (1, 'a')")
        .await
        .expect("setup");
    let p = Pipeline::new(&db, &["public.*"], "  table_refresh_interval: 1s\n");
    let _guard = p.guard();
    let a: (TableId, &[&str]) = (TableId::new("public", "a"), &["id"]);
    let (token, task) = p.start();
    converge(&db, &p, std::slice::from_ref(&a)).await;
    pg.batch_execute("CREATE TABLE b (k text PRIMARY KEY, n int); INSERT INTO b SELECT 'k' || g, g FROM generate_series(1, 300) g")
        .await
        .expect("new table");
    let tables = [a, (TableId::new("public", "b"), &["k"][..])];
    converge(&db, &p, &tables).await;
    pg.batch_execute("UPDATE b SET n = -1 WHERE k = 'k1'; DELETE FROM b WHERE k = 'k2'; INSERT INTO a VALUES (2, 'b')")
        .await
        .expect("after copy");
    converge(&db, &p, &tables).await;
    stop(token, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toast_unchanged_values_keep_their_stored_value() {
    let db = TestDb::create("pgx_e2e_toast").await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         INSERT INTO docs SELECT 1, string_agg(md5(g::text), ''), 0 FROM generate_series(1, 400) g;",
    )
    .await
    .expect("setup");
    let p = Pipeline::new(&db, &["public.docs"], "");
    let _guard = p.guard();
    let tables: [(TableId, &[&str]); 1] = [(TableId::new("public", "docs"), &["id"])];
    let (token, task) = p.start();
    converge(&db, &p, &tables).await;
    // a > 8 kB value streamed, then updates that leave it unchanged (sent as 'u')
    pg.batch_execute("INSERT INTO docs SELECT 2, string_agg(md5((g * 7)::text), ''), 0 FROM generate_series(1, 400) g")
        .await
        .expect("insert big");
    pg.batch_execute("UPDATE docs SET n = n + 1")
        .await
        .expect("update 1");
    pg.batch_execute("BEGIN; UPDATE docs SET n = n + 1 WHERE id = 2; UPDATE docs SET n = n + 1 WHERE id = 2; COMMIT")
        .await
        .expect("update 2");
    converge(&db, &p, &tables).await;
    stop(token, task).await;
}
