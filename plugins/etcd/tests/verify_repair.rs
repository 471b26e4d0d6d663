//! The etcd inspector's reads for `verify` (keys and values by table, owners, counts, template
//! keys and raw values) and its `--repair` writes, round trip against a real etcd
//! (`ETCDSYNC_TEST_ETCD`) holding what a sink wrote.
#![cfg(feature = "integration-tests")]

mod common;

use common::*;
use etcdsync_core::change::{Column, Route};
use etcdsync_core::{Change, Message, Op, TableId, TableSchema, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Tests that run a sink take this: the phase and progress in telemetry are process-wide.
static SINKS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---- reads and repair --------------------------------------------------------------------

/// `public.settings (id int primary key, service text, name text, value text)` with keys from a
/// template `{service}/{name}` and raw values, as `key_template` makes them.
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

fn insert_setting(id: i64, service: &str, name: &str, value: &str) -> Change {
    Change {
        table: settings(),
        op: Op::Insert {
            row: vec![
                Value::Int(id),
                Value::Text(service.into()),
                Value::Text(name.into()),
                Value::Text(value.into()),
            ],
        },
        route: Route {
            key: Some(format!("{service}/{name}")),
            old_key: None,
            value: Some(value.as_bytes().to_vec()),
            tracked: true,
        },
        seq: None,
    }
}

fn text(value: Option<Vec<u8>>) -> Option<String> {
    value.map(|v| String::from_utf8_lossy(&v).into_owned())
}

#[tokio::test]
async fn reads_owners_counts_and_repair_round_trip() {
    let _serial = SINKS.lock().await;
    let url = etcd_url();
    let p = Prefixes::new("reads", &url);
    let mut etcd = client(&url).await;
    // Small transactions, so reads and repairs span several.
    let yaml = p.yaml("max_txn_ops: 8\n");
    let users = table("public", "users");
    let mut sink = start(&yaml).await;
    let mut changes: Vec<Change> = (1..=20)
        .map(|i| insert(&users, i, &format!("u{i}")))
        .collect();
    changes.push(insert_setting(1, "billing", "timeout", "30"));
    changes.push(insert_setting(2, "billing", "retries", "3"));
    changes.push(insert_setting(3, "auth", "ttl", "60"));
    for part in changes.chunks(5) {
        sink.send(Message::Changes(part.to_vec())).await;
    }
    sink.send(commit(1)).await;
    sink.wait_ack(&pos(1)).await;
    sink.close().await.expect("clean stop");

    let mut ins = inspector(&yaml).await;
    let user_key = |id: i64| p.key("public", "users", id);
    let route = |k: &str| format!("{}/{k}", p.data);
    let settings_id = TableId::new("public", "settings");
    let users_id = TableId::new("public", "users");

    // checkpoint and metadata
    assert_eq!(
        ins.checkpoint()
            .await
            .expect("checkpoint")
            .map(|c| c.position),
        Some(pos(1))
    );
    let meta = ins.metadata().await.expect("metadata");
    assert_eq!(meta["checkpoint"]["position"], pos(1).as_str());
    assert_eq!(meta["status"]["phase"], "streaming", "{meta:#?}");
    assert!(
        !meta.contains_key("leader") && !meta.contains_key("snapshot"),
        "{meta:#?}"
    );

    // keys of the layout
    assert_eq!(ins.row_key(&users_id, &[Value::Int(7)]), user_key(7));
    assert_eq!(ins.route_key("billing/timeout"), route("billing/timeout"));

    // get: more keys than one transaction holds, one absent
    let mut keys: Vec<String> = (1..=20).map(user_key).collect();
    keys.push(user_key(99));
    keys.push(route("billing/timeout"));
    let values = ins.get(&keys).await.expect("get");
    assert_eq!(values.len(), 22);
    assert_eq!(text(values[6].clone()), Some(json(7, "u7")));
    assert_eq!(values[20], None);
    assert_eq!(text(values[21].clone()), Some("30".into()));

    // scan: everything in key order, in pages
    let all = dump(&mut etcd, &format!("{}/", p.data)).await;
    assert_eq!(all.len(), 23);
    let scanned = ins.scan(None, 1000).await.expect("scan");
    let scanned_text: BTreeMap<String, String> = scanned
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    assert_eq!(scanned_text, all);
    assert!(scanned.windows(2).all(|w| w[0].0 < w[1].0));
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = ins.scan(after.as_deref(), 7).await.expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        after = page.last().map(|(k, _)| k.clone());
        paged.extend(page);
    }
    assert_eq!(paged, scanned);

    // owner: default layout, key index, and keys nothing explains
    assert_eq!(
        ins.owner(&user_key(5)).await.expect("owner"),
        Some((users_id.clone(), vec!["5".to_string()]))
    );
    assert_eq!(
        ins.owner(&route("billing/timeout")).await.expect("owner"),
        Some((settings_id.clone(), vec!["1".to_string()]))
    );
    assert_eq!(
        ins.owner(&route("auth/ttl")).await.expect("owner"),
        Some((settings_id.clone(), vec!["3".to_string()]))
    );
    assert_eq!(ins.owner(&route("lonely")).await.expect("owner"), None);
    assert_eq!(
        ins.owner("/elsewhere/public/users/1").await.expect("owner"),
        None
    );

    // count
    assert_eq!(ins.count(&users_id).await.expect("count"), 20);
    assert_eq!(ins.count(&settings_id).await.expect("count"), 3);
    assert_eq!(
        ins.count(&TableId::new("public", "nothing"))
            .await
            .expect("count"),
        0
    );

    // Drift: a key deleted, a value changed, an extra key planted, a transformed key changed.
    etcd.delete(user_key(3), None).await.expect("delete");
    etcd.put(user_key(4), "changed", None).await.expect("put");
    etcd.put(user_key(999), "extra", None).await.expect("put");
    etcd.put(route("billing/timeout"), "99", None)
        .await
        .expect("put");
    assert_eq!(
        ins.owner(&user_key(999)).await.expect("owner"),
        Some((users_id.clone(), vec!["999".to_string()]))
    );

    // Outside the data prefix: refused, nothing written.
    let error = ins
        .repair(vec![(format!("{}/x", p.meta), b"v".to_vec())], vec![])
        .await
        .expect_err("outside the data prefix");
    assert!(error.to_string().contains("sink.prefix"), "{error}");
    assert_eq!(get(&mut etcd, &format!("{}/x", p.meta)).await, None);

    // Repair in several transactions (max_txn_ops 8): every user key rewritten, the extra user
    // key and the row auth/ttl removed (with its owner and index entry), billing/timeout fixed.
    let mut puts: Vec<(String, Vec<u8>)> = (1..=20)
        .map(|i| (user_key(i), json(i, &format!("u{i}")).into_bytes()))
        .collect();
    puts.push((route("billing/timeout"), b"30".to_vec()));
    ins.repair(puts, vec![user_key(999), route("auth/ttl")])
        .await
        .expect("repair");

    let mut expected: BTreeMap<String, String> = (1..=20)
        .map(|i| (user_key(i), json(i, &format!("u{i}"))))
        .collect();
    expected.insert(route("billing/timeout"), "30".into());
    expected.insert(route("billing/retries"), "3".into());
    assert_eq!(dump(&mut etcd, &format!("{}/", p.data)).await, expected);
    let owners = dump(&mut etcd, &format!("{}/owner/", p.meta)).await;
    assert_eq!(
        owners.keys().cloned().collect::<Vec<_>>(),
        vec![
            format!("{}/owner/billing/retries", p.meta),
            format!("{}/owner/billing/timeout", p.meta)
        ]
    );
    let index = dump(&mut etcd, &format!("{}/index/", p.meta)).await;
    assert_eq!(
        index.values().cloned().collect::<Vec<_>>(),
        vec!["billing/timeout".to_string(), "billing/retries".to_string()]
    );
    assert_eq!(ins.count(&settings_id).await.expect("count"), 2);
    assert_eq!(ins.count(&users_id).await.expect("count"), 20);
    // The repaired index still explains the transformed key.
    assert_eq!(
        ins.owner(&route("billing/timeout")).await.expect("owner"),
        Some((settings_id.clone(), vec!["1".to_string()]))
    );

    // A transformed key whose owner entry is gone too cannot be put back consistently: the rest
    // of the repair is applied, and the error names the key and the fix.
    etcd.delete(route("billing/retries"), None)
        .await
        .expect("delete");
    etcd.delete(format!("{}/owner/billing/retries", p.meta), None)
        .await
        .expect("delete");
    etcd.put(user_key(1), "changed", None).await.expect("put");
    let error = ins
        .repair(
            vec![
                (route("billing/retries"), b"3".to_vec()),
                (user_key(1), json(1, "u1").into_bytes()),
            ],
            vec![],
        )
        .await
        .expect_err("an unexplained key");
    let message = error.to_string();
    assert!(
        message.contains(&route("billing/retries")) && message.contains("snapshot"),
        "{message}"
    );
    assert_eq!(get(&mut etcd, &route("billing/retries")).await, None);
    assert_eq!(get(&mut etcd, &user_key(1)).await, Some(json(1, "u1")));
}
