//! The `mysql` source into the real etcd sink through `core::pipeline::run` (YAML config):
//! snapshot + stream of two databases, then a stop, changes while stopped, and a restart from
//! the checkpoint in etcd; `kill -9` of a pipeline process during the snapshot and in the middle
//! of a 100 000-row transaction; a 100 000-row transaction with bounded memory; a MariaDB
//! restart retried with backoff. Every key and value in etcd is compared with the database.
//!
//! `kill -9` is real: the pipeline runs in a child process — this test binary re-executed to run
//! only `child_pipeline_process`, whose body runs the YAML config it is given — and the test
//! sends it SIGKILL, so nothing is flushed, acknowledged or dropped in order.
#![cfg(feature = "integration-tests")]

use etcdsync_etcd as _;
use etcdsync_mysql as _;
use etcdsync_tests::mysql::{
    child_pipeline_main, connect, converges, db_state, db_state_yaml, etcd, etcd_count, etcd_dump,
    eventually, exec, source_section, start, unique, url, yaml_for, EtcdPrefixGuard,
    PipelineProcess, PrivateMariaDb, TestDbs,
};
use mysql_async::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn pipeline_yaml(name: &str, dbs: &TestDbs, prefix: &str) -> String {
    yaml_for(name, &url(), &includes(dbs), prefix)
}

