//! Partitioned tables with the real `etcdsync` binary, PostgreSQL and etcd (issue 11): synced
//! under the root's name; partitions attached, detached or truncated — while running or while
//! etcdsync is stopped — copy the table again. Each scenario ends with `verify` clean.
#![cfg(feature = "integration-tests")]

mod common;

use common::*;
use std::time::Duration;

const PARTITIONED: &str =
    "CREATE TABLE ev (id int NOT NULL, region text NOT NULL, v text, PRIMARY KEY (id, region))
         PARTITION BY LIST (region);
     CREATE TABLE ev_eu PARTITION OF ev FOR VALUES IN ('eu');
     CREATE TABLE ev_us PARTITION OF ev FOR VALUES IN ('us');
     INSERT INTO ev SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 'v' || g
         FROM generate_series(1, 40) g;
     CREATE TABLE ev_asia (id int NOT NULL, region text NOT NULL, v text, PRIMARY KEY (id, region));
     INSERT INTO ev_asia VALUES (1000, 'asia', 'attached later');";

/// Whether etcd holds exactly the rows of `tables` (keys: id, region).
async fn holds_exactly(pipe: &Pipe, tables: &[&str]) -> bool {
    let client = pipe.db.client().await;
    let mut want = std::collections::BTreeMap::new();
    for table in tables {
        want.extend(
            etcdsync_tests::pg::expected(
                &client,
                &pipe.data,
                &etcdsync_core::TableId::new("public", *table),
                &["id", "region"],
            )
            .await,
        );
    }
    pipe.etcd_data().await == want
}

fn partitions_config(pipe: &Pipe, file: &str) -> std::path::PathBuf {
    pipe.config(
        file,
        Parts {
            include: "\"public.ev*\"",
            source_extra: "  table_refresh_interval: 1s\n",
            ..Parts::default()
        },
    )
}

/// A partitioned table syncs under its own name (through its root, in snapshot and stream); its
/// partitions, matched by the same glob, are not synced a second time. Attaching, detaching or
/// truncating a partition sends no row changes, so the table is copied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_syncs_under_its_root_name() {
    let pipe = Pipe::new("parts").await;
    pipe.sql(PARTITIONED).await;
    let config = partitions_config(&pipe, "parts.yaml");
    let run = Run::start(&config, &[]);
    // `ev_asia` is an ordinary table until it is attached.
    let ok =
        etcdsync_tests::pg::eventually(WAIT, || holds_exactly(&pipe, &["ev", "ev_asia"])).await;
    assert!(ok, "snapshot of the root: {}", run.stderr());
    pipe.sql("INSERT INTO ev VALUES (41, 'eu', 'streamed'); UPDATE ev SET v = 'moved' WHERE id = 1; DELETE FROM ev WHERE id = 2;")
        .await;
    let ok =
        etcdsync_tests::pg::eventually(WAIT, || holds_exactly(&pipe, &["ev", "ev_asia"])).await;
    assert!(ok, "streamed through the root: {}", run.stderr());
    assert!(
        !pipe
            .etcd_data()
            .await
            .keys()
            .any(|k| k.contains("/ev_eu/") || k.contains("/ev_us/")),
        "a partition was synced under its own name"
    );

    pipe.sql(
        "ALTER TABLE ev ATTACH PARTITION ev_asia FOR VALUES IN ('asia');
         TRUNCATE ev_us;
         ALTER TABLE ev DETACH PARTITION ev_eu;",
    )
    .await;
    // ev_asia is now a partition (its own keys go), ev_eu an ordinary table of the selection.
    let ok = etcdsync_tests::pg::eventually(WAIT, || holds_exactly(&pipe, &["ev", "ev_eu"])).await;
    assert!(
        ok,
        "after attach, truncate of a partition, detach: {}",
        run.stderr()
    );
    assert_verify_clean(&config).await;
}

/// Partitions attached, detached or truncated while etcdsync is stopped: the registry keeps the
/// leaf partitions as copied, so the next start finds the change and copies the table again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_changed_while_stopped_are_noticed_at_start() {
    let pipe = Pipe::new("partstop").await;
    pipe.sql(PARTITIONED).await;
    let config = partitions_config(&pipe, "partstop.yaml");
    let mut run = Run::start(&config, &[]);
    let ok =
        etcdsync_tests::pg::eventually(WAIT, || holds_exactly(&pipe, &["ev", "ev_asia"])).await;
    assert!(ok, "snapshot of the root: {}", run.stderr());
    // Let the registry (written once etcd holds the snapshot) settle, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.signal("TERM");
    let status = run.wait(WAIT).await.expect("stops");
    assert!(status.success(), "{}", run.stderr());

    pipe.sql("TRUNCATE ev_us;").await;
    let mut run = Run::start(&config, &[]);
    let ok =
        etcdsync_tests::pg::eventually(WAIT, || holds_exactly(&pipe, &["ev", "ev_asia"])).await;
    assert!(
        ok,
        "after a partition was truncated while stopped: {}",
        run.stderr()
    );
    assert!(
        run.stderr().contains("copying it again"),
        "{}",
        run.stderr()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.signal("TERM");
    let status = run.wait(WAIT).await.expect("stops");
    assert!(status.success(), "{}", run.stderr());

    pipe.sql(
        "ALTER TABLE ev DETACH PARTITION ev_eu;
         ALTER TABLE ev ATTACH PARTITION ev_asia FOR VALUES IN ('asia');",
    )
    .await;
    let mut run = Run::start(&config, &[]);
    let ok = etcdsync_tests::pg::eventually(WAIT, || holds_exactly(&pipe, &["ev", "ev_eu"])).await;
    assert!(
        ok,
        "after detach and attach while stopped: {}",
        run.stderr()
    );
    assert!(run.still_running(), "{}", run.stderr());
    assert_verify_clean(&config).await;
}
