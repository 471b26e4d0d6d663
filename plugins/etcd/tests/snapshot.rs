//! Snapshots into a real etcd (`ETCDSYNC_TEST_ETCD`, DESIGN §6): inserts with several etcd
//! transactions in flight, stale keys of the snapshotted tables removed (paged), other tables
//! untouched, the checkpoint and `{meta}/snapshot` written at the end, streaming afterwards.
#![cfg(feature = "integration-tests")]

mod common;

use common::*;
use etcd_client::{Client, GetOptions, TxnOp};
use etcdsync_core::{Checkpoint, Message, TableId};
use std::collections::BTreeMap;

async fn plant(etcd: &mut Client, keys: &[(String, String)]) {
    for chunk in keys.chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
            .collect();
        etcd.txn(etcd_client::Txn::new().and_then(ops))
            .await
            .expect("plant keys");
    }
}

#[tokio::test]
async fn a_snapshot_removes_keys_it_did_not_rewrite_and_leaves_other_tables_alone() {
    let url = etcd_url();
    let p = Prefixes::new("snapshot", &url);
    let mut etcd = client(&url).await;
    let users = table("public", "users");
    let k = |table: &str, id: &str| format!("{}/public/{table}/{id}", p.data);

    // Before: 1200 stale keys of `users` (more than one scan page), an old value of a row the
    // snapshot rewrites, a table snapshotted empty, and tables the snapshot does not cover.
    let mut planted: Vec<(String, String)> = (0..1200)
        .map(|i| (k("users", &format!("stale-{i:04}")), "old".into()))
        .collect();
    planted.push((k("users", "5"), "old".into()));
    planted.push((k("empty", "1"), "old".into()));
    planted.push((k("users2", "1"), "keep".into()));
    planted.push((k("other", "1"), "keep".into()));
    planted.push((format!("{}/public/users", p.data), "keep".into()));
    plant(&mut etcd, &planted).await;

    let mut sink = start(&p.yaml("max_txn_ops: 16\nsnapshot_txns_in_flight: 4\n")).await;
    sink.send(Message::SnapshotStarted {
        tables: vec![
            TableId::new("public", "users"),
            TableId::new("public", "empty"),
        ],
    })
    .await;
    let rows: Vec<_> = (0..500)
        .map(|i| insert(&users, i, &format!("u{i}")))
        .collect();
    for chunk in rows.chunks(64) {
        sink.send(Message::Changes(chunk.to_vec())).await;
    }
    assert_eq!(sink.last_ack(), None);
    sink.send(Message::SnapshotFinished { position: pos(10) })
        .await;
    sink.wait_ack(&pos(10)).await;

    let mut expected: BTreeMap<String, String> = (0..500)
        .map(|i| (k("users", &i.to_string()), json(i, &format!("u{i}"))))
        .collect();
    expected.insert(k("users2", "1"), "keep".into());
    expected.insert(k("other", "1"), "keep".into());
    expected.insert(format!("{}/public/users", p.data), "keep".into());
    assert_eq!(dump(&mut etcd, &format!("{}/", p.data)).await, expected);

    let checkpoint: Checkpoint = serde_json::from_str(
        &get(&mut etcd, &p.checkpoint_key())
            .await
            .expect("checkpoint"),
    )
    .expect("json");
    assert_eq!(checkpoint.position, pos(10));
    let marker: serde_json::Value = serde_json::from_str(
        &get(&mut etcd, &format!("{}/snapshot", p.meta))
            .await
            .expect("marker"),
    )
    .expect("json");
    assert_eq!(marker["state"], "done");
    assert!(
        marker["start_revision"].as_i64().is_some_and(|r| r > 0),
        "{marker}"
    );
    assert_eq!(marker["tables"][0]["table"], "users");

    // Streaming goes on after the snapshot.
    sink.txn(vec![insert(&users, 1000, "late")], 11).await;
    sink.wait_ack(&pos(11)).await;
    assert_eq!(
        get(&mut etcd, &k("users", "1000")).await,
        Some(json(1000, "late"))
    );
    sink.close().await.expect("clean stop");
}

#[tokio::test]
async fn a_resnapshot_drops_rows_deleted_meanwhile_and_an_unfinished_snapshot_writes_no_checkpoint()
{
    let url = etcd_url();
    let p = Prefixes::new("resnapshot", &url);
    let mut etcd = client(&url).await;
    let t = table("app", "items");
    let tables = vec![TableId::new("app", "items")];

    let mut sink = start(&p.yaml("")).await;
    sink.send(Message::SnapshotStarted {
        tables: tables.clone(),
    })
    .await;
    sink.send(Message::Changes(
        (1..=10).map(|i| insert(&t, i, "v1")).collect(),
    ))
    .await;
    sink.send(Message::SnapshotFinished { position: pos(1) })
        .await;
    sink.wait_ack(&pos(1)).await;
    sink.close().await.expect("clean stop");

    // A snapshot cut short (input closed before SnapshotFinished) leaves the checkpoint alone.
    let sink = start(&p.yaml("")).await;
    sink.send(Message::SnapshotStarted {
        tables: tables.clone(),
    })
    .await;
    sink.send(Message::Changes(
        (1..=3).map(|i| insert(&t, i, "partial")).collect(),
    ))
    .await;
    sink.close().await.expect("clean stop");
    let checkpoint: Checkpoint = serde_json::from_str(
        &get(&mut etcd, &p.checkpoint_key())
            .await
            .expect("checkpoint"),
    )
    .expect("json");
    assert_eq!(checkpoint.position, pos(1));

    // Starting over: rows 4..=10 were deleted in the database meanwhile.
    let mut sink = start(&p.yaml("")).await;
    sink.send(Message::SnapshotStarted { tables }).await;
    sink.send(Message::Changes(
        (1..=3).map(|i| insert(&t, i, "v2")).collect(),
    ))
    .await;
    sink.send(Message::SnapshotFinished { position: pos(2) })
        .await;
    sink.wait_ack(&pos(2)).await;
    let keys = etcd
        .get(
            format!("{}/", p.data),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .expect("get")
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect::<BTreeMap<_, _>>();
    let expected: BTreeMap<String, String> = (1..=3)
        .map(|i| (p.key("app", "items", i), json(i, "v2")))
        .collect();
    assert_eq!(keys, expected);
    sink.close().await.expect("clean stop");
}
