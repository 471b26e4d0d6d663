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

/// The key columns of `ev` and of its partitions.
const EV_KEY: &[&str] = &["id", "region"];

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
    pipe.wait_exactly(
        &run,
        &[("ev", EV_KEY), ("ev_asia", EV_KEY)],
        "snapshot of the root",
    )
    .await;
    pipe.sql("INSERT INTO ev VALUES (41, 'eu', 'streamed'); UPDATE ev SET v = 'moved' WHERE id = 1; DELETE FROM ev WHERE id = 2;")
        .await;
    pipe.wait_exactly(
        &run,
        &[("ev", EV_KEY), ("ev_asia", EV_KEY)],
        "streamed through the root",
    )
    .await;
    pipe.assert_no_partition_keys(&["ev_eu", "ev_us"]).await;

    pipe.sql(
        "ALTER TABLE ev ATTACH PARTITION ev_asia FOR VALUES IN ('asia');
         TRUNCATE ev_us;
         ALTER TABLE ev DETACH PARTITION ev_eu;",
    )
    .await;
    // ev_asia is now a partition (its own keys go), ev_eu an ordinary table of the selection.
    pipe.wait_exactly(
        &run,
        &[("ev", EV_KEY), ("ev_eu", EV_KEY)],
        "after attach, truncate of a partition, detach",
    )
    .await;
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
    pipe.wait_exactly(
        &run,
        &[("ev", EV_KEY), ("ev_asia", EV_KEY)],
        "snapshot of the root",
    )
    .await;
    // Let the registry (written once etcd holds the snapshot) settle, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.stop().await;

    pipe.sql("TRUNCATE ev_us;").await;
    let mut run = Run::start(&config, &[]);
    pipe.wait_exactly(
        &run,
        &[("ev", EV_KEY), ("ev_asia", EV_KEY)],
        "after a partition was truncated while stopped",
    )
    .await;
    assert!(
        run.stderr().contains("copying it again"),
        "{}",
        run.stderr()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.stop().await;

    pipe.sql(
        "ALTER TABLE ev DETACH PARTITION ev_eu;
         ALTER TABLE ev ATTACH PARTITION ev_asia FOR VALUES IN ('asia');",
    )
    .await;
    let mut run = Run::start(&config, &[]);
    pipe.wait_exactly(
        &run,
        &[("ev", EV_KEY), ("ev_eu", EV_KEY)],
        "after detach and attach while stopped",
    )
    .await;
    assert!(run.still_running(), "{}", run.stderr());
    assert_verify_clean(&config).await;
}