fn includes(dbs: &TestDbs) -> Vec<String> {
    dbs.names.iter().map(|n| format!("{n}.*")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_stream_stop_and_resume_into_etcd() {
    let dbs = TestDbs::create("my_e2e", 2).await;
    let (a, b) = (dbs.name(0).to_string(), dbs.name(1).to_string());
    let name = unique("e2e");
    let prefix = format!("/{name}");
    let _guard = EtcdPrefixGuard(vec![format!("{prefix}/"), format!("{prefix}-meta/")]);
    let include: Vec<String> = dbs.names.iter().map(|n| format!("{n}.*")).collect();
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE `{a}`.orders (region CHAR(2), id BIGINT UNSIGNED, total DECIMAL(10,2), placed DATETIME(3), PRIMARY KEY (region, id));
             INSERT INTO `{a}`.orders VALUES ('eu', 1, 10.50, '2024-01-02 03:04:05.600'), ('us', 18446744073709551615, 0.00, NULL);
             CREATE TABLE `{b}`.users (id INT PRIMARY KEY, name VARCHAR(40), tags SET('x','y','z'));
             INSERT INTO `{b}`.users VALUES (1, 'ann/a', 'x,z'), (2, 'bob', '')"
        ),
    )
    .await;
    let yaml = pipeline_yaml(&name, &dbs, &prefix);
    let running = start(&yaml);
    converges(&prefix, &db_state(&include, &prefix).await).await;

    exec(
        &mut db,
        &format!(
            "INSERT INTO `{a}`.orders VALUES ('eu', 2, 99.99, NOW(3));
             UPDATE `{a}`.orders SET id = 3 WHERE region = 'eu' AND id = 1;
             UPDATE `{b}`.users SET tags = 'y' WHERE id = 2;
             DELETE FROM `{b}`.users WHERE id = 1"
        ),
    )
    .await;
    converges(&prefix, &db_state(&include, &prefix).await).await;
    running.stop().await;

    let mut client = etcd().await;
    let meta = etcd_dump(&mut client, &format!("{prefix}-meta/")).await;
    let checkpoint = meta
        .iter()
        .find(|(k, _)| k.ends_with("checkpoint"))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no checkpoint in {meta:#?}"));
    assert!(checkpoint.contains("\"source\":\"mysql\""), "{checkpoint}");

    // Changes while stopped, then a restart that resumes from the checkpoint.
    exec(
        &mut db,
        &format!(
            "INSERT INTO `{b}`.users VALUES (3, 'cé', 'x,y,z');
             TRUNCATE TABLE `{a}`.orders;
             INSERT INTO `{a}`.orders VALUES ('ap', 7, 7.00, '2000-01-01 00:00:00')"
        ),
    )
    .await;
    let running = start(&yaml);
    converges(&prefix, &db_state(&include, &prefix).await).await;
    let state = etcd_dump(&mut client, &format!("{prefix}/")).await;
    assert_eq!(
        state
            .get(&format!("{prefix}/{b}/users/3"))
            .map(String::as_str),
        Some(r#"{"id":3,"name":"cé","tags":["x","y","z"]}"#)
    );
    assert_eq!(
        state
            .get(&format!("{prefix}/{a}/orders/ap/7"))
            .map(String::as_str),
        Some(r#"{"region":"ap","id":7,"total":"7.00","placed":"2000-01-01T00:00:00"}"#)
    );
    running.stop().await;
}

/// Not a test of its own: the body of the child process that [`PipelineProcess`] starts with
/// `--ignored` (a normal run lists it as ignored, never as passed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of the kill -9 tests, started by them"]
async fn child_pipeline_process() {
    let result = child_pipeline_main()
        .await
        .expect("run only as the child of a kill -9 test (ETCDSYNC_TEST_CHILD_PIPELINE)");
    result.expect("the child pipeline failed");
}

const CHILD: &str = "child_pipeline_process";

/// Waits until etcd's data prefix equals `expected` exactly: the key count first (cheap), then
/// every key and value.
async fn converge_exact(prefix: &str, expected: &BTreeMap<String, String>, timeout: Duration) {
    let mut client = etcd().await;
    let data_prefix = format!("{prefix}/");
    let want = i64::try_from(expected.len()).unwrap_or(i64::MAX);
    let start = std::time::Instant::now();
    loop {
        if etcd_count(&mut client, &data_prefix).await == want
            && etcd_dump(&mut client, &data_prefix).await == *expected
        {
            return;
        }
        if start.elapsed() > timeout {
            let got = etcd_dump(&mut client, &data_prefix).await;
            let missing: Vec<_> = expected
                .keys()
                .filter(|k| !got.contains_key(*k))
                .take(5)
                .collect();
            let extra: Vec<_> = got
                .keys()
                .filter(|k| !expected.contains_key(*k))
                .take(5)
                .collect();
            let differ: Vec<_> = expected
                .iter()
                .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
                .take(3)
                .collect();
            panic!(
                "etcd did not converge in {timeout:?}: {} keys, want {}; missing {missing:?}, extra {extra:?}, different {differ:?}",
                got.len(),
                expected.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

const BIG: usize = 100_000;

async fn big_table(name: &str) {
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE `{name}`.big (id INT PRIMARY KEY, v VARCHAR(300));
             INSERT INTO `{name}`.big SELECT seq, CONCAT('s', seq, REPEAT('.', 200)) FROM `{name}`.seq_1_to_{BIG}"
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_the_snapshot_then_restart() {
    let dbs = TestDbs::create("my_k9s", 1).await;
    let name = dbs.name(0).to_string();
    let pipeline = unique("k9s").replace('_', "-");
    let prefix = format!("/{pipeline}");
    let _guard = EtcdPrefixGuard(vec![format!("{prefix}/"), format!("{prefix}-meta/")]);
    big_table(&name).await;
    let yaml = pipeline_yaml(&pipeline, &dbs, &prefix);
    let child = PipelineProcess::start(CHILD, &yaml);
    let mut client = etcd().await;
    let data_prefix = format!("{prefix}/");
    let started = eventually(WAIT, || {
        let mut c = client.clone();
        let p = data_prefix.clone();
        async move { etcd_count(&mut c, &p).await > 0 }
    })
    .await;
    assert!(started, "the snapshot wrote nothing: {}", child.log());
    child.kill9();
    let partial = etcd_count(&mut client, &data_prefix).await;
    assert!(
        partial > 0 && partial < BIG as i64,
        "killed in the middle of the snapshot ({partial} of {BIG} keys)"
    );
    // Rows the partial snapshot wrote disappear while the pipeline is down; others change.
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "DELETE FROM `{name}`.big WHERE id <= 2000;
             UPDATE `{name}`.big SET v = CONCAT('changed ', id) WHERE id % 1000 = 0;
             INSERT INTO `{name}`.big VALUES ({}, 'new')",
            BIG + 1
        ),
    )
    .await;
    let child = PipelineProcess::start(CHILD, &yaml);
    let expected = db_state(&includes(&dbs), &prefix).await;
    assert_eq!(expected.len(), BIG - 2000 + 1);
    converge_exact(&prefix, &expected, Duration::from_secs(120)).await;
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_a_100k_row_transaction_then_restart() {
    let dbs = TestDbs::create("my_k9t", 1).await;
    let name = dbs.name(0).to_string();
    let pipeline = unique("k9t").replace('_', "-");
    let prefix = format!("/{pipeline}");
    let _guard = EtcdPrefixGuard(vec![format!("{prefix}/"), format!("{prefix}-meta/")]);
    big_table(&name).await;
    let yaml = pipeline_yaml(&pipeline, &dbs, &prefix);
    let child = PipelineProcess::start(CHILD, &yaml);
    let expected = db_state(&includes(&dbs), &prefix).await;
    converge_exact(&prefix, &expected, Duration::from_secs(120)).await;

    // One transaction rewriting every row; the sink applies it in many etcd transactions.
    let mut db = connect().await;
    db.query_drop(format!(
        "UPDATE `{name}`.big SET v = CONCAT('u1 ', id, REPEAT('-', 200))"
    ))
    .await
    .expect("big update");
    let client = etcd().await;
    let first = format!("{prefix}/{name}/big/1");
    let last = format!("{prefix}/{name}/big/{BIG}");
    let value = |client: &etcd_client::Client, key: String| {
        let mut client = client.clone();
        async move {
            client
                .get(key, None)
                .await
                .ok()
                .and_then(|r| {
                    r.kvs()
                        .first()
                        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                })
                .unwrap_or_default()
        }
    };
    let midway = eventually(WAIT, || {
        let first = value(&client, first.clone());
        async move { first.await.contains("u1 ") }
    })
    .await;
    assert!(
        midway,
        "the big transaction never reached etcd: {}",
        child.log()
    );
    child.kill9();
    assert!(
        !value(&client, last.clone()).await.contains("u1 "),
        "killed before the whole transaction was applied"
    );
    // More changes while down, then a restart from the checkpoint (before the big transaction).
    exec(
        &mut db,
        &format!(
            "UPDATE `{name}`.big SET v = CONCAT('u2 ', id) WHERE id % 3 = 0;
             DELETE FROM `{name}`.big WHERE id > {};
             INSERT INTO `{name}`.big VALUES ({}, 'after')",
            BIG - 1000,
            BIG + 5
        ),
    )
    .await;
    let child = PipelineProcess::start(CHILD, &yaml);
    let expected = db_state(&includes(&dbs), &prefix).await;
    converge_exact(&prefix, &expected, Duration::from_secs(180)).await;
    assert!(
        value(&client, format!("{prefix}/{name}/big/3"))
            .await
            .starts_with(r#"{"id":3,"v":"u2 3"#),
        "the changes made while down are applied after the replayed transaction"
    );
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_row_transaction_reaches_etcd_with_bounded_memory() {
    let dbs = TestDbs::create("my_mem", 1).await;
    let name = dbs.name(0).to_string();
    let pipeline = unique("mem").replace('_', "-");
    let prefix = format!("/{pipeline}");
    let _guard = EtcdPrefixGuard(vec![format!("{prefix}/"), format!("{prefix}-meta/")]);
    let mut db = connect().await;
    exec(
        &mut db,
        &format!("CREATE TABLE `{name}`.big (id INT PRIMARY KEY, v VARCHAR(1000))"),
    )
    .await;
    let yaml = pipeline_yaml(&pipeline, &dbs, &prefix);
    let mut child = PipelineProcess::start(CHILD, &yaml);
    // Running and idle (the empty snapshot is done once the checkpoint exists).
    let client = etcd().await;
    let meta = format!("{prefix}-meta/");
    let idle = eventually(WAIT, || {
        let mut c = client.clone();
        let m = meta.clone();
        async move { etcd_count(&mut c, &m).await > 0 }
    })
    .await;
    assert!(idle, "no checkpoint: {}", child.log());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = child.rss_kib().expect("child RSS");
    // ~100 MB of row data in one source transaction.
    db.query_drop(format!(
        "INSERT INTO `{name}`.big SELECT seq, CONCAT(seq, ' ', REPEAT('m', 990)) FROM `{name}`.seq_1_to_{BIG}"
    ))
    .await
    .expect("big insert");
    let expected = db_state(&includes(&dbs), &prefix).await;
    converge_exact(&prefix, &expected, Duration::from_secs(180)).await;
    assert!(child.is_running(), "{}", child.log());
    let peak = child.peak_rss_kib().expect("child peak RSS");
    let grew_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!(
        "pipeline RSS: {} MiB before, peak {} MiB",
        baseline / 1024,
        peak / 1024
    );
    // Holding the transaction whole would take well over 100 MiB (its rows alone are ~100 MB).
    assert!(
        grew_mib < 64,
        "the pipeline's memory grew by {grew_mib} MiB for a 100 MB transaction: it is not streamed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_restart_is_retried_with_backoff() {
    let mut server = PrivateMariaDb::start().await;
    let mut db = server.connect().await;
    let name = unique("my_restart");
    exec(
        &mut db,
        &format!(
            "CREATE DATABASE `{name}`;
             CREATE TABLE `{name}`.kv (k INT PRIMARY KEY, v TEXT);
             INSERT INTO `{name}`.kv VALUES (1, 'one'), (2, 'two')"
        ),
    )
    .await;
    drop(db);
    let pipeline = unique("restart").replace('_', "-");
    let prefix = format!("/{pipeline}");
    let _guard = EtcdPrefixGuard(vec![format!("{prefix}/"), format!("{prefix}-meta/")]);
    let include = vec![format!("{name}.*")];
    let state_yaml = source_section(&server.url(), &include);
    let running = start(&yaml_for(&pipeline, &server.url(), &include, &prefix));
    converge_exact(&prefix, &db_state_yaml(&state_yaml, &prefix).await, WAIT).await;

    for round in 0..2 {
        server.stop().await;
        // Down for a few seconds: the pipeline fails, retries with backoff and keeps failing.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            running.is_running(),
            "the pipeline gave up while the server was down"
        );
        server.restart().await;
        let mut db = server.connect().await;
        exec(
            &mut db,
            &format!(
                "INSERT INTO `{name}`.kv VALUES ({0}, 'round {round}');
                 UPDATE `{name}`.kv SET v = 'updated {round}' WHERE k = 1;
                 DELETE FROM `{name}`.kv WHERE k = 2",
                10 + round
            ),
        )
        .await;
        let expected = db_state_yaml(&state_yaml, &prefix).await;
        assert!(expected.len() >= 2);
        converge_exact(&prefix, &expected, Duration::from_secs(90)).await;
    }
    assert!(running.is_running(), "the pipeline is still running");
    running.stop().await;
}
