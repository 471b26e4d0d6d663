//! Retry against a private etcd killed (SIGKILL) mid-stream and restarted on the same data dir:
//! the sink waits and retries with backoff, acknowledges nothing while etcd is down, then
//! resumes without losing a transaction (DESIGN §4).
#![cfg(feature = "integration-tests")]

mod common;

use common::*;
use etcd_client::GetOptions;
use std::time::Duration;

#[tokio::test]
async fn the_sink_resumes_after_etcd_restarts_and_never_acks_while_it_is_down() {
    const TOTAL: u64 = 400;
    let mut server = PrivateEtcd::start("retry").await;
    let url = server.url();
    let p = Prefixes::new("retry", &url);
    let mut sink = start(&p.yaml("request_timeout: 2s\nconnect_timeout: 1s\n")).await;
    let t = table("s", "t");

    for i in 1..=20 {
        sink.txn(vec![insert(&t, i as i64, "v")], i).await;
    }
    sink.wait_ack(&pos(20)).await;

    // Keep sending while etcd goes away.
    let sender = {
        let tx = sink.tx.clone();
        let t = t.clone();
        tokio::spawn(async move {
            for i in 21..=TOTAL {
                let changes = etcdsync_core::Message::Changes(vec![insert(&t, i as i64, "v")]);
                if tx.send(changes).await.is_err() || tx.send(commit(i)).await.is_err() {
                    panic!("the sink stopped while etcd was down");
                }
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let retries_before = sink_retries();
    let errors_before = transient_sink_errors();
    server.kill();

    // Whatever was acknowledged was durable before the kill; after it, nothing more is.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked_while_down = sink.last_ack().expect("acks before the kill");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sink.last_ack(),
        Some(acked_while_down.clone()),
        "acknowledged while etcd was down"
    );
    assert!(
        !sink.handle.is_finished(),
        "the sink gave up instead of retrying"
    );
    assert!(sink_retries() > retries_before, "no retries counted");
    assert!(
        transient_sink_errors() > errors_before,
        "retried failures not counted as errors"
    );

    server.restart().await;
    // Everything acknowledged survived the crash.
    let acked: u64 = acked_while_down
        .as_str()
        .trim_start_matches('p')
        .parse()
        .expect("position");
    let mut etcd = client(&url).await;
    for i in 1..=acked {
        assert!(
            get(&mut etcd, &p.key("s", "t", i as i64)).await.is_some(),
            "acknowledged row {i} lost"
        );
    }

    sender.await.expect("sender");
    sink.wait_ack(&pos(TOTAL)).await;
    let count = etcd
        .get(
            format!("{}/", p.data),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count")
        .count();
    assert_eq!(count as u64, TOTAL);
    let checkpoint: etcdsync_core::Checkpoint = serde_json::from_str(
        &get(&mut etcd, &p.checkpoint_key())
            .await
            .expect("checkpoint"),
    )
    .expect("json");
    assert_eq!(checkpoint.position, pos(TOTAL));
    sink.close().await.expect("clean stop");
}

#[tokio::test]
async fn shutdown_while_etcd_is_down_returns_without_acknowledging() {
    let mut server = PrivateEtcd::start("retry-stop").await;
    let url = server.url();
    let p = Prefixes::new("retry-stop", &url);
    let mut sink = start(&p.yaml("request_timeout: 1s\nconnect_timeout: 1s\n")).await;
    let t = table("s", "t");
    sink.txn(vec![insert(&t, 1, "v")], 1).await;
    sink.wait_ack(&pos(1)).await;
    server.kill();
    sink.txn(vec![insert(&t, 2, "v")], 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.shutdown.cancel();
    let acked = sink.acked.clone();
    let result = tokio::time::timeout(PATIENCE, sink.handle)
        .await
        .expect("stops in time")
        .expect("task");
    result.expect("a shutdown is not an error");
    assert_eq!(acked.borrow().clone(), Some(pos(1)));
}

/// `etcdsync_errors_total{kind="transient",stage="sink"}` of this process.
fn transient_sink_errors() -> u64 {
    etcdsync_core::telemetry::get()
        .errors
        .with_label_values(&["transient", "sink"])
        .get()
}

/// `etcdsync_retries_total{stage="sink"}` of this process.
fn sink_retries() -> u64 {
    etcdsync_core::telemetry::get()
        .retries
        .with_label_values(&["sink"])
        .get()
}
