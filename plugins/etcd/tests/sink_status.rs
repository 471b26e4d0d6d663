//! What a running etcd sink reports, against a real etcd (`ETCDSYNC_TEST_ETCD`): the status key
//! it keeps (`{meta}/status`, read by `status` through the inspector) through the snapshot and
//! streaming, and its metrics after transactions.
#![cfg(feature = "integration-tests")]

mod common;

use common::*;
use etcdsync_core::telemetry::{self, Phase};
use etcdsync_core::{Change, Message};
use etcdsync_etcd::status::Status;
use std::sync::Arc;
use std::time::Duration;

/// Tests that run a sink take this: the phase and progress in telemetry are process-wide.
static SINKS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---- status key --------------------------------------------------------------------------

/// Waits until `{meta}/status` satisfies `ok`, returning it.
async fn wait_status(
    etcd: &mut etcd_client::Client,
    p: &Prefixes,
    what: &str,
    ok: impl Fn(&Status) -> bool,
) -> Status {
    let key = format!("{}/status", p.meta);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        if let Some(value) = get(etcd, &key).await {
            let status: Status = serde_json::from_str(&value)
                .unwrap_or_else(|e| panic!("status is not a Status ({e}): {value}"));
            if ok(&status) {
                return status;
            }
            last = Some(value);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no status with {what} in time; last: {last:?}");
}

#[tokio::test]
async fn the_status_key_follows_the_snapshot_and_then_streaming() {
    let _serial = SINKS.lock().await;
    let url = etcd_url();
    let p = Prefixes::new("status", &url);
    let mut etcd = client(&url).await;
    let t = table("public", "status_users");
    let name = t.id.to_string();
    let tm = telemetry::get();

    let mut sink = start(&p.yaml("")).await;
    let status = wait_status(&mut etcd, &p, "phase starting", |s| {
        s.phase == Phase::Starting
    })
    .await;
    assert_eq!(status.pid, std::process::id());
    assert!(!status.host.is_empty());
    assert!(
        humantime::parse_rfc3339(&status.updated_at).is_ok(),
        "{status:?}"
    );

    // The source reports progress as it reads; the sink publishes it.
    tm.snapshot_table_started(&t.id, Some(100));
    sink.send(Message::SnapshotStarted {
        tables: vec![t.id.clone()],
    })
    .await;
    let rows: Vec<Change> = (1..=40).map(|i| insert(&t, i, "r")).collect();
    sink.send(Message::Changes(rows)).await;
    tm.snapshot_rows_read(&t.id, 40);
    let status = wait_status(&mut etcd, &p, "snapshot progress", |s| {
        s.phase == Phase::Snapshot && s.tables.get(&name).is_some_and(|t| t.rows == 40)
    })
    .await;
    let progress = &status.tables[&name];
    assert_eq!((progress.estimated_rows, progress.done), (Some(100), false));

    tm.snapshot_table_done(&t.id);
    sink.send(Message::SnapshotFinished { position: pos(5) })
        .await;
    sink.wait_ack(&pos(5)).await;
    let status = wait_status(&mut etcd, &p, "phase streaming", |s| {
        s.phase == Phase::Streaming
    })
    .await;
    assert!(status.tables[&name].done, "{status:?}");
    let applied_before = status.txns_applied;

    sink.txn(vec![insert(&t, 41, "s")], 6).await;
    sink.wait_ack(&pos(6)).await;
    let status = wait_status(&mut etcd, &p, "the applied transaction", |s| {
        s.txns_applied > applied_before && s.last_commit_at.is_some()
    })
    .await;
    assert!(
        status.lag_seconds.is_some_and(|lag| lag >= 0.0),
        "{status:?}"
    );

    // Rewritten every couple of seconds while the sink runs.
    let first = status.updated_at.clone();
    wait_status(&mut etcd, &p, "a newer updated_at", |s| {
        s.updated_at > first
    })
    .await;

    // `status` reads it through the inspector; the raw JSON has every documented field.
    let meta = inspector(&p.yaml(""))
        .await
        .metadata()
        .await
        .expect("metadata");
    let json = &meta["status"];
    for field in [
        "phase",
        "updated_at",
        "pid",
        "host",
        "tables",
        "last_commit_at",
        "lag_seconds",
        "txns_applied",
    ] {
        assert!(json.get(field).is_some(), "no {field} in {json}");
    }
    assert_eq!(json["phase"], "streaming");
    assert!(
        json.get("stopped").is_none(),
        "a running sink is not stopped: {json}"
    );
    sink.close().await.expect("clean stop");
    let meta = inspector(&p.yaml(""))
        .await
        .metadata()
        .await
        .expect("metadata");
    assert_eq!(
        meta["status"]["stopped"], true,
        "the last write marks a clean stop"
    );
    // Only the status key was added under the meta prefix besides checkpoint, snapshot and the
    // marker of the table written.
    let keys: Vec<String> = dump(&mut etcd, &format!("{}/", p.meta))
        .await
        .into_keys()
        .collect();
    assert_eq!(
        keys,
        vec![
            format!("{}/checkpoint", p.meta),
            format!("{}/snapshot", p.meta),
            format!("{}/status", p.meta),
            format!("{}/tables/public/status_users", p.meta)
        ]
    );
}

// ---- metrics -----------------------------------------------------------------------------

/// The value of the series `name{labels…}` in `etcdsync_core::telemetry::get().render()` (labels
/// given must match, others may exist); 0 when absent.
fn metric(name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = telemetry::get().render();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let found: Vec<(&str, &str)> = label_text
            .split("\",")
            .filter(|part| !part.is_empty())
            .filter_map(|part| {
                let (k, v) = part.split_once("=\"")?;
                Some((k, v.trim_end_matches('"')))
            })
            .collect();
        if labels.iter().all(|l| found.contains(l)) {
            return value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
        }
    }
    0.0
}

