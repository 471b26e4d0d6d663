//! Tables whose keys come from a transform (`Route::tracked`, as `key_template` marks them),
//! against a real etcd (`ETCDSYNC_TEST_ETCD`): the sink's key index finds moved and deleted rows'
//! keys, truncates and snapshot clean-up follow the transformed keys, and two rows mapping to
//! one key are reported instead of overwriting each other.
#![cfg(feature = "integration-tests")]

mod common;

use common::*;
use etcdsync_core::change::{Column, Route};
use etcdsync_core::{Change, Message, Op, TableId, TableSchema, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// `public.settings (id int primary key, service text, name text, value text)`.
fn settings() -> Arc<TableSchema> {
    Arc::new(TableSchema::new(
        TableId::new("public", "settings"),
        vec![
            Column::new("id", "int4"),
            Column::new("service", "text"),
            Column::new("name", "text"),
            Column::new("value", "text"),
        ],
        vec![0],
    ))
}

fn setting(id: i64, service: &str, name: &str, value: &str) -> Vec<Value> {
    vec![
        Value::Int(id),
        Value::Text(service.into()),
        Value::Text(name.into()),
        Value::Text(value.into()),
    ]
}

/// Only the primary key, as an old row under REPLICA IDENTITY DEFAULT.
fn pk_only(id: i64) -> Vec<Value> {
    vec![
        Value::Int(id),
        Value::Missing,
        Value::Missing,
        Value::Missing,
    ]
}

/// What `key_template` ("{service}/{name}") and `value` (raw: value) make of a change.
fn templated(change: Change) -> Change {
    let key = |row: &[Value]| match (&row[1], &row[2]) {
        (Value::Text(service), Value::Text(name)) => Some(format!("{service}/{name}")),
        _ => None,
    };
    let value = |row: &[Value]| match &row[3] {
        Value::Text(v) => Some(v.as_bytes().to_vec()),
        _ => None,
    };
    let mut route = Route {
        tracked: true,
        ..Route::default()
    };
    match &change.op {
        Op::Insert { row } => {
            route.key = key(row);
            route.value = value(row);
        }
        Op::Update { old, row } => {
            route.key = key(row);
            route.old_key = old
                .as_deref()
                .and_then(key)
                .filter(|k| Some(k) != route.key.as_ref());
            route.value = value(row);
        }
        Op::Delete { old } => route.old_key = key(old),
        Op::Truncate => {}
    }
    Change { route, ..change }
}

fn insert_setting(id: i64, service: &str, name: &str, value: &str) -> Change {
    templated(Change::insert(
        settings(),
        setting(id, service, name, value),
    ))
}

async fn data(etcd: &mut etcd_client::Client, p: &Prefixes) -> BTreeMap<String, String> {
    let prefix = format!("{}/", p.data);
    dump(etcd, &prefix)
        .await
        .into_iter()
        .map(|(k, v)| (k[prefix.len()..].to_string(), v))
        .collect()
}

fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn transformed_keys_follow_moves_deletes_and_truncates() {
    let url = etcd_url();
    let p = Prefixes::new("tracked", &url);
    let mut sink = start(&p.yaml("")).await;
    let mut etcd = client(&url).await;
    let other = table("public", "other");

    sink.txn(
        vec![
            insert_setting(1, "billing", "timeout", "30"),
            insert_setting(2, "billing", "retries", "3"),
            insert_setting(3, "auth", "ttl", "60"),
            insert(&other, 1, "plain"),
        ],
        1,
    )
    .await;
    sink.wait_ack(&pos(1)).await;
    assert_eq!(
        data(&mut etcd, &p).await,
        map(&[
            ("auth/ttl", "60"),
            ("billing/retries", "3"),
            ("billing/timeout", "30"),
            ("public/other/1", &json(1, "plain")),
        ])
    );
    assert_eq!(
        get(&mut etcd, &format!("{}/index/public/settings/1", p.meta))
            .await
            .as_deref(),
        Some("billing/timeout")
    );
    assert_eq!(
        get(&mut etcd, &format!("{}/owner/billing/timeout", p.meta))
            .await
            .as_deref(),
        Some("public/settings/1")
    );

    // The service changes without an old row (REPLICA IDENTITY DEFAULT): the index knows the old
    // key. A delete carries only the primary key: the index knows its key too.
    sink.txn(
        vec![templated(Change::update(
            settings(),
            None,
            setting(1, "payments", "timeout", "45"),
        ))],
        2,
    )
    .await;
    sink.txn(vec![templated(Change::delete(settings(), pk_only(2)))], 3)
        .await;
    sink.wait_ack(&pos(3)).await;
    assert_eq!(
        data(&mut etcd, &p).await,
        map(&[
            ("auth/ttl", "60"),
            ("payments/timeout", "45"),
            ("public/other/1", &json(1, "plain"))
        ])
    );
    assert_eq!(
        get(&mut etcd, &format!("{}/index/public/settings/2", p.meta)).await,
        None
    );
    assert_eq!(
        get(&mut etcd, &format!("{}/owner/billing/timeout", p.meta)).await,
        None
    );

    // A truncate deletes exactly the table's keys; rows written after it in the same
    // transaction stay.
    sink.txn(
        vec![
            insert_setting(4, "auth", "mode", "strict"),
            templated(Change::truncate(settings())),
            insert_setting(5, "cache", "size", "10"),
        ],
        4,
    )
    .await;
    sink.wait_ack(&pos(4)).await;
    assert_eq!(
        data(&mut etcd, &p).await,
        map(&[("cache/size", "10"), ("public/other/1", &json(1, "plain"))])
    );
    let index = dump(&mut etcd, &format!("{}/index/", p.meta)).await;
    assert_eq!(
        index.into_values().collect::<Vec<_>>(),
        vec!["cache/size".to_string()]
    );

    // Two rows, one key: reported, nothing overwritten.
    let _ = sink
        .tx
        .send(Message::Changes(vec![insert_setting(
            6, "cache", "size", "99",
        )]))
        .await;
    let _ = sink.tx.send(commit(5)).await;
    let message = sink.result().await.expect_err("collision").to_string();
    assert!(message.contains("cache/size"), "{message}");
    assert!(
        message.contains("public/settings/6") && message.contains("public/settings/5"),
        "{message}"
    );
    assert_eq!(
        get(&mut etcd, &format!("{}/cache/size", p.data))
            .await
            .as_deref(),
        Some("10")
    );
}

#[tokio::test]
async fn a_snapshot_of_a_table_with_transformed_keys_leaves_no_stale_key() {
    let url = etcd_url();
    let p = Prefixes::new("tracked-snap", &url);
    let mut etcd = client(&url).await;
    let tables = vec![TableId::new("public", "settings")];

    let mut sink = start(&p.yaml("")).await;
    sink.txn(
        vec![
            insert_setting(1, "a", "x", "1"),
            insert_setting(2, "a", "y", "2"),
            insert_setting(4, "c", "z", "4"),
            insert_setting(7, "old", "gone", "7"),
        ],
        1,
    )
    .await;
    sink.wait_ack(&pos(1)).await;
    sink.close().await.expect("clean stop");

    // While the sync was down: 1 moved to b/x, 2 and 7 were deleted, 3 took a/y, 4 moved to d/z
    // and 5 took c/z. The snapshot sends 3 and 5 before the rows whose keys they take.
    let mut sink = start(&p.yaml("")).await;
    sink.send(Message::SnapshotStarted {
        tables: tables.clone(),
    })
    .await;
    sink.send(Message::Changes(vec![
        insert_setting(3, "a", "y", "3"),
        insert_setting(5, "c", "z", "5"),
        insert_setting(1, "b", "x", "1"),
        insert_setting(4, "d", "z", "4"),
    ]))
    .await;
    sink.send(Message::SnapshotFinished { position: pos(2) })
        .await;
    sink.wait_ack(&pos(2)).await;
    assert_eq!(
        data(&mut etcd, &p).await,
        map(&[("a/y", "3"), ("b/x", "1"), ("c/z", "5"), ("d/z", "4")])
    );
    let index: BTreeMap<String, String> =
        dump(&mut etcd, &format!("{}/index/public/settings/", p.meta))
            .await
            .into_iter()
            .map(|(k, v)| (k.rsplit('/').next().unwrap_or_default().to_string(), v))
            .collect();
    assert_eq!(
        index,
        map(&[("1", "b/x"), ("3", "a/y"), ("4", "d/z"), ("5", "c/z")])
    );
    let owners = dump(&mut etcd, &format!("{}/owner/", p.meta)).await;
    assert_eq!(owners.len(), 4, "{owners:?}");

    // Two snapshot rows with one key: reported.
    sink.send(Message::SnapshotStarted { tables }).await;
    let _ = sink
        .tx
        .send(Message::Changes(vec![
            insert_setting(1, "same", "key", "1"),
            insert_setting(3, "same", "key", "3"),
        ]))
        .await;
    let _ = sink
        .tx
        .send(Message::SnapshotFinished { position: pos(3) })
        .await;
    let message = sink.result().await.expect_err("collision").to_string();
    assert!(message.contains("same/key"), "{message}");
}

#[tokio::test]
async fn a_skipped_invalid_key_deletes_the_rows_old_key_however_it_is_known() {
    let url = etcd_url();
    let p = Prefixes::new("invalid", &url);
    let mut sink = start(&p.yaml("on_invalid_key: skip\n")).await;
    let mut etcd = client(&url).await;
    sink.txn(
        vec![
            insert_setting(1, "billing", "timeout", "30"),
            insert_setting(2, "billing", "retries", "3"),
            insert_setting(3, "auth", "ttl", "60"),
            insert_setting(4, "auth", "mode", "x"),
        ],
        1,
    )
    .await;
    sink.wait_ack(&pos(1)).await;
    assert_eq!(data(&mut etcd, &p).await.len(), 4);

    sink.txn(
        vec![
            // The old key from the transform (a full old row).
            templated(Change::update(
                settings(),
                Some(setting(1, "billing", "timeout", "30")),
                setting(1, "billing", "", "30"),
            )),
            // From the key index (only the primary key of the old row).
            templated(Change::update(
                settings(),
                Some(pk_only(2)),
                setting(2, "", "retries", "3"),
            )),
            // A new primary key too: the old row's entries go.
            templated(Change::update(
                settings(),
                Some(setting(3, "auth", "ttl", "60")),
                setting(30, "auth", "", "60"),
            )),
            // An insert that never had a key.
            insert_setting(5, "", "", "y"),
        ],
        2,
    )
    .await;
    sink.wait_ack(&pos(2)).await;
    assert_eq!(data(&mut etcd, &p).await, map(&[("auth/mode", "x")]));
    let index: Vec<String> = dump(&mut etcd, &format!("{}/", p.meta))
        .await
        .into_keys()
        .filter(|k| k.contains("/index/") || k.contains("/owner/"))
        .collect();
    assert_eq!(
        index,
        vec![
            format!("{}/index/public/settings/4", p.meta),
            format!("{}/owner/auth/mode", p.meta),
        ]
    );
    sink.close()
        .await
        .expect("the sink keeps running after skipping rows");
}
