//! The `mysql` source against a real MariaDB (tools/testenv.sh), with an in-memory sink that
//! acknowledges every position: snapshot then stream over two databases with composite keys,
//! type parity snapshot vs binlog byte for byte, TRUNCATE, DROP TABLE, PK change, resume without
//! loss or duplicates, and missing prerequisites reported with their fix.
#![cfg(feature = "integration-tests")]

use etcdsync_core::encode::json::encode_row;
use etcdsync_core::{Message, Op, TableId};
use etcdsync_mysql as _;
use etcdsync_tests::mysql::{
    apply, apply_into, build, commits, connect, db_state, exec, snapshot_done, source_yaml, unique,
    SourceRun, TestDbs,
};
use mysql_async::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const PREFIX: &str = "/t";

fn includes(dbs: &TestDbs) -> Vec<String> {
    dbs.names.iter().map(|n| format!("{n}.*")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_stream_two_databases_composite_keys_truncate_drop_and_key_change() {
    let dbs = TestDbs::create("my_stream", 2).await;
    let (a, b) = (dbs.name(0).to_string(), dbs.name(1).to_string());
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE `{a}`.items (id INT, sub VARCHAR(20), name TEXT, PRIMARY KEY (sub, id));
             INSERT INTO `{a}`.items VALUES (1, 'a/b%c', 'slash and percent'), (2, 'x', 'two'), (3, 'é y', 'unicode');
             CREATE TABLE `{b}`.other (k VARCHAR(10) PRIMARY KEY, v INT);
             INSERT INTO `{b}`.other VALUES ('k1', 1), ('k2', 2);
             CREATE TABLE `{b}`.gone (id INT PRIMARY KEY);
             INSERT INTO `{b}`.gone VALUES (1), (2);
             CREATE TABLE `{b}`.nokey (v INT)"
        ),
    )
    .await;
    let run = SourceRun::start(&source_yaml(&includes(&dbs), ""), &unique("p"), None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    let after_snapshot = run.snapshot();
    let started = after_snapshot.iter().find_map(|m| match m {
        Message::SnapshotStarted { tables } => Some(tables.clone()),
        _ => None,
    });
    let mut started = started.expect("SnapshotStarted");
    started.sort();
    let mut want = vec![
        TableId::new(&a, "items"),
        TableId::new(&b, "gone"),
        TableId::new(&b, "other"),
    ];
    want.sort();
    assert_eq!(started, want, "tables without a primary key are left out");
    let state = apply(&after_snapshot, PREFIX);
    assert_eq!(
        state
            .get(&format!("{PREFIX}/{a}/items/a%2Fb%25c/1"))
            .map(String::as_str),
        Some(r#"{"id":1,"sub":"a/b%c","name":"slash and percent"}"#),
        "composite key in index order (sub, id), escaped: {state:#?}"
    );
    assert!(
        state.contains_key(&format!("{PREFIX}/{a}/items/%C3%A9 y/3")),
        "{state:#?}"
    );

    exec(
        &mut db,
        &format!(
            "INSERT INTO `{a}`.items VALUES (4, 'new', 'four');
             UPDATE `{a}`.items SET name = 'TWO' WHERE id = 2;
             UPDATE `{a}`.items SET id = 30 WHERE id = 3;
             DELETE FROM `{a}`.items WHERE id = 1;
             BEGIN;
             INSERT INTO `{b}`.other VALUES ('k3', 3);
             UPDATE `{b}`.other SET v = 20 WHERE k = 'k2';
             COMMIT;
             TRUNCATE TABLE `{b}`.other;
             INSERT INTO `{b}`.other VALUES ('k9', 9);
             DROP TABLE `{b}`.gone;
             INSERT INTO `{b}`.nokey VALUES (1)"
        ),
    )
    .await;
    // 4 + 1 single-statement txns, TRUNCATE, 1 insert, DROP = 8 commits after the snapshot.
    run.wait_for("stream", WAIT, |m| commits(m) >= 8).await;
    let (messages, _) = run.stop().await;

    let pk_change = messages.iter().find_map(|m| match m {
        Message::Changes(changes) => changes.iter().find_map(|c| match &c.op {
            Op::Update {
                old: Some(old),
                row,
            } if c.table.id.table == "items" && old[0] != row[0] => {
                Some((old[0].clone(), row[0].clone()))
            }
            _ => None,
        }),
        _ => None,
    });
    assert_eq!(
        pk_change,
        Some((etcdsync_core::Value::Int(3), etcdsync_core::Value::Int(30))),
        "a key change carries the old key"
    );
    let streamed = apply(&messages, PREFIX);
    assert!(
        !streamed.keys().any(|k| k.contains("/gone/")),
        "DROP TABLE removed the table's keys (on_drop: delete)"
    );
    assert_eq!(streamed, db_state(&includes(&dbs), PREFIX).await);
    assert_eq!(
        streamed
            .get(&format!("{PREFIX}/{b}/other/k9"))
            .map(String::as_str),
        Some(r#"{"k":"k9","v":9}"#)
    );
    assert!(
        !streamed.contains_key(&format!("{PREFIX}/{b}/other/k1")),
        "TRUNCATE"
    );
    // Commit positions are file:offset and increase.
    let positions: Vec<String> = messages
        .iter()
        .filter_map(|m| match m {
            Message::Commit(c) => Some(c.position.to_string()),
            _ => None,
        })
        .collect();
    assert!(positions.iter().all(|p| p.contains(':')), "{positions:?}");
}

/// Every MariaDB type of issue 4 item 6, with edge values.
const TYPES_TABLE: &str = "CREATE TABLE `{db}`.types (
    id INT PRIMARY KEY,
    ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED, mi MEDIUMINT, miu MEDIUMINT UNSIGNED,
    i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
    d DECIMAL(12,4), d0 DECIMAL(30,0), dneg DECIMAL(5,2), f FLOAT, db DOUBLE,
    b1 BIT(1), b64 BIT(64), b10 BIT(10),
    e ENUM('small','médium','large'), s SET('a','b','c','d','e','f','g','h','i'),
    y YEAR, dt DATE, t0 TIME, t6 TIME(6), dt0 DATETIME, dt3 DATETIME(3), dt6 DATETIME(6),
    ts0 TIMESTAMP NULL, ts6 TIMESTAMP(6) NULL,
    c CHAR(5), vc VARCHAR(50), tx TEXT, l1 VARCHAR(20) CHARACTER SET latin1, l1c CHAR(4) CHARACTER SET latin1,
    bin BINARY(4), vb VARBINARY(10), bl BLOB, j JSON, g GEOMETRY, n INT NULL
)";

const TYPES_ROWS: &[&str] = &[
    "({id}, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295, -9223372036854775808, 18446744073709551615,
      12.3400, 123456789012345678901234567890, -0.50, 1.1, 0.1,
      b'1', b'1111111111111111111111111111111111111111111111111111111111111111', b'1000000001',
      'médium', 'a,c,i',
      2024, '2024-02-29', '-838:59:59', '12:34:56.789012', '2024-02-29 23:59:58', '2000-01-01 00:00:00.120', '1999-12-31 23:59:59.000001',
      '2024-02-29 23:59:58', '2038-01-19 03:14:07.999999',
      'ab', 'héllo \"q\" \\\\ /', 'multi\nline\ttab', 'café €', 'ü',
      x'0102', x'00ff', x'deadbeef', '{\"b\": [1, 2.50], \"a\": \"x\"}', ST_GeomFromText('POINT(1 2)'), NULL)",
    "({id}, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
      0.0000, 0, 0.00, -3.4e38, 1e308,
      b'0', b'0', b'0',
      'small', '',
      1901, '1000-01-01', '00:00:00', '-00:00:01.5', '1000-01-01 00:00:00', '9999-12-31 23:59:59.999', '2024-01-01 00:00:00.5',
      '1970-01-01 00:00:01', NULL,
      '', '', '', '', '',
      x'', x'', x'', '[]', ST_GeomFromText('LINESTRING(0 0,1 1)'), 7)",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_is_byte_identical_between_snapshot_and_binlog() {
    let dbs = TestDbs::create("my_types", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    exec(&mut db, &TYPES_TABLE.replace("{db}", &name)).await;
    let insert = |base: usize| {
        format!(
            "INSERT INTO `{name}`.types VALUES {}",
            TYPES_ROWS
                .iter()
                .enumerate()
                .map(|(i, row)| row.replace("{id}", &(base + i).to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    db.query_drop(insert(1)).await.expect("snapshot rows");
    let run = SourceRun::start(&source_yaml(&includes(&dbs), ""), &unique("types"), None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    db.query_drop(insert(101)).await.expect("binlog rows");
    // The same values again through UPDATE (after image) and DELETE (before image).
    exec(
        &mut db,
        &format!(
            "UPDATE `{name}`.types SET id = id + 100 WHERE id > 100;
             DELETE FROM `{name}`.types WHERE id > 200"
        ),
    )
    .await;
    run.wait_for("binlog rows", WAIT, |m| commits(m) >= 3).await;
    let (messages, _) = run.stop().await;

    // Encoded values by (source, id): snapshot inserts, binlog inserts, updates, deletes.
    let mut snapshot = BTreeMap::new();
    let mut binlog: Vec<(String, i64, String)> = Vec::new();
    let mut in_snapshot = true;
    for message in &messages {
        match message {
            Message::SnapshotFinished { .. } => in_snapshot = false,
            Message::Changes(changes) => {
                for change in changes {
                    let (what, row) = match &change.op {
                        Op::Insert { row } => ("insert", row),
                        Op::Update { row, .. } => ("update", row),
                        Op::Delete { old } => ("delete", old),
                        Op::Truncate => continue,
                    };
                    let etcdsync_core::Value::Int(id) = row[0] else {
                        panic!("id is an int: {:?}", row[0])
                    };
                    let mut without_id = row.clone();
                    without_id[0] = etcdsync_core::Value::Int(0);
                    let json =
                        String::from_utf8(encode_row(&change.table, &without_id).expect("encode"))
                            .expect("utf8");
                    if in_snapshot {
                        snapshot.insert(id, json);
                    } else {
                        binlog.push((what.to_string(), id, json));
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(snapshot.len(), TYPES_ROWS.len());
    assert_eq!(binlog.len(), 3 * TYPES_ROWS.len(), "{binlog:#?}");
    for (what, id, json) in &binlog {
        let original = id % 100;
        assert_eq!(
            Some(json),
            snapshot.get(&original),
            "{what} of row {id} differs from the snapshot of row {original}"
        );
    }
    let expected_first = concat!(
        r#"{"id":0,"ti":-128,"tiu":255,"si":-32768,"siu":65535,"mi":-8388608,"miu":16777215,"#,
        r#""i":-2147483648,"iu":4294967295,"bi":-9223372036854775808,"biu":18446744073709551615,"#,
        r#""d":"12.3400","d0":"123456789012345678901234567890","dneg":"-0.50","f":1.1,"db":0.1,"#,
        r#""b1":1,"b64":18446744073709551615,"b10":513,"e":"médium","s":["a","c","i"],"#,
        r#""y":2024,"dt":"2024-02-29","t0":"-838:59:59","t6":"12:34:56.789012","dt0":"2024-02-29T23:59:58","#,
        r#""dt3":"2000-01-01T00:00:00.12","dt6":"1999-12-31T23:59:59.000001","ts0":"2024-02-29T23:59:58Z","#,
        r#""ts6":"2038-01-19T03:14:07.999999Z","c":"ab","vc":"héllo \"q\" \\ /","tx":"multi\nline\ttab","#,
        r#""l1":"café €","l1c":"ü","bin":"AQIAAA==","vb":"AP8=","bl":"3q2+7w==","#,
        r#""j":"{\"b\": [1, 2.50], \"a\": \"x\"}","#
    );
    let first = snapshot.get(&1).expect("row 1");
    assert!(
        first.starts_with(expected_first),
        "\n got: {first}\nwant: {expected_first}…"
    );
    assert!(first.ends_with(r#","n":null}"#), "{first}");
    let second = snapshot.get(&2).expect("row 2");
    for needle in [
        r#""f":-3.4e38"#,
        r#""db":1e308"#,
        r#""s":[]"#,
        r#""y":1901"#,
        r#""t6":"-00:00:01.5""#,
        r#""ts0":"1970-01-01T00:00:01Z""#,
        r#""ts6":null"#,
        r#""bin":"AAAAAA==""#,
        r#""n":7"#,
    ] {
        assert!(second.contains(needle), "{needle} not in {second}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_restart_has_no_loss_and_no_duplicates() {
    let dbs = TestDbs::create("my_resume", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE `{name}`.kv (k INT PRIMARY KEY, v INT);
             INSERT INTO `{name}`.kv VALUES (1, 1), (2, 2)"
        ),
    )
    .await;
    let yaml = source_yaml(&includes(&dbs), "");
    let pipeline = unique("resume");
    let run = SourceRun::start(&yaml, &pipeline, None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    for i in 3..=5 {
        db.query_drop(format!("INSERT INTO `{name}`.kv VALUES ({i}, {i})"))
            .await
            .expect("insert");
    }
    run.wait_for("three commits", WAIT, |m| commits(m) >= 3)
        .await;
    let (first, acked) = run.stop().await;
    let acked = acked.expect("an acknowledged position");

    // While stopped: more changes, and noise in another database.
    exec(
        &mut db,
        &format!(
            "INSERT INTO `{name}`.kv VALUES (6, 6);
             UPDATE `{name}`.kv SET v = 100 WHERE k = 1;
             DELETE FROM `{name}`.kv WHERE k = 2"
        ),
    )
    .await;
    let run = SourceRun::start(&yaml, &pipeline, Some(acked.clone())).await;
    run.wait_for("the three changes made while stopped", WAIT, |m| {
        commits(m) >= 3
    })
    .await;
    db.query_drop(format!("INSERT INTO `{name}`.kv VALUES (7, 7)"))
        .await
        .expect("insert");
    run.wait_for("one more", WAIT, |m| commits(m) >= 4).await;
    let (second, _) = run.stop().await;
    assert!(
        !second
            .iter()
            .any(|m| matches!(m, Message::SnapshotStarted { .. })),
        "resuming does not snapshot again"
    );
    let inserted: Vec<String> = second
        .iter()
        .filter_map(|m| match m {
            Message::Changes(c) => Some(
                c.iter()
                    .map(|c| format!("{}:{:?}", c.op_name(), c.op))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(
        inserted.len(),
        4,
        "exactly the changes after the checkpoint: {inserted:#?}"
    );
    let mut state = BTreeMap::new();
    apply_into(&mut state, &first, PREFIX);
    apply_into(&mut state, &second, PREFIX);
    assert_eq!(state, db_state(&includes(&dbs), PREFIX).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_replication_privilege_is_named_with_its_grant() {
    let user = unique("nopriv");
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE USER '{user}'@'%' IDENTIFIED BY 'pw';
             GRANT SELECT ON *.* TO '{user}'@'%'"
        ),
    )
    .await;
    let url = etcdsync_tests::mysql::url();
    let host = url
        .split_once('@')
        .map(|(_, h)| h.to_string())
        .expect("user in url");
    let yaml = format!(
        "type: mysql\nurl: \"mysql://{user}:pw@{host}\"\ntables: {{ include: [\"x.*\"] }}\n"
    );
    let result = build(&yaml, &unique("p"), None).await;
    let _ = db.query_drop(format!("DROP USER '{user}'@'%'")).await;
    let err = match result {
        Ok(_) => panic!("a user without REPLICATION SLAVE must be refused"),
        Err(e) => e,
    };
    let message = err.to_string();
    assert_eq!(err.kind(), etcdsync_core::ErrorKind::Config, "{message}");
    assert!(
        message.contains("GRANT REPLICATION SLAVE ON *.*"),
        "{message}"
    );
    assert!(message.contains("GRANT BINLOG MONITOR ON *.*"), "{message}");
    assert!(
        !message.contains(":pw@"),
        "no password in messages: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_format_session_is_reported_with_the_setting_to_change() {
    let dbs = TestDbs::create("my_stmt", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    exec(
        &mut db,
        &format!("CREATE TABLE `{name}`.t (id INT PRIMARY KEY)"),
    )
    .await;
    let run = SourceRun::start(&source_yaml(&includes(&dbs), ""), &unique("stmt"), None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    exec(
        &mut db,
        &format!(
            "SET SESSION binlog_format = 'STATEMENT';
             INSERT INTO `{name}`.t VALUES (1)"
        ),
    )
    .await;
    let err = run
        .join(WAIT)
        .await
        .expect_err("a statement-logged change stops the source");
    let message = err.to_string();
    assert!(message.contains("binlog_format=ROW"), "{message}");
    assert!(message.contains(&format!("{name}.t")), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_checkpoint_is_a_clear_error() {
    let dbs = TestDbs::create("my_purged", 1).await;
    let yaml = source_yaml(&includes(&dbs), "");
    let gone = etcdsync_core::Position::new("mysql-bin.999999:4");
    let err = match build(&yaml, &unique("p"), Some(gone)).await {
        Ok(_) => panic!("a purged checkpoint must be refused"),
        Err(e) => e,
    };
    let message = err.to_string();
    assert!(message.contains("snapshot: when_needed"), "{message}");
    // With when_needed the source re-snapshots instead.
    let yaml = source_yaml(&includes(&dbs), "snapshot: when_needed\n");
    let gone = etcdsync_core::Position::new("mysql-bin.999999:4");
    let run = SourceRun::start(&yaml, &unique("p"), Some(gone)).await;
    run.wait_for("re-snapshot", WAIT, snapshot_done).await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_table_while_running_needs_no_schema_cache() {
    let dbs = TestDbs::create("my_alter", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE `{name}`.t (id INT PRIMARY KEY, a INT, b VARCHAR(10));
             INSERT INTO `{name}`.t VALUES (1, 1, 'one')"
        ),
    )
    .await;
    let run = SourceRun::start(&source_yaml(&includes(&dbs), ""), &unique("alter"), None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    exec(
        &mut db,
        &format!(
            "ALTER TABLE `{name}`.t ADD COLUMN c DECIMAL(5,1) DEFAULT 2.5;
             INSERT INTO `{name}`.t (id, a, b) VALUES (2, 2, 'two');
             ALTER TABLE `{name}`.t DROP COLUMN a;
             UPDATE `{name}`.t SET b = 'ONE' WHERE id = 1;
             ALTER TABLE `{name}`.t MODIFY COLUMN b VARCHAR(20) CHARACTER SET latin1;
             INSERT INTO `{name}`.t VALUES (3, 'drei ä', 3.0)"
        ),
    )
    .await;
    run.wait_for("changes after each ALTER", WAIT, |m| commits(m) >= 3)
        .await;
    let (messages, _) = run.stop().await;
    let state = apply(&messages, PREFIX);
    let key = |id: u32| format!("{PREFIX}/{name}/t/{id}");
    assert_eq!(
        state.get(&key(2)).map(String::as_str),
        Some(r#"{"id":2,"a":2,"b":"two","c":"2.5"}"#)
    );
    assert_eq!(
        state.get(&key(1)).map(String::as_str),
        Some(r#"{"id":1,"b":"ONE","c":"2.5"}"#)
    );
    assert_eq!(
        state.get(&key(3)).map(String::as_str),
        Some(r#"{"id":3,"b":"drei ä","c":"3.0"}"#)
    );
    // Rows changed after the last ALTER equal what a fresh snapshot reads.
    let fresh = db_state(&includes(&dbs), PREFIX).await;
    assert_eq!(state.get(&key(3)), fresh.get(&key(3)));
    assert_eq!(state.get(&key(1)), fresh.get(&key(1)));
}