/// Waits (up to 10 s) until `ok` holds.
async fn eventually(what: &str, ok: impl Fn() -> bool) {
    for _ in 0..100 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not in time: {what}");
}

#[tokio::test]
async fn metrics_move_after_transactions() {
    let _serial = SINKS.lock().await;
    let url = etcd_url();
    let p = Prefixes::new("metrics", &url);
    let t = table("public", "metrics_rows");
    let changes = |op: &str| {
        metric(
            "etcdsync_changes_applied_total",
            &[("table", "public.metrics_rows"), ("op", op)],
        )
    };
    let data_txns = || metric("etcdsync_sink_txns_total", &[("kind", "data")]);
    let latency_count = || metric("etcdsync_sink_txn_duration_seconds_count", &[]);
    let batch_count = || metric("etcdsync_sink_batch_ops_count", &[]);
    let before = (data_txns(), latency_count(), batch_count());

    let mut sink = start(&p.yaml("")).await;
    sink.txn(
        vec![
            insert(&t, 1, "a"),
            insert(&t, 2, "b"),
            insert(&t, 3, "c"),
            Change::update(Arc::clone(&t), None, row(1, "a2")),
            Change::delete(Arc::clone(&t), row(2, "b")),
        ],
        1,
    )
    .await;
    sink.wait_ack(&pos(1)).await;

    assert_eq!(changes("insert"), 3.0);
    assert_eq!(changes("update"), 1.0);
    assert_eq!(changes("delete"), 1.0);
    assert!(data_txns() > before.0);
    assert!(latency_count() > before.1);
    assert!(batch_count() > before.2);
    assert!(metric("etcdsync_last_checkpoint_timestamp_seconds", &[]) > 1.0e9);
    assert!(metric("etcdsync_replication_lag_seconds", &[]) >= 0.0);
    assert_eq!(metric("etcdsync_phase", &[]), 2.0);
    assert!(metric("etcdsync_sink_txns_total", &[("kind", "checkpoint")]) >= 0.0);

    // A snapshot moves the phase; its inserts count as inserts.
    sink.send(Message::SnapshotStarted {
        tables: vec![t.id.clone()],
    })
    .await;
    sink.send(Message::Changes(vec![insert(&t, 10, "s")])).await;
    eventually("phase snapshot", || metric("etcdsync_phase", &[]) == 1.0).await;
    assert!(
        metric("etcdsync_sink_txns_total", &[("kind", "snapshot")]) >= 1.0,
        "the snapshot's start marker"
    );
    sink.send(Message::SnapshotFinished { position: pos(2) })
        .await;
    sink.wait_ack(&pos(2)).await;
    assert_eq!(changes("insert"), 4.0);
    assert_eq!(metric("etcdsync_phase", &[]), 2.0);
    sink.close().await.expect("clean stop");
}
