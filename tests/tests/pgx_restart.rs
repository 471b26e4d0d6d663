//! PostgreSQL restarted under a running pipeline (issue 3, reconnect): the source loses its
//! connections, the pipeline retries with backoff and resumes from the checkpoint; etcd ends up
//! equal to the database. Alone in its test binary because it restarts the shared test server.
#![cfg(feature = "integration-tests")]

use etcdsync_core::config::PipelineConfig;
use etcdsync_core::TableId;
use etcdsync_etcd as _;
use etcdsync_pgx as _;
use etcdsync_tests::pg::{env, etcd, etcd_dump, expected, unique, EtcdPrefixGuard, TestDb};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn pg_ctl_restart() {
    let bin = env("ETCDSYNC_TEST_PG_BIN");
    let data = env("ETCDSYNC_TEST_PG_DATA");
    // tools/testenv.sh keeps the server log beside the data directory.
    let log = std::path::Path::new(&data).with_file_name("postgres.log");
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(format!("{bin}/pg_ctl"))
        .args(["restart", "-m", "fast", "-w", "-D", &data, "-l"])
        .arg(&log)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run pg_ctl restart");
    assert!(status.success(), "pg_ctl restart failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_stream_is_retried_and_nothing_is_lost() {
    let db = TestDb::create("pg_restart").await;
    let name = unique("rs").replace('_', "-");
    let (data, meta) = (format!("/r-{name}"), format!("/rm-{name}"));
    let _guard = EtcdPrefixGuard(vec![format!("{data}/"), format!("{meta}/")]);
    let yaml = format!(
        "name: {name}\nsource: {{ type: pgx, url: \"{}\", sslmode: disable, tables: {{ include: [\"public.*\"] }} }}\n\
         sink: {{ type: etcd, endpoints: [\"{}\"], prefix: {data}, meta_prefix: {meta} }}\n",
        db.url,
        env("ETCDSYNC_TEST_ETCD")
    );
    db.client()
        .await
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, label text); INSERT INTO items VALUES (1, 'before');")
        .await
        .expect("setup");
    let config = PipelineConfig::parse(&yaml).expect("config");
    let token = CancellationToken::new();
    let stop = token.clone();
    let task = tokio::spawn(async move { etcdsync_core::pipeline::run(&config, stop).await });

    let converged = || async {
        let pg = db.client().await;
        let want = expected(&pg, &data, &TableId::new("public", "items"), &["id"]).await;
        etcd_dump(&mut etcd().await, &format!("{data}/")).await == want
    };
    let wait = |what: &'static str| {
        let converged = &converged;
        async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            while Instant::now() < deadline {
                if converged().await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            panic!("etcd never matched the database {what}");
        }
    };
    wait("before the restart").await;

    db.client()
        .await
        .batch_execute("INSERT INTO items SELECT g, 'pre' FROM generate_series(2, 500) g")
        .await
        .expect("insert");
    pg_ctl_restart();
    db.client()
        .await
        .batch_execute("INSERT INTO items VALUES (1000, 'after'); UPDATE items SET label = 'touched' WHERE id < 50; DELETE FROM items WHERE id = 2;")
        .await
        .expect("writes after the restart");
    wait("after the restart").await;
    assert!(
        !task.is_finished(),
        "the pipeline gave up instead of retrying"
    );

    token.cancel();
    let result = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("stops")
        .expect("join");
    result.expect("pipeline ends cleanly");
}
