//! Streaming into a real etcd (`ETCDSYNC_TEST_ETCD`): puts, deletes, key changes, coalescing,
//! truncate, oversize values, TOAST fill (also of many updates within the request limit),
//! transform routes confined to the data prefix, and bad configs naming the key. Checkpoints,
//! split transactions and transaction order are in stream_order.rs.
#![cfg(feature = "integration-tests")]

mod common;

use common::*;
use etcd_client::GetOptions;
use etcdsync_core::change::Route;
use etcdsync_core::{Change, ErrorKind, Message, TableId, TableSchema, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

fn map(entries: &[(&str, String)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[tokio::test]
async fn insert_update_delete_and_key_change() {
    let url = etcd_url();
    let p = Prefixes::new("crud", &url);
    let mut sink = start(&p.yaml("")).await;
    let mut etcd = client(&url).await;
    let users = table("public", "users");

    sink.txn(
        vec![
            insert(&users, 1, "a"),
            insert(&users, 2, "b"),
            insert(&users, 3, "c"),
        ],
        1,
    )
    .await;
    sink.wait_ack(&pos(1)).await;
    let k = |id| p.key("public", "users", id);
    assert_eq!(
        dump(&mut etcd, &format!("{}/", p.data)).await,
        map(&[
            (&k(1), json(1, "a")),
            (&k(2), json(2, "b")),
            (&k(3), json(3, "c"))
        ])
    );

    sink.txn(vec![Change::update(users.clone(), None, row(1, "a2"))], 2)
        .await;
    sink.txn(vec![Change::delete(users.clone(), row(2, "b"))], 3)
        .await;
    sink.txn(
        vec![Change::update(
            users.clone(),
            Some(row(3, "c")),
            row(30, "c"),
        )],
        4,
    )
    .await;
    sink.wait_ack(&pos(4)).await;
    assert_eq!(
        dump(&mut etcd, &format!("{}/", p.data)).await,
        map(&[(&k(1), json(1, "a2")), (&k(30), json(30, "c"))])
    );

    // The key change deleted the old key in the same etcd transaction that put the new one.
    let new = etcd.get(k(30), None).await.expect("get");
    let revision = new.kvs()[0].mod_revision();
    let before = etcd
        .get(k(3), Some(GetOptions::new().with_revision(revision - 1)))
        .await
        .expect("get");
    assert_eq!(
        before.kvs().len(),
        1,
        "old key existed right before the key change"
    );

    let checkpoint = checkpoint_in_etcd(&mut etcd, &p)
        .await
        .expect("checkpoint written");
    assert_eq!(checkpoint.position, pos(4));
    assert_eq!(checkpoint.source, SOURCE);
    assert!(checkpoint.committed_at.is_some());
    sink.close().await.expect("clean stop");
}

#[tokio::test]
async fn a_key_written_twice_in_one_transaction_is_coalesced() {
    let url = etcd_url();
    let p = Prefixes::new("coalesce", &url);
    let mut sink = start(&p.yaml("")).await;
    let mut etcd = client(&url).await;
    let t = table("s", "t");
    sink.txn(
        vec![
            insert(&t, 1, "a"),
            Change::update(t.clone(), None, row(1, "b")),
            insert(&t, 2, "x"),
            Change::delete(t.clone(), row(2, "x")),
            insert(&t, 3, "y"),
            Change::update(t.clone(), None, row(3, "z")),
        ],
        1,
    )
    .await;
    sink.wait_ack(&pos(1)).await;
    let k = |id| p.key("s", "t", id);
    assert_eq!(
        dump(&mut etcd, &format!("{}/", p.data)).await,
        map(&[(&k(1), json(1, "b")), (&k(3), json(3, "z"))])
    );
    // Each key was written once (version 1), all in one etcd transaction with the checkpoint.
    let response = etcd
        .get(
            format!("{}/", p.data),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .expect("get");
    let revisions: BTreeSet<i64> = response.kvs().iter().map(|kv| kv.mod_revision()).collect();
    assert!(
        response.kvs().iter().all(|kv| kv.version() == 1),
        "{:?}",
        response.kvs()
    );
    assert_eq!(revisions.len(), 1);
    let checkpoint = etcd.get(p.checkpoint_key(), None).await.expect("get");
    assert_eq!(
        checkpoint.kvs()[0].mod_revision(),
        *revisions.first().expect("one")
    );
    sink.close().await.expect("clean stop");
}

#[tokio::test]
async fn truncate_deletes_the_tables_range_and_not_its_neighbour() {
    let url = etcd_url();
    let p = Prefixes::new("truncate", &url);
    let mut sink = start(&p.yaml("")).await;
    let mut etcd = client(&url).await;
    let t = table("s", "t");
    let t2 = table("s", "t2");
    sink.txn(
        vec![
            insert(&t, 1, "a"),
            insert(&t, 2, "a"),
            insert(&t2, 1, "b"),
            insert(&t2, 2, "b"),
        ],
        1,
    )
    .await;
    // Put before and after the truncate in one source transaction; a neighbour written too.
    sink.txn(
        vec![
            insert(&t, 4, "c"),
            Change::truncate(t.clone()),
            insert(&t, 5, "d"),
            insert(&t2, 3, "e"),
        ],
        2,
    )
    .await;
    sink.wait_ack(&pos(2)).await;
    let k = |table: &str, id| p.key("s", table, id);
    assert_eq!(
        dump(&mut etcd, &format!("{}/", p.data)).await,
        map(&[
            (&k("t", 5), json(5, "d")),
            (&k("t2", 1), json(1, "b")),
            (&k("t2", 2), json(2, "b")),
            (&k("t2", 3), json(3, "e"))
        ])
    );
    sink.txn(vec![Change::truncate(t2.clone())], 3).await;
    sink.wait_ack(&pos(3)).await;
    assert_eq!(
        dump(&mut etcd, &format!("{}/", p.data)).await,
        map(&[(&k("t", 5), json(5, "d"))])
    );
    sink.close().await.expect("clean stop");
}

#[tokio::test]
async fn an_oversize_value_stops_the_sink_naming_table_and_key() {
    let url = etcd_url();
    let p = Prefixes::new("oversize", &url);
    let sink = start(&p.yaml("max_request_bytes: 65536\n")).await;
    let t = table("s", "big");
    let _ = sink
        .tx
        .send(Message::Changes(vec![
            insert(&t, 1, "small"),
            insert(&t, 2, &"x".repeat(100_000)),
        ]))
        .await;
    let _ = sink.tx.send(commit(1)).await;
    let error = sink.result().await.expect_err("oversize is an error");
    let message = error.to_string();
    assert_eq!(error.kind(), ErrorKind::Fatal);
    assert!(message.contains("s.big"), "{message}");
    assert!(message.contains(&p.key("s", "big", 2)), "{message}");
    assert!(
        message.contains("sink.max_request_bytes") && message.contains("on_oversize"),
        "{message}"
    );
}

#[tokio::test]
async fn on_oversize_skip_skips_the_value_and_counts_it() {
    let url = etcd_url();
    let p = Prefixes::new("skip", &url);
    let mut sink = start(&p.yaml("max_request_bytes: 65536\non_oversize: skip\n")).await;
    let mut etcd = client(&url).await;
    let t = table("s", "big");
    let before = oversize_skipped("s.big");
    sink.txn(
        vec![
            insert(&t, 1, "small"),
            insert(&t, 2, &"x".repeat(100_000)),
            insert(&t, 3, "small"),
        ],
        1,
    )
    .await;
    sink.wait_ack(&pos(1)).await;
    let k = |id| p.key("s", "big", id);
    assert_eq!(
        dump(&mut etcd, &format!("{}/", p.data)).await,
        map(&[(&k(1), json(1, "small")), (&k(3), json(3, "small"))])
    );
    assert!(oversize_skipped("s.big") > before);
    sink.close().await.expect("clean stop");
}

fn doc_table() -> Arc<TableSchema> {
    use etcdsync_core::change::Column;
    Arc::new(TableSchema::new(
        TableId::new("public", "docs"),
        vec![
            Column::new("id", "int4"),
            Column::new("doc", "jsonb"),
            Column::new("n", "numeric"),
            Column::new("body", "text"),
        ],
        vec![0],
    ))
}

#[tokio::test]
async fn unchanged_toast_columns_are_filled_from_etcd_and_from_the_pending_batch() {
    let url = etcd_url();
    let p = Prefixes::new("toast", &url);
    let mut sink = start(&p.yaml("")).await;
    let mut etcd = client(&url).await;
    let docs = doc_table();
    let row = |id: i64, doc: Value, n: Value, body: Value| vec![Value::Int(id), doc, n, body];
    let text = |s: &str| Value::Text(s.into());

    // From etcd: the row was applied by an earlier etcd transaction.
    sink.txn(
        vec![Change::insert(
            docs.clone(),
            row(
                1,
                Value::Json("{ \"a\" : [1, 2.50] }".into()),
                Value::Decimal("1.50".into()),
                text("long body"),
            ),
        )],
        1,
    )
    .await;
    sink.wait_ack(&pos(1)).await;
    sink.txn(
        vec![Change::update(
            docs.clone(),
            None,
            row(
                1,
                Value::Unchanged,
                Value::Decimal("2.00".into()),
                Value::Unchanged,
            ),
        )],
        2,
    )
    .await;
    sink.wait_ack(&pos(2)).await;
    assert_eq!(
        get(&mut etcd, &p.key("public", "docs", 1)).await.as_deref(),
        Some(r#"{"id":1,"doc":{"a":[1,2.50]},"n":"2.00","body":"long body"}"#)
    );

    // From the pending batch (same source transaction), then through a key change.
    sink.txn(
        vec![
            Change::insert(docs.clone(), row(2, Value::Null, Value::Null, text("b2"))),
            Change::update(
                docs.clone(),
                None,
                row(
                    2,
                    Value::Unchanged,
                    Value::Decimal("3".into()),
                    Value::Unchanged,
                ),
            ),
        ],
        3,
    )
    .await;
    sink.txn(
        vec![Change::update(
            docs.clone(),
            Some(row(2, Value::Missing, Value::Missing, Value::Missing)),
            row(
                20,
                Value::Unchanged,
                Value::Decimal("4".into()),
                Value::Unchanged,
            ),
        )],
        4,
    )
    .await;
    sink.wait_ack(&pos(4)).await;
    assert_eq!(get(&mut etcd, &p.key("public", "docs", 2)).await, None);
    assert_eq!(
        get(&mut etcd, &p.key("public", "docs", 20))
            .await
            .as_deref(),
        Some(r#"{"id":20,"doc":null,"n":"4","body":"b2"}"#)
    );

    // Nothing to fill from: an error naming table, key and column.
    let _ = sink
        .tx
        .send(Message::Changes(vec![Change::update(
            docs.clone(),
            None,
            row(99, Value::Null, Value::Null, Value::Unchanged),
        )]))
        .await;
    let _ = sink.tx.send(commit(5)).await;
    let message = sink.result().await.expect_err("unresolvable").to_string();
    assert!(message.contains("public.docs"), "{message}");
    assert!(message.contains(&p.key("public", "docs", 99)), "{message}");
    assert!(message.contains("column body"), "{message}");
}

#[tokio::test]
async fn transform_routes_are_used_and_confined_to_the_data_prefix() {
    let url = etcd_url();
    let p = Prefixes::new("route", &url);
    let mut sink = start(&p.yaml("")).await;
    let mut etcd = client(&url).await;
    let t = table("s", "t");
    let routed = |key: &str, old_key: Option<&str>, value: &str, change: Change| Change {
        route: Route {
            key: Some(key.to_string()),
            old_key: old_key.map(str::to_string),
            value: Some(value.as_bytes().to_vec()),
            tracked: false,
        },
        ..change
    };
    // Route keys are relative to the data prefix.
    let config_a = format!("{}/config/a", p.data);
    let config_b = format!("{}/config/b", p.data);
    sink.txn(vec![routed("config/a", None, "v1", insert(&t, 1, "a"))], 1)
        .await;
    sink.wait_ack(&pos(1)).await;
    assert_eq!(get(&mut etcd, &config_a).await.as_deref(), Some("v1"));
    // A moved key: the old one is deleted in the same etcd transaction.
    sink.txn(
        vec![routed(
            "config/b",
            Some("config/a"),
            "v2",
            Change::update(t.clone(), None, row(1, "b")),
        )],
        2,
    )
    .await;
    sink.wait_ack(&pos(2)).await;
    assert_eq!(
        dump(&mut etcd, &format!("{}/", p.data)).await,
        map(&[(&config_b, "v2".to_string())])
    );

    // An absolute key is refused, naming it; nothing is written anywhere.
    let outside = format!("/elsewhere-{}", unique("route"));
    let _ = sink
        .tx
        .send(Message::Changes(vec![routed(
            &outside,
            None,
            "x",
            insert(&t, 2, "c"),
        )]))
        .await;
    let _ = sink.tx.send(commit(3)).await;
    let message = sink
        .result()
        .await
        .expect_err("outside the prefix")
        .to_string();
    assert!(
        message.contains(&outside) && message.contains("data prefix"),
        "{message}"
    );
    assert_eq!(get(&mut etcd, &outside).await, None);
    assert_eq!(dump(&mut etcd, &format!("{}/", p.data)).await.len(), 1);
}

#[tokio::test]
async fn bad_configs_name_the_key() {
    let url = etcd_url();
    let overlap = format!(
        "type: etcd\nendpoints: [\"{url}\"]\nprefix: /etcdsync\nmeta_prefix: /etcdsync/meta\n"
    );
    let message = build(&overlap)
        .await
        .err()
        .expect("overlap is an error")
        .to_string();
    assert!(
        message.contains("sink.prefix") && message.contains("sink.meta_prefix"),
        "{message}"
    );
    let unknown = format!("type: etcd\nendpoints: [\"{url}\"]\nmax_txn_opz: 5\n");
    let message = build(&unknown)
        .await
        .err()
        .expect("an unknown key is an error")
        .to_string();
    assert!(message.contains("max_txn_opz"), "{message}");
}

/// `etcdsync_oversize_values_skipped_total{table}` of this process.
fn oversize_skipped(table: &str) -> u64 {
    etcdsync_core::telemetry::get()
        .oversize_skipped
        .with_label_values(&[table])
        .get()
}

/// Issue #14 item 4: unchanged TOAST values are filled one key at a time into the etcd
/// transaction being built, which stays within `max_request_bytes` — a source transaction of
/// many such updates is applied in parts as large as one request, each value filled right (no
/// cache of the whole transaction's values: the filled values live in the part being built).
#[tokio::test]
async fn many_unchanged_toast_updates_fill_into_parts_within_the_request_limit() {
    const ROWS: i64 = 300;
    const LIMIT: usize = 65_536;
    let url = etcd_url();
    let p = Prefixes::new("toastmany", &url);
    let mut sink = start(&p.yaml(&format!("max_request_bytes: {LIMIT}\n"))).await;
    let mut etcd = client(&url).await;
    let docs = doc_table();
    let body = |id: i64| format!("{id:04}{}", "b".repeat(4096));
    let row = |id: i64, n: &str, body: Value| {
        vec![Value::Int(id), Value::Null, Value::Decimal(n.into()), body]
    };
    for chunk in 0..ROWS / 10 {
        let inserts = (chunk * 10 + 1..=chunk * 10 + 10)
            .map(|id| Change::insert(docs.clone(), row(id, "1", Value::Text(body(id)))))
            .collect();
        sink.txn(inserts, chunk as u64 + 1).await;
    }
    sink.wait_ack(&pos(ROWS as u64 / 10)).await;
    let before = revision_now(&mut etcd).await;
    let updates = (1..=ROWS)
        .map(|id| Change::update(docs.clone(), None, row(id, "2", Value::Unchanged)))
        .collect();
    sink.txn(updates, 1000).await;
    sink.wait_ack(&pos(1000)).await;

    let response = etcd
        .get(
            format!("{}/", p.data),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .expect("get");
    assert_eq!(response.kvs().len() as i64, ROWS);
    for kv in response.kvs() {
        let value: serde_json::Value = serde_json::from_slice(kv.value()).expect("JSON value");
        let id = value["id"].as_i64().expect("id");
        assert_eq!(value["n"], "2", "{id}");
        assert_eq!(value["body"].as_str(), Some(body(id).as_str()), "{id}");
    }
    let parts: BTreeSet<i64> = response
        .kvs()
        .iter()
        .map(|kv| kv.mod_revision())
        .filter(|&revision| revision > before)
        .collect();
    let filled_bytes = ROWS as usize * 4096;
    assert!(
        parts.len() >= filled_bytes / LIMIT,
        "{} parts for {filled_bytes} filled bytes at {LIMIT} bytes per request",
        parts.len()
    );
    sink.close().await.expect("clean stop");
}
