//! The sink writes and deletes nothing outside its two prefixes (DESIGN §2), checked on a
//! private etcd whose whole keyspace the test owns: every key outside `{prefix}/` and
//! `{meta_prefix}/` keeps its value and revision through streaming, truncates and a snapshot.
#![cfg(feature = "integration-tests")]

mod common;

use common::*;
use etcd_client::{Client, GetOptions};
use etcdsync_core::{Change, Message, TableId};
use std::collections::BTreeMap;

/// Every key with its value and mod_revision.
async fn keyspace(etcd: &mut Client) -> BTreeMap<Vec<u8>, (Vec<u8>, i64)> {
    let response = etcd
        .get(vec![0u8], Some(GetOptions::new().with_from_key()))
        .await
        .expect("get all");
    response
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), (kv.value().to_vec(), kv.mod_revision())))
        .collect()
}

#[tokio::test]
async fn nothing_outside_the_two_prefixes_changes() {
    let server = PrivateEtcd::start("confine").await;
    let url = server.url();
    let p = Prefixes::new("confine", &url);
    let mut etcd = client(&url).await;

    // Neighbours: keys that share bytes with the prefixes but are outside them.
    let neighbours = [
        p.data.clone(),
        format!("{}0", p.data),
        format!("{}-x/public/t/1", p.data),
        format!("{}.", p.data),
        p.meta.clone(),
        format!("{}0", p.meta),
        format!("{}-other/checkpoint", p.meta),
        "/".to_string(),
        "/etcdsync/public/t/1".to_string(),
        "a".to_string(),
        "\u{7f}".to_string(),
    ];
    for key in &neighbours {
        etcd.put(key.as_str(), "neighbour", None)
            .await
            .expect("put");
    }
    let before = keyspace(&mut etcd).await;

    let mut sink = start(&p.yaml("max_txn_ops: 8\n")).await;
    let t = table("public", "t");
    let t2 = table("public", "t2");
    sink.send(Message::SnapshotStarted {
        tables: vec![TableId::new("public", "t"), TableId::new("public", "t2")],
    })
    .await;
    sink.send(Message::Changes(
        (1..=40).map(|i| insert(&t, i, "s")).collect(),
    ))
    .await;
    sink.send(Message::SnapshotFinished { position: pos(1) })
        .await;
    sink.txn(
        vec![
            insert(&t2, 1, "a"),
            Change::update(t.clone(), Some(row(1, "s")), row(100, "moved")),
        ],
        2,
    )
    .await;
    sink.txn(
        vec![
            Change::delete(t.clone(), row(2, "s")),
            Change::truncate(t2.clone()),
        ],
        3,
    )
    .await;
    sink.txn(vec![Change::truncate(t.clone()), insert(&t, 7, "again")], 4)
        .await;
    sink.send(Message::Heartbeat { position: pos(5) }).await;
    sink.wait_ack(&pos(5)).await;
    // A second snapshot removes what it does not rewrite.
    sink.send(Message::SnapshotStarted {
        tables: vec![TableId::new("public", "t")],
    })
    .await;
    sink.send(Message::Changes(vec![insert(&t, 8, "s2")])).await;
    sink.send(Message::SnapshotFinished { position: pos(6) })
        .await;
    sink.wait_ack(&pos(6)).await;
    sink.close().await.expect("clean stop");

    let after = keyspace(&mut etcd).await;
    let data = format!("{}/", p.data).into_bytes();
    let meta = format!("{}/", p.meta).into_bytes();
    let outside = |map: &BTreeMap<Vec<u8>, (Vec<u8>, i64)>| {
        map.iter()
            .filter(|(k, _)| !k.starts_with(&data) && !k.starts_with(&meta))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(outside(&after), outside(&before));
    assert_eq!(outside(&before).len(), neighbours.len());
    // And the sink did write inside its prefixes.
    assert_eq!(dump(&mut etcd, &format!("{}/", p.data)).await.len(), 1);
    assert!(after.keys().any(|k| k.starts_with(&meta)));
}
