//! The `mysql` source against a real MariaDB (tools/testenv.sh), with an in-memory sink that
//! acknowledges every position: snapshot then stream over two databases with composite keys,
//! type parity snapshot vs binlog byte for byte, TRUNCATE, DROP TABLE, PK change, resume without
//! loss or duplicates, missing prerequisites reported with their fix, charsets converted as the
//! server converts them (or refused), and foreign keys with unlogged cascades refused unless
//! allowed.
#![cfg(feature = "integration-tests")]

use etcdsync_core::pipeline::CHANGES_PER_MESSAGE;
use etcdsync_core::{Message, Op, TableId};
use etcdsync_mysql as _;
use etcdsync_tests::mysql::{
    apply, apply_into, assert_parity, build, commits, connect, db_state, db_state_yaml, exec,
    inspector, snapshot_done, source_yaml, split_phases, unique, unique_server_id, url, SourceRun,
    TestDbs,
};
use mysql_async::prelude::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    bin BINARY(4), vb VARBINARY(10), bl BLOB, j JSON, g GEOMETRY, n INT NULL,
    t1 TIME(1), t2 TIME(2), t3 TIME(3), g2 GEOMETRY,
    ru VARCHAR(20) CHARACTER SET cp1251, np VARCHAR(20) CHARACTER SET latin1 COLLATE latin1_swedish_nopad_ci,
    u16 VARCHAR(20) CHARACTER SET utf16, u2 CHAR(4) CHARACTER SET ucs2, zh TEXT CHARACTER SET gbk,
    ce VARCHAR(20) CHARACTER SET cp1250 COLLATE cp1250_nopad_bin, sj VARCHAR(10) CHARACTER SET sjis,
    en ENUM('а','б') CHARACTER SET cp1251, cz TEXT COMPRESSED CHARACTER SET utf8mb4, cb BLOB COMPRESSED,
    cl VARCHAR(300) COMPRESSED CHARACTER SET latin1
)";

const TYPES_ROWS: &[&str] = &[
    "({id}, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295, -9223372036854775808, 18446744073709551615,
      12.3400, 123456789012345678901234567890, -0.50, 1.1, 0.1,
      b'1', b'1111111111111111111111111111111111111111111111111111111111111111', b'1000000001',
      'médium', 'a,c,i',
      2024, '2024-02-29', '-838:59:59', '12:34:56.789012', '2024-02-29 23:59:58', '2000-01-01 00:00:00.120', '1999-12-31 23:59:59.000001',
      '2024-02-29 23:59:58', '2038-01-19 03:14:07.999999',
      'ab', 'héllo \"q\" \\\\ /', 'multi\nline\ttab', 'café €', 'ü',
      x'0102', x'00ff', x'deadbeef', '{\"b\": [1, 2.50], \"a\": \"x\"}', ST_GeomFromText('POINT(1 2)'), NULL,
      '-00:00:01.5', '-838:59:58.99', '-00:00:00.001', ST_GeomFromText('POINT(3 4)'),
      'Привет', 'Grüße € ', 'emoji 😀', 'añb', '中文字符', 'Żółć', 'テスト',
      'б', REPEAT('compress me ', 50), REPEAT(x'00ff', 100), REPEAT('ü', 200))",
    "({id}, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
      0.0000, 0, 0.00, -3.4e38, 1e308,
      b'0', b'0', b'0',
      'small', '',
      1901, '1000-01-01', '00:00:00', '-00:00:01.5', '1000-01-01 00:00:00', '9999-12-31 23:59:59.999', '2024-01-01 00:00:00.5',
      '1970-01-01 00:00:01', NULL,
      '', '', '', '', '',
      x'', x'', x'', '[]', ST_GeomFromText('LINESTRING(0 0,1 1)'), 7,
      '-00:00:00.1', '12:00:00.01', '-01:02:03.456', NULL,
      '', 'a', '', '', 'x', '', '',
      'а', 'short', x'', '')",
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
    let phases = split_phases(&messages);
    let (snapshot, binlog) = &phases;
    assert_eq!(snapshot.len(), TYPES_ROWS.len());
    assert_eq!(binlog.len(), 3 * TYPES_ROWS.len(), "{binlog:#?}");
    assert_parity(&phases);
    let expected_first = concat!(
        r#"{"id":0,"ti":-128,"tiu":255,"si":-32768,"siu":65535,"mi":-8388608,"miu":16777215,"#,
        r#""i":-2147483648,"iu":4294967295,"bi":-9223372036854775808,"biu":18446744073709551615,"#,
        r#""d":"12.3400","d0":"123456789012345678901234567890","dneg":"-0.50","f":1.1,"db":0.1,"#,
        r#""b1":1,"b64":18446744073709551615,"b10":513,"e":"médium","s":["a","c","i"],"#,
        r#""y":2024,"dt":"2024-02-29","t0":"-838:59:59","t6":"12:34:56.789012","dt0":"2024-02-29T23:59:58","#,
        r#""dt3":"2000-01-01T00:00:00.12","dt6":"1999-12-31T23:59:59.000001","ts0":"2024-02-29T23:59:58Z","#,
        r#""ts6":"2038-01-19T03:14:07.999999Z","c":"ab","vc":"héllo \"q\" \\ /","tx":"multi\nline\ttab","#,
        r#""l1":"café €","l1c":"ü","bin":"AQIAAA==","vb":"AP8=","bl":"3q2+7w==","#,
        r#""j":{"b":[1,2.50],"a":"x"},"#
    );
    let first = snapshot.get(&1).expect("row 1");
    assert!(
        first.starts_with(expected_first),
        "\n got: {first}\nwant: {expected_first}…"
    );
    assert!(first.contains(r#","n":null,"t1":"#), "{first}");
    // After the second GEOMETRY: text in other charsets (MariaDB counts GEOMETRY among the
    // character columns of the charset metadata), negative TIME(1)/TIME(2) with fractions,
    // COMPRESSED columns.
    for needle in [
        r#""t1":"-00:00:01.5","t2":"-838:59:58.99","t3":"-00:00:00.001","g2":""#,
        r#""ru":"Привет","np":"Grüße € ","u16":"emoji 😀","u2":"añb","zh":"中文字符","ce":"Żółć","sj":"テスト","en":"б","#,
    ] {
        assert!(first.contains(needle), "{needle} not in {first}");
    }
    // REPEAT(x'00ff', 100) in base64: "AP8A/wD/" per 6 bytes, then "AP8=".
    let compressed = format!(
        r#""cz":"{}","cb":"{}AP8=","cl":"{}"}}"#,
        "compress me ".repeat(50),
        "AP8A/wD/".repeat(33),
        "ü".repeat(200)
    );
    assert!(first.ends_with(&compressed), "{first}");
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
        r#""t1":"-00:00:00.1","t2":"12:00:00.01","t3":"-01:02:03.456","g2":null"#,
        r#""ru":"","np":"a","u16":"","u2":"","zh":"x","ce":"","sj":"","en":"а","cz":"short","cb":"","cl":""}"#,
    ] {
        assert!(second.contains(needle), "{needle} not in {second}");
    }
}

/// MariaDB's JSON (LONGTEXT + `json_valid` CHECK, also on a latin1 TEXT), INET6 and UUID.
const DOCS_TABLE: &str = "CREATE TABLE `{db}`.docs (
    id INT PRIMARY KEY,
    j JSON,
    jl TEXT CHARACTER SET latin1 CHECK (json_valid(jl)),
    plain LONGTEXT,
    ip INET6,
    u UUID
)";

const DOCS_ROWS: &[&str] = &[
    r#"({id}, '{ "b" : [1, 2.50, -0.5e+3],\n\t"a" : {"nested": {"deeper": [true, false, null]}}, "ü": "ß \\" \\\\ \\n \\u00e9 日本" }',
       '{"k" :  "vé"}', '{"not": "a JSON column"}', '2001:db8::1:0:0:1', '123e4567-e89b-12d3-a456-426614174000')"#,
    r#"({id}, '"top-level string"', '[ ]', 'x', '::ffff:1.2.3.4', '01234567-89ab-7def-8123-456789abcdef')"#,
    r#"({id}, '123.450', 'null', '', '::1.2.3.4', 'ffffffff-ffff-ffff-ffff-ffffffffffff')"#,
    r#"({id}, NULL, NULL, NULL, 'fe80::1:0:0:0', '00000000-0000-0000-0000-000000000000')"#,
    r#"({id}, '[1, {"a": [ ]}, "é", {}]', '{"x":{"y":{"z":1}}}', '[1]', '::', '123e4567-e89b-12d3-e456-426614174000')"#,
    r#"({id}, '{}', '"ü"', NULL, '::1', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')"#,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_json_inet6_and_uuid_are_identical_between_snapshot_and_binlog() {
    let dbs = TestDbs::create("my_docs", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "{};
             CREATE TABLE `{name}`.late (id INT PRIMARY KEY, doc LONGTEXT);
             INSERT INTO `{name}`.late VALUES (1, '{{\"a\":  1}}')",
            DOCS_TABLE.replace("{db}", &name)
        ),
    )
    .await;
    let insert = |base: usize| {
        format!(
            "INSERT INTO `{name}`.docs VALUES {}",
            DOCS_ROWS
                .iter()
                .enumerate()
                .map(|(i, row)| row.replace("{id}", &(base + i).to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    db.query_drop(insert(1)).await.expect("snapshot rows");
    let include = vec![format!("{name}.docs")];
    let run = SourceRun::start(&source_yaml(&include, ""), &unique("docs"), None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    db.query_drop(insert(101)).await.expect("binlog rows");
    exec(
        &mut db,
        &format!(
            "UPDATE `{name}`.docs SET id = id + 100 WHERE id > 100;
             DELETE FROM `{name}`.docs WHERE id > 200"
        ),
    )
    .await;
    run.wait_for("binlog rows", WAIT, |m| commits(m) >= 3).await;
    let (messages, _) = run.stop().await;
    let phases = split_phases(&messages);
    assert_eq!(phases.0.len(), DOCS_ROWS.len());
    assert_eq!(phases.1.len(), 3 * DOCS_ROWS.len(), "{:#?}", phases.1);
    assert_parity(&phases);
    let row = |id: i64| phases.0.get(&id).map(String::as_str).unwrap_or_default();
    assert_eq!(
        row(1),
        concat!(
            r#"{"id":0,"j":{"b":[1,2.50,-0.5e+3],"a":{"nested":{"deeper":[true,false,null]}},"ü":"ß \" \\ \n \u00e9 日本"},"#,
            r#""jl":{"k":"vé"},"plain":"{\"not\": \"a JSON column\"}","ip":"2001:db8::1:0:0:1","#,
            r#""u":"123e4567-e89b-12d3-a456-426614174000"}"#
        )
    );
    assert_eq!(
        row(2),
        r#"{"id":0,"j":"top-level string","jl":[],"plain":"x","ip":"::ffff:1.2.3.4","u":"01234567-89ab-7def-8123-456789abcdef"}"#
    );
    assert_eq!(
        row(3),
        r#"{"id":0,"j":123.450,"jl":null,"plain":"","ip":"::1.2.3.4","u":"ffffffff-ffff-ffff-ffff-ffffffffffff"}"#
    );
    assert_eq!(
        row(4),
        r#"{"id":0,"j":null,"jl":null,"plain":null,"ip":"fe80::1:0:0:0","u":"00000000-0000-0000-0000-000000000000"}"#
    );
    assert!(
        row(5).contains(r#""j":[1,{"a":[]},"é",{}],"jl":{"x":{"y":{"z":1}}}"#),
        "{}",
        row(5)
    );
    assert!(row(6).contains(r#""ip":"::1","#), "{}", row(6));

    // A column that becomes JSON while streaming: the DDL refreshes the cached hints.
    let include = vec![format!("{name}.late")];
    let run = SourceRun::start(&source_yaml(&include, ""), &unique("late"), None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    exec(
        &mut db,
        &format!(
            "ALTER TABLE `{name}`.late MODIFY doc JSON;
             INSERT INTO `{name}`.late VALUES (2, '{{\"b\" : [2]}}');
             UPDATE `{name}`.late SET doc = '{{\"a\": 1}}' WHERE id = 1"
        ),
    )
    .await;
    let fresh = db_state(&include, PREFIX).await;
    run.wait_for("changes after the ALTER", WAIT, |m| {
        apply(m, PREFIX) == fresh
    })
    .await;
    let (messages, _) = run.stop().await;
    let streamed = apply(&messages, PREFIX);
    assert_eq!(
        streamed
            .get(&format!("{PREFIX}/{name}/late/2"))
            .map(String::as_str),
        Some(r#"{"id":2,"doc":{"b":[2]}}"#)
    );
    assert_eq!(streamed, db_state(&include, PREFIX).await);
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

/// The `(op, key value)` of every change in `messages`, in order.
fn changed(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Changes(c) => Some(c.iter().map(|c| {
                let row = match &c.op {
                    Op::Insert { row } | Op::Update { row, .. } => row.clone(),
                    Op::Delete { old } => old.clone(),
                    Op::Truncate => Vec::new(),
                };
                format!("{} {:?}", c.op_name(), row.first())
            })),
            _ => None,
        })
        .flatten()
        .collect()
}

fn commit_positions(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Commit(c) => Some(c.position.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_by_mariadb_gtid_and_by_file_offset() {
    let dbs = TestDbs::create("my_gtid", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE `{name}`.kv (k INT PRIMARY KEY, v INT);
             INSERT INTO `{name}`.kv VALUES (1, 1)"
        ),
    )
    .await;
    let yaml = source_yaml(&includes(&dbs), "");
    let pipeline = unique("gtid");
    let run = SourceRun::start(&yaml, &pipeline, None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    let snapshot_position = run.snapshot().iter().find_map(|m| match m {
        Message::SnapshotFinished { position } => Some(position.to_string()),
        _ => None,
    });
    let snapshot_position = snapshot_position.expect("snapshot position");
    assert!(
        snapshot_position.contains(" gtid=0-1-"),
        "the snapshot position carries the GTID state: {snapshot_position}"
    );
    for i in 2..=3 {
        db.query_drop(format!("INSERT INTO `{name}`.kv VALUES ({i}, {i})"))
            .await
            .expect("insert");
    }
    run.wait_for("two commits", WAIT, |m| commits(m) >= 2).await;
    let (_, acked) = run.stop().await;
    let acked = acked.expect("acked").to_string();
    let (_, gtid) = acked.split_once(" gtid=").expect("gtid in the checkpoint");

    // A checkpoint whose file name this server never had: only the GTID can place it.
    exec(
        &mut db,
        &format!(
            "INSERT INTO `{name}`.kv VALUES (4, 4);
             UPDATE `{name}`.kv SET v = 10 WHERE k = 1"
        ),
    )
    .await;
    let foreign = etcdsync_core::Position::new(format!("elsewhere-bin.000042:4 gtid={gtid}"));
    let run = SourceRun::start(&yaml, &pipeline, Some(foreign)).await;
    run.wait_for("the two changes", WAIT, |m| commits(m) >= 2)
        .await;
    let (messages, acked) = run.stop().await;
    assert_eq!(
        changed(&messages),
        vec!["insert Some(Int(4))", "update Some(Int(1))"],
        "exactly the transactions after the GTID"
    );
    let positions = commit_positions(&messages);
    assert!(
        positions
            .iter()
            .all(|p| p.starts_with("mysql-bin.") && p.contains(" gtid=0-1-")),
        "positions name the server's own file once streaming: {positions:?}"
    );

    // The same checkpoint without its GTID part resumes by file and offset.
    let acked = acked.expect("acked").to_string();
    let (file_offset, _) = acked.split_once(" gtid=").expect("gtid");
    db.query_drop(format!("DELETE FROM `{name}`.kv WHERE k = 2"))
        .await
        .expect("delete");
    let run = SourceRun::start(
        &yaml,
        &pipeline,
        Some(etcdsync_core::Position::new(file_offset)),
    )
    .await;
    run.wait_for("the delete", WAIT, |m| commits(m) >= 1).await;
    let (messages, _) = run.stop().await;
    assert_eq!(changed(&messages), vec!["delete Some(Int(2))"]);
    assert!(
        commit_positions(&messages)
            .iter()
            .all(|p| p.contains(" gtid=0-1-")),
        "a file/offset start gains the GTID state: {:?}",
        commit_positions(&messages)
    );

    // A GTID the server's binlogs do not hold is the purged-binlog error, found when
    // streaming starts; `snapshot: when_needed` re-snapshots instead.
    let unknown = || etcdsync_core::Position::new("mysql-bin.000001:4 gtid=0-1-999999999");
    let run = SourceRun::start(&yaml, &pipeline, Some(unknown())).await;
    let err = run.join(WAIT).await.expect_err("unknown GTID");
    assert_eq!(err.kind(), etcdsync_core::ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("snapshot: when_needed"), "{err}");
    let yaml = source_yaml(&includes(&dbs), "snapshot: when_needed\n");
    let run = SourceRun::start(&yaml, &pipeline, Some(unknown())).await;
    run.wait_for("re-snapshot", WAIT, snapshot_done).await;
    let (messages, _) = run.stop().await;
    assert_eq!(
        apply(&messages, PREFIX),
        db_state(&includes(&dbs), PREFIX).await
    );
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
    // Each ALTER copies the table again, so etcd ends equal to the table, untouched rows too.
    let fresh = db_state(&includes(&dbs), PREFIX).await;
    run.wait_for("changes after each ALTER", WAIT, |m| {
        apply(m, PREFIX) == fresh
    })
    .await;
    let (messages, _) = run.stop().await;
    let state = apply(&messages, PREFIX);
    let key = |id: u32| format!("{PREFIX}/{name}/t/{id}");
    assert_eq!(
        state.get(&key(2)).map(String::as_str),
        Some(r#"{"id":2,"b":"two","c":"2.5"}"#)
    );
    assert_eq!(
        state.get(&key(3)).map(String::as_str),
        Some(r#"{"id":3,"b":"drei ä","c":"3.0"}"#)
    );
    assert_eq!(state, fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_exclude_globs_and_excluded_columns() {
    let dbs = TestDbs::create("my_sel", 2).await;
    let (a, b) = (dbs.name(0).to_string(), dbs.name(1).to_string());
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE `{a}`.users (id INT PRIMARY KEY, name TEXT, password_hash TEXT, email TEXT);
             INSERT INTO `{a}`.users VALUES (1, 'ann', 'secret-1', 'a@x'), (2, 'bob', 'secret-2', 'b@x');
             CREATE TABLE `{a}`.orders (id INT PRIMARY KEY, total INT);
             INSERT INTO `{a}`.orders VALUES (1, 10);
             CREATE TABLE `{a}`.skip_me (id INT PRIMARY KEY);
             INSERT INTO `{a}`.skip_me VALUES (1);
             CREATE TABLE `{b}`.keep_this (id INT PRIMARY KEY, v INT);
             INSERT INTO `{b}`.keep_this VALUES (1, 1);
             CREATE TABLE `{b}`.other (id INT PRIMARY KEY);
             INSERT INTO `{b}`.other VALUES (1)"
        ),
    )
    .await;
    let yaml = format!(
        "type: mysql\nurl: \"{}\"\ntables:\n  include: [\"{a}.*\", \"{b}.keep*\"]\n  exclude: [\"{a}.skip*\"]\n  \
         exclude_columns: {{ \"{a}.user?\": [password_hash] }}\n",
        url()
    );
    let run = SourceRun::start(&yaml, &unique("sel"), None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    exec(
        &mut db,
        &format!(
            "INSERT INTO `{a}`.users VALUES (3, 'cy', 'secret-3', 'c@x');
             UPDATE `{a}`.users SET password_hash = 'secret-new' WHERE id = 1;
             UPDATE `{a}`.users SET email = 'bob@x' WHERE id = 2;
             INSERT INTO `{a}`.skip_me VALUES (2);
             INSERT INTO `{b}`.other VALUES (2);
             INSERT INTO `{b}`.keep_this VALUES (2, 2);
             INSERT INTO `{a}`.orders VALUES (2, 20)"
        ),
    )
    .await;
    run.wait_for("the selected changes", WAIT, |m| commits(m) >= 5)
        .await;
    let (messages, _) = run.stop().await;
    let mut started = messages
        .iter()
        .find_map(|m| match m {
            Message::SnapshotStarted { tables } => Some(tables.clone()),
            _ => None,
        })
        .expect("SnapshotStarted");
    started.sort();
    let mut want = vec![
        TableId::new(&a, "orders"),
        TableId::new(&a, "users"),
        TableId::new(&b, "keep_this"),
    ];
    want.sort();
    assert_eq!(started, want);
    for m in &messages {
        if let Message::Changes(changes) = m {
            for c in changes {
                assert!(
                    started.contains(&c.table.id),
                    "a change of an unselected table: {}",
                    c.table.id
                );
                assert!(
                    c.table.column_index("password_hash").is_none(),
                    "excluded column sent"
                );
            }
        }
    }
    let state = apply(&messages, PREFIX);
    assert!(state.values().all(|v| !v.contains("secret")), "{state:#?}");
    assert_eq!(
        state
            .get(&format!("{PREFIX}/{a}/users/2"))
            .map(String::as_str),
        Some(r#"{"id":2,"name":"bob","email":"bob@x"}"#)
    );
    assert_eq!(state, db_state_yaml(&yaml, PREFIX).await);

    // Excluding a key column is a configuration error, named with its fix.
    let bad = yaml.replace("[password_hash]", "[id]");
    let run = SourceRun::start(&bad, &unique("sel"), None).await;
    let err = run.join(WAIT).await.expect_err("key column excluded");
    assert_eq!(err.kind(), etcdsync_core::ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("primary-key column `id`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_snapshot_workers_see_one_consistent_point_under_writes() {
    let dbs = TestDbs::create("my_par", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    for t in 0..6 {
        exec(
            &mut db,
            &format!(
                "CREATE TABLE `{name}`.t{t} (id INT PRIMARY KEY, v INT, pad VARCHAR(100));
                 INSERT INTO `{name}`.t{t} SELECT seq, 0, REPEAT('p', 100) FROM `{name}`.seq_1_to_4000"
            ),
        )
        .await;
    }
    // Transactions touching two tables at once keep committing during the snapshot.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let mut db = connect().await;
            let mut i: u32 = 0;
            while !stop.load(Ordering::Relaxed) {
                exec(
                    &mut db,
                    &format!(
                        "BEGIN;
                         UPDATE `{name}`.t{} SET v = v + 1 WHERE id = {};
                         INSERT INTO `{name}`.t{} VALUES ({}, {i}, 'w');
                         COMMIT",
                        i % 6,
                        (i * 7) % 4000 + 1,
                        (i + 1) % 6,
                        100_000 + i
                    ),
                )
                .await;
                i += 1;
            }
            i
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let yaml = source_yaml(&includes(&dbs), "snapshot_workers: 4\n");
    let run = SourceRun::start(&yaml, &unique("par"), None).await;
    run.wait_for("snapshot", Duration::from_secs(120), snapshot_done)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.expect("writer");
    assert!(written > 0, "the writer ran");
    db.query_drop(format!("INSERT INTO `{name}`.t0 VALUES (999999, 0, 'end')"))
        .await
        .expect("marker");
    run.wait_for("the marker row", WAIT, |m| {
        m.iter().any(|m| {
            match m {
            Message::Changes(c) => c.iter().any(|c| {
                matches!(&c.op, Op::Insert { row } if row[0] == etcdsync_core::Value::Int(999_999))
            }),
            _ => false,
        }
        })
    })
    .await;
    let (messages, _) = run.stop().await;
    let state = apply(&messages, PREFIX);
    assert_eq!(state.len(), 6 * 4000 + written as usize + 1);
    assert_eq!(state, db_state(&includes(&dbs), PREFIX).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_id_in_use_is_a_clear_error() {
    let dbs = TestDbs::create("my_sid", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    exec(
        &mut db,
        &format!("CREATE TABLE `{name}`.t (id INT PRIMARY KEY)"),
    )
    .await;
    let id = unique_server_id();
    let yaml = source_yaml(&includes(&dbs), &format!("server_id: {id}\n"));
    let run = SourceRun::start(&yaml, &unique("sid"), None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    db.query_drop(format!("INSERT INTO `{name}`.t VALUES (1)"))
        .await
        .expect("insert");
    run.wait_for("streaming", WAIT, |m| commits(m) >= 1).await;
    let err = match build(&yaml, &unique("sid2"), None).await {
        Ok(_) => panic!("a second replica with server_id {id} must be refused"),
        Err(e) => e,
    };
    let message = err.to_string();
    assert_eq!(err.kind(), etcdsync_core::ErrorKind::Config, "{message}");
    assert!(
        message.contains(&format!("source.server_id ({id}) is already in use"))
            && message.contains("set source.server_id to a number no other server or replica uses"),
        "{message}"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_row_transaction_streams_in_bounded_chunks() {
    const ROWS: usize = 100_000;
    let dbs = TestDbs::create("my_big", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    exec(
        &mut db,
        &format!("CREATE TABLE `{name}`.big (id INT PRIMARY KEY, v VARCHAR(100))"),
    )
    .await;
    let run = SourceRun::start(&source_yaml(&includes(&dbs), ""), &unique("big"), None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    db.query_drop(format!(
        "INSERT INTO `{name}`.big SELECT seq, CONCAT('row ', seq) FROM `{name}`.seq_1_to_{ROWS}"
    ))
    .await
    .expect("one big transaction");
    run.wait_for("the big transaction", Duration::from_secs(180), |m| {
        commits(m) >= 1
    })
    .await;
    let (messages, _) = run.stop().await;
    let after: Vec<&Message> = messages
        .iter()
        .skip_while(|m| !matches!(m, Message::SnapshotFinished { .. }))
        .filter(|m| matches!(m, Message::Changes(_) | Message::Commit(_)))
        .collect();
    let sizes: Vec<usize> = after
        .iter()
        .take_while(|m| !matches!(m, Message::Commit(_)))
        .filter_map(|m| match m {
            Message::Changes(c) => Some(c.len()),
            _ => None,
        })
        .collect();
    assert_eq!(
        sizes.iter().sum::<usize>(),
        ROWS,
        "every row, before the commit"
    );
    assert!(
        sizes.iter().all(|&n| n <= CHANGES_PER_MESSAGE),
        "no message holds more than CHANGES_PER_MESSAGE changes: max {:?}",
        sizes.iter().max()
    );
    assert!(
        sizes.len() >= ROWS / CHANGES_PER_MESSAGE,
        "the transaction arrives in {} messages",
        sizes.len()
    );
    assert_eq!(
        after
            .iter()
            .filter(|m| matches!(m, Message::Commit(_)))
            .count(),
        1,
        "one source transaction, one commit"
    );
}

/// Byte sequences to store in a column of `charset` (`maxlen` bytes per character at most), as
/// `(length, first, last)` runs of big-endian numbers.
fn charset_probes(charset: &str, maxlen: u32) -> Vec<(u32, u64, u64)> {
    match (charset, maxlen) {
        (_, 1) => vec![(1, 0, 0xff)],
        ("ucs2", _) => vec![(2, 0, 0xffff)],
        ("utf16", _) => vec![
            (2, 0, 0xffff),
            (4, 0xd800_dc00, 0xd800_dfff),
            (4, 0xdbff_dc00, 0xdbff_dfff),
            (4, 0xd83d_de00, 0xd83d_de4f),
        ],
        ("utf16le", _) => vec![
            (2, 0, 0xffff),
            (4, 0x00d8_00dc, 0x00d8_ffdf),
            (4, 0x3dd8_00de, 0x3dd8_4fde),
        ],
        ("utf32", _) => vec![
            (4, 0, 0x2ff),
            (4, 0xd7f0, 0xe010),
            (4, 0xfff0, 0x1_0010),
            (4, 0x1_f600, 0x1_f650),
            (4, 0x10_fff0, 0x11_0010),
        ],
        ("ujis" | "eucjpms", _) => {
            vec![(1, 0, 0xff), (2, 0x8e00, 0xffff), (3, 0x8f_a1a1, 0x8f_fefe)]
        }
        _ => vec![(1, 0, 0xff), (2, 0x8000, 0xffff)],
    }
}

/// Every charset MariaDB ships, every byte sequence of its character ranges stored in a column
/// and read back through the snapshot's utf8mb4 session: etcdsync's decoder of the raw bytes
/// (what the binlog carries) gives exactly the server's text, or the charset is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_charset_decodes_like_the_server_or_is_refused() {
    use etcdsync_mysql::charset::Charset;
    let dbs = TestDbs::create("my_cs", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    let charsets: Vec<(String, u32)> = db
        .query(
            "SELECT CHARACTER_SET_NAME, MAXLEN FROM information_schema.CHARACTER_SETS ORDER BY 1",
        )
        .await
        .expect("charsets");
    assert!(charsets.len() >= 40, "{charsets:?}");
    let refused = [
        "armscii8", "big5", "cp850", "cp852", "dec8", "eucjpms", "geostd8", "hp8", "keybcs2",
        "macce", "swe7", "ujis",
    ];
    let mut report = Vec::new();
    for (charset, maxlen) in &charsets {
        let decoder = Charset::from_name(charset);
        if charset == "binary" {
            continue;
        }
        if refused.contains(&charset.as_str()) {
            assert!(
                !decoder.is_supported(),
                "{charset} is expected to be refused"
            );
            continue;
        }
        assert!(decoder.is_supported(), "{charset} is not supported");
        let table = format!("`{name}`.`cs_{charset}`");
        exec(
            &mut db,
            &format!(
                "CREATE TABLE {table} (l INT, v BIGINT UNSIGNED, c VARCHAR(4) CHARACTER SET {charset}, PRIMARY KEY (l, v))"
            ),
        )
        .await;
        for (len, first, last) in charset_probes(charset, *maxlen) {
            db.query_drop(format!(
                "INSERT IGNORE INTO {table} SELECT {len}, seq, UNHEX(LPAD(HEX(seq), {}, '0')) FROM `{name}`.seq_{first}_to_{last}",
                2 * len
            ))
            .await
            .expect("probe rows");
        }
        let rows: Vec<(u32, u64, Vec<u8>, Vec<u8>)> = db
            .query(format!("SELECT l, v, CAST(c AS BINARY), c FROM {table}"))
            .await
            .expect("read back");
        assert!(rows.len() >= 256, "{charset}: {} rows", rows.len());
        let mut wrong = Vec::new();
        for (len, v, raw, server) in &rows {
            let ours = decoder.decode(raw);
            let theirs = String::from_utf8_lossy(server);
            if ours != theirs {
                wrong.push(format!(
                    "{len}:{v:x} raw {raw:02x?} server {theirs:?} ours {ours:?}"
                ));
            }
        }
        if !wrong.is_empty() {
            report.push(format!(
                "{charset}: {} of {} differ, e.g.\n    {}",
                wrong.len(),
                rows.len(),
                wrong
                    .iter()
                    .take(40)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n    ")
            ));
        }
    }
    assert!(report.is_empty(), "\n{}", report.join("\n"));
}

/// A selected child table of an ON DELETE CASCADE foreign key: `run` and `check` refuse, naming
/// the constraint; `allow_unlogged_cascades: true` runs, and the documented loss happens (the
/// cascaded delete is not in the binlog).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascading_foreign_keys_are_refused_unless_explicitly_allowed() {
    let dbs = TestDbs::create("my_fk", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE `{name}`.parent (id INT PRIMARY KEY);
             CREATE TABLE `{name}`.child (id INT PRIMARY KEY, parent_id INT,
               CONSTRAINT fk_child_parent FOREIGN KEY (parent_id) REFERENCES `{name}`.parent (id)
               ON DELETE CASCADE ON UPDATE RESTRICT);
             INSERT INTO `{name}`.parent VALUES (1), (2);
             INSERT INTO `{name}`.child VALUES (10, 1), (20, 2)"
        ),
    )
    .await;
    let yaml = source_yaml(&includes(&dbs), "");
    let err = match build(&yaml, &unique("fk"), None).await {
        Ok(_) => panic!("a cascading foreign key on a selected table must be refused"),
        Err(e) => e,
    };
    let message = err.to_string();
    assert_eq!(err.kind(), etcdsync_core::ErrorKind::Config, "{message}");
    for needle in [
        format!("foreign key {name}.child.fk_child_parent"),
        format!("schema `{name}`, table `child`"),
        "ON DELETE CASCADE".to_string(),
        "DROP FOREIGN KEY `fk_child_parent`".to_string(),
        "allow_unlogged_cascades: true".to_string(),
    ] {
        assert!(message.contains(&needle), "{needle} not in {message}");
    }
    assert!(
        message.contains("has ON DELETE CASCADE: "),
        "only the unlogged rule is named (ON UPDATE RESTRICT is logged): {message}"
    );

    let results = inspector(&yaml, &unique("fk")).await.check().await;
    let line = results
        .iter()
        .find(|r| r.name == format!("foreign key {name}.child.fk_child_parent"))
        .unwrap_or_else(|| panic!("no foreign key line in {results:#?}"));
    assert!(!line.ok, "{line:?}");
    assert!(line.detail.contains("ON DELETE CASCADE"), "{line:?}");

    // The opt-in runs, and check says what is lost.
    let allowed = source_yaml(&includes(&dbs), "allow_unlogged_cascades: true\n");
    let results = inspector(&allowed, &unique("fk")).await.check().await;
    let line = results
        .iter()
        .find(|r| r.name == format!("foreign key {name}.child.fk_child_parent"))
        .unwrap_or_else(|| panic!("no foreign key line in {results:#?}"));
    assert!(line.ok && line.detail.contains("lossy"), "{line:?}");
    let run = SourceRun::start(&allowed, &unique("fk"), None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    exec(
        &mut db,
        &format!("DELETE FROM `{name}`.parent WHERE id = 1"),
    )
    .await;
    run.wait_for("the parent delete", WAIT, |m| commits(m) >= 1)
        .await;
    let (messages, _) = run.stop().await;
    let state = apply(&messages, PREFIX);
    assert!(!state.contains_key(&format!("{PREFIX}/{name}/parent/1")));
    assert!(
        state.contains_key(&format!("{PREFIX}/{name}/child/10")),
        "the cascaded delete is not in the binlog (the documented loss): {state:#?}"
    );
    assert_ne!(state, db_state_yaml(&allowed, PREFIX).await);
}

/// A kept column in a charset etcdsync does not convert exactly stops `run` at start, naming
/// table, column, charset and the fix; leaving the column out runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconvertible_charset_is_refused_at_start_and_can_be_left_out() {
    let dbs = TestDbs::create("my_big5", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE `{name}`.tw (id INT PRIMARY KEY, title VARCHAR(20) CHARACTER SET big5, note TEXT);
             INSERT INTO `{name}`.tw VALUES (1, '中文', 'one')"
        ),
    )
    .await;
    let err = match build(&source_yaml(&includes(&dbs), ""), &unique("b5"), None).await {
        Ok(_) => panic!("a big5 column must be refused"),
        Err(e) => e,
    };
    let message = err.to_string();
    assert_eq!(err.kind(), etcdsync_core::ErrorKind::Config, "{message}");
    for needle in [
        format!("charset of {name}.tw.title"),
        "is big5 (big5_chinese_ci)".to_string(),
        format!("ALTER TABLE `{name}`.`tw` CONVERT TO CHARACTER SET utf8mb4"),
        "exclude_columns".to_string(),
    ] {
        assert!(message.contains(&needle), "{needle} not in {message}");
    }
    let yaml = format!(
        "type: mysql\nurl: \"{}\"\ntables:\n  include: [\"{name}.*\"]\n  exclude_columns: {{ \"{name}.tw\": [title] }}\n",
        url()
    );
    let run = SourceRun::start(&yaml, &unique("b5"), None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    exec(
        &mut db,
        &format!("INSERT INTO `{name}`.tw VALUES (2, '字', 'two')"),
    )
    .await;
    run.wait_for("the insert", WAIT, |m| commits(m) >= 1).await;
    let (messages, _) = run.stop().await;
    let state = apply(&messages, PREFIX);
    assert_eq!(
        state
            .get(&format!("{PREFIX}/{name}/tw/2"))
            .map(String::as_str),
        Some(r#"{"id":2,"note":"two"}"#)
    );
    assert_eq!(state, db_state_yaml(&yaml, PREFIX).await);
}
