//! The `mysql` source's inspector (what `etcdsync check`, `status` and `verify` read) against a
//! real MariaDB (tools/testenv.sh): every check passing on the test server; failing checks with
//! their fixes (a user without REPLICATION SLAVE, a table without primary key, an unreadable
//! table, `binlog_row_metadata=MINIMAL` and short binlog retention on a private server); the
//! tables as the snapshot sees them; keyset scans over awkward composite keys, in order, without
//! gaps or duplicates, byte-identical to the snapshot; key look-ups; binlog lag within and
//! across files; snapshot progress in the telemetry.
#![cfg(feature = "integration-tests")]

use etcdsync_core::encode::json::encode_row;
use etcdsync_core::encode::key::row_key;
use etcdsync_core::inspect::{CheckResult, SourceInspector};
use etcdsync_core::{Position, Row, TableId, TableSchema, Value};
use etcdsync_mysql as _;
use etcdsync_tests::mysql::{
    apply, binlog_position, build, commits, connect, exec, inspector, snapshot_done, source_yaml,
    unique, unique_server_id, url, PrivateMariaDb, SourceRun, TestDbs,
};
use mysql_async::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const PREFIX: &str = "/i";

fn includes(dbs: &TestDbs) -> Vec<String> {
    dbs.names.iter().map(|n| format!("{n}.*")).collect()
}

fn find<'a>(results: &'a [CheckResult], name: &str) -> &'a CheckResult {
    results
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no check `{name}` in {results:#?}"))
}

fn failed(results: &[CheckResult]) -> Vec<&CheckResult> {
    results.iter().filter(|r| !r.ok).collect()
}

/// Every row of `table`, paging `page` rows at a time.
async fn scan_all(
    inspector: &mut dyn SourceInspector,
    table: &TableSchema,
    page: usize,
) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut after: Option<Vec<Value>> = None;
    loop {
        let got = inspector
            .scan(table, after.as_deref(), page)
            .await
            .unwrap_or_else(|e| panic!("scan {}: {e}", table.id));
        assert!(got.len() <= page, "a page holds at most {page} rows");
        let Some(last) = got.last() else { break };
        after = Some(table.key_of(last));
        let full = got.len() == page;
        rows.extend(got);
        if !full {
            break;
        }
    }
    rows
}

/// Key → JSON value of rows, as the sink would store them.
fn encoded(table: &Arc<TableSchema>, rows: &[Row]) -> BTreeMap<String, String> {
    rows.iter()
        .map(|row| {
            (
                row_key(PREFIX, &table.id, table.key_values(row)),
                String::from_utf8(encode_row(table, row).expect("encode")).expect("utf8"),
            )
        })
        .collect()
}

fn schema<'a>(tables: &'a [Arc<TableSchema>], id: &TableId) -> &'a Arc<TableSchema> {
    tables
        .iter()
        .find(|t| t.id == *id)
        .unwrap_or_else(|| panic!("{id} not among {tables:?}"))
}

fn key_texts(table: &TableSchema, row: &Row) -> Vec<String> {
    table.key_of(row).iter().map(Value::to_text).collect()
}

fn texts(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_the_test_server_and_knows_its_own_replica() {
    let dbs = TestDbs::create("myi_ok", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE `{name}`.a (id INT PRIMARY KEY);
             CREATE TABLE `{name}`.b (k VARCHAR(10), n INT, PRIMARY KEY (k, n))"
        ),
    )
    .await;
    let id = unique_server_id();
    let yaml = source_yaml(&includes(&dbs), &format!("server_id: {id}\n"));
    let pipeline = unique("ok");
    let results = inspector(&yaml, &pipeline).await.check().await;
    assert!(failed(&results).is_empty(), "{results:#?}");
    let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
    for expected in [
        "mysql connection",
        "server version",
        "log_bin",
        "binlog_format",
        "binlog_row_image",
        "binlog_row_metadata",
        "server_id",
        "privilege REPLICATION SLAVE",
        "privilege BINLOG MONITOR",
        "privilege RELOAD",
        "privilege SELECT",
        "binlog retention",
        "table selection",
        "table keys",
        "table SELECT",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
    assert!(find(&results, "server version").detail.contains("MariaDB"));
    assert!(find(&results, "table selection")
        .detail
        .starts_with("2 tables"));
    assert!(
        !find(&results, "mysql connection")
            .detail
            .contains(":etcdsync@"),
        "no password: {results:#?}"
    );

    // While the pipeline streams, its binlog connection holds the server id: this pipeline's
    // own check passes; another pipeline with the same id is told to pick another.
    let run = SourceRun::start(&yaml, &pipeline, None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    db.query_drop(format!("INSERT INTO `{name}`.a VALUES (1)"))
        .await
        .expect("insert");
    run.wait_for("streaming", WAIT, |m| commits(m) >= 1).await;
    let own = inspector(&yaml, &pipeline).await.check().await;
    let server_id = find(&own, "server_id");
    assert!(
        server_id.ok && server_id.detail.contains("this pipeline"),
        "{server_id:?}"
    );
    let other = inspector(&yaml, &unique("other")).await.check().await;
    let server_id = find(&other, "server_id");
    assert!(!server_id.ok, "{other:#?}");
    assert!(
        server_id
            .detail
            .contains(&format!("source.server_id ({id}) is already in use")),
        "{server_id:?}"
    );
    assert_eq!(
        server_id.fix.as_deref(),
        Some("set source.server_id to a number no other server or replica uses")
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_checks_name_their_fixes() {
    let dbs = TestDbs::create("myi_bad", 2).await;
    let (name, other) = (dbs.name(0).to_string(), dbs.name(1).to_string());
    let user = unique("norepl");
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE `{name}`.keyed (id INT PRIMARY KEY, secret TEXT);
             CREATE TABLE `{name}`.nokey (v INT);
             CREATE TABLE `{other}`.hidden (id INT PRIMARY KEY);
             CREATE USER '{user}'@'%' IDENTIFIED BY 'pw';
             GRANT BINLOG MONITOR ON *.* TO '{user}'@'%';
             GRANT SELECT ON `{name}`.* TO '{user}'@'%';
             GRANT INSERT ON `{other}`.hidden TO '{user}'@'%'"
        ),
    )
    .await;
    let host = url()
        .split_once('@')
        .map(|(_, h)| h.to_string())
        .expect("user in url");
    let user_url = format!("mysql://{user}:pw@{host}");
    let yaml = format!(
        "type: mysql\nurl: \"{user_url}\"\ntables: {{ include: [\"{name}.*\", \"{other}.*\"] }}\n"
    );
    let results = inspector(&yaml, &unique("bad")).await.check().await;

    let quoted = format!("'{user}'@'%'");
    let replication = find(&results, "privilege REPLICATION SLAVE");
    assert!(!replication.ok, "{results:#?}");
    assert_eq!(
        replication.fix.as_deref(),
        Some(format!("GRANT REPLICATION SLAVE ON *.* TO {quoted};").as_str())
    );
    assert!(find(&results, "privilege BINLOG MONITOR").ok);
    let nokey = find(&results, &format!("primary key of {name}.nokey"));
    assert!(!nokey.ok);
    let fix = nokey.fix.as_deref().unwrap_or_default();
    assert!(
        fix.contains(&format!("ALTER TABLE `{name}`.`nokey` ADD PRIMARY KEY"))
            && fix.contains(&format!("\"{name}.nokey\" to source.tables.exclude")),
        "{fix}"
    );
    let hidden = find(&results, &format!("SELECT on {other}.hidden"));
    assert!(!hidden.ok);
    assert!(
        hidden
            .fix
            .as_deref()
            .unwrap_or_default()
            .starts_with(&format!("GRANT SELECT ON `{other}`.* TO {quoted};")),
        "{hidden:?}"
    );
    assert_eq!(
        failed(&results).len(),
        3,
        "only these three fail: {results:#?}"
    );
    assert!(
        results.iter().all(|r| !r.detail.contains(":pw@")),
        "no password in the report: {results:#?}"
    );

    // The start-up check shares the verdicts: the same fix stops the source.
    let refused = build(&yaml, &unique("bad"), None).await;
    let _ = db.query_drop(format!("DROP USER '{user}'@'%'")).await;
    let message = match refused {
        Ok(_) => panic!("a user without REPLICATION SLAVE must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        message.contains(&format!(
            "privilege REPLICATION SLAVE: {user}@% lacks REPLICATION SLAVE"
        )) && message.contains(&format!("fix: GRANT REPLICATION SLAVE ON *.* TO {quoted};")),
        "{message}"
    );

    // A selection that matches nothing, and an excluded key column.
    let nothing = source_yaml(&[format!("{name}.nothing_*")], "");
    let results = inspector(&nothing, &unique("none")).await.check().await;
    let selection = find(&results, "table selection");
    assert!(!selection.ok, "{results:#?}");
    assert!(selection
        .fix
        .as_deref()
        .unwrap_or_default()
        .contains("source.tables.include"));
    let excluded = format!(
        "type: mysql\nurl: \"{}\"\ntables: {{ include: [\"{name}.keyed\"], exclude_columns: {{ \"{name}.keyed\": [id] }} }}\n",
        url()
    );
    let results = inspector(&excluded, &unique("excl")).await.check().await;
    let key = find(&results, &format!("primary key of {name}.keyed"));
    assert!(!key.ok, "{results:#?}");
    assert!(
        key.fix
            .as_deref()
            .unwrap_or_default()
            .contains("remove `id` from source.tables.exclude_columns"),
        "{key:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_server_row_metadata_retention_and_lag_across_binlog_files() {
    let server = PrivateMariaDb::start().await;
    let mut conn = server.connect().await;
    exec(
        &mut conn,
        "CREATE DATABASE d;
         CREATE TABLE d.t (id INT PRIMARY KEY, v TEXT);
         SET GLOBAL binlog_row_metadata = MINIMAL;
         SET GLOBAL log_bin_compress = ON;
         SET GLOBAL binlog_expire_logs_seconds = 3600",
    )
    .await;
    let yaml = format!(
        "type: mysql\nurl: \"{}\"\ntables: {{ include: [\"d.*\"] }}\n",
        server.url()
    );
    let pipeline = unique("priv");
    let mut inspect = inspector(&yaml, &pipeline).await;
    let results = inspect.check().await;
    let metadata = find(&results, "binlog_row_metadata");
    assert!(!metadata.ok, "{results:#?}");
    assert!(metadata.detail.starts_with("MINIMAL"), "{metadata:?}");
    assert!(
        metadata
            .fix
            .as_deref()
            .unwrap_or_default()
            .contains("SET GLOBAL binlog_row_metadata=FULL"),
        "{metadata:?}"
    );
    let retention = find(&results, "binlog retention");
    assert!(
        !retention.ok && retention.detail.contains("1 hour"),
        "{retention:?}"
    );
    assert!(retention
        .fix
        .as_deref()
        .unwrap_or_default()
        .contains("binlog_expire_logs_seconds=604800"));
    let compress = find(&results, "log_bin_compress");
    assert!(
        !compress.ok
            && compress
                .fix
                .as_deref()
                .unwrap_or_default()
                .contains("SET GLOBAL log_bin_compress=OFF"),
        "{compress:?}"
    );
    assert_eq!(failed(&results).len(), 3, "{results:#?}");

    // Start-up refuses the metadata and compression settings with the same fixes and only
    // warns about retention.
    let message = match build(&yaml, &pipeline, None).await {
        Ok(_) => panic!("binlog_row_metadata=MINIMAL must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("binlog_row_metadata=FULL"), "{message}");
    assert!(message.contains("log_bin_compress=OFF"), "{message}");
    assert!(!message.contains("binlog retention"), "{message}");

    // With `snapshot: when_needed` a short retention is survivable.
    let when_needed = format!("{yaml}snapshot: when_needed\n");
    let results = inspector(&when_needed, &pipeline).await.check().await;
    assert!(find(&results, "binlog retention").ok, "{results:#?}");

    exec(
        &mut conn,
        "SET GLOBAL binlog_row_metadata = FULL;
         SET GLOBAL log_bin_compress = OFF;
         SET GLOBAL binlog_expire_logs_seconds = 0",
    )
    .await;
    let results = inspect.check().await;
    assert!(failed(&results).is_empty(), "{results:#?}");

    // Lag: within one file, then across a rotation (sum of SHOW BINARY LOGS sizes).
    let start = binlog_position(&mut conn).await;
    let lag = inspect
        .lag(&Position::new(start.clone()))
        .await
        .expect("lag");
    assert_eq!(lag.bytes, Some(0), "{lag:?}");
    let current = lag.current_position.expect("current position");
    assert_eq!(current.split(' ').next(), Some(start.as_str()), "{current}");
    exec(&mut conn, "INSERT INTO d.t VALUES (1, REPEAT('x', 1000))").await;
    let one = inspect
        .lag(&Position::new(start.clone()))
        .await
        .expect("lag")
        .bytes
        .expect("bytes");
    assert!(one > 1000, "{one}");
    exec(
        &mut conn,
        "FLUSH BINARY LOGS;
         INSERT INTO d.t VALUES (2, REPEAT('y', 2000))",
    )
    .await;
    // MariaDB writes a binlog checkpoint event into the new file a moment after the rotation:
    // measure while the end of the binlog stands still.
    let mut measured = None;
    for _ in 0..50 {
        let before = binlog_position(&mut conn).await;
        let lag = inspect
            .lag(&Position::new(start.clone()))
            .await
            .expect("lag");
        let after = binlog_position(&mut conn).await;
        if before == after {
            measured = Some((lag, after));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (lag, now) = measured.expect("the binlog end stood still for one measurement");
    let (start_file, start_offset) = start.rsplit_once(':').expect("file:offset");
    let (now_file, now_offset) = now.rsplit_once(':').expect("file:offset");
    assert_ne!(start_file, now_file, "rotated");
    let logs: Vec<(String, u64)> = conn.query("SHOW BINARY LOGS").await.expect("logs");
    let mut expected = 0u64;
    let mut counting = false;
    for (file, size) in &logs {
        if file == start_file {
            counting = true;
            expected += size - start_offset.parse::<u64>().expect("offset");
        } else if file == now_file {
            expected += now_offset.parse::<u64>().expect("offset");
            break;
        } else if counting {
            expected += size;
        }
    }
    assert_eq!(lag.bytes, Some(expected), "{lag:?} vs {logs:?}");
    assert!(expected > one + 2000);
    assert!(
        lag.current_position
            .as_deref()
            .is_some_and(|p| p.starts_with(&now)),
        "{lag:?} vs {now}"
    );
    assert!(inspect
        .lag(&Position::new("0/16B3748".to_string()))
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_are_described_as_the_snapshot_does_and_progress_is_reported() {
    let dbs = TestDbs::create("myi_tables", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE `{name}`.items (id INT, secret TEXT, sub VARCHAR(20), doc JSON, PRIMARY KEY (sub, id));
             INSERT INTO `{name}`.items SELECT seq, 'hidden', CONCAT('s', seq % 7), JSON_OBJECT('n', seq) FROM `{name}`.seq_1_to_600;
             CREATE TABLE `{name}`.plain (k VARCHAR(10) PRIMARY KEY);
             CREATE TABLE `{name}`.nokey (v INT)"
        ),
    )
    .await;
    let yaml = format!(
        "type: mysql\nurl: \"{}\"\ntables: {{ include: [\"{name}.*\"], exclude_columns: {{ \"{name}.items\": [secret] }} }}\n",
        url()
    );
    let mut inspect = inspector(&yaml, &unique("tables")).await;
    let tables = inspect.tables().await.expect("tables");
    let ids: Vec<&TableId> = tables.iter().map(|t| &t.id).collect();
    assert_eq!(
        ids,
        vec![
            &TableId::new(&name, "items"),
            &TableId::new(&name, "nokey"),
            &TableId::new(&name, "plain")
        ],
        "sorted, the table without a key listed with an empty key"
    );
    assert!(schema(&tables, &TableId::new(&name, "nokey"))
        .key
        .is_empty());
    let items = schema(&tables, &TableId::new(&name, "items"));
    let columns: Vec<&str> = items.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(columns, ["id", "sub", "doc"], "secret excluded");
    assert_eq!(items.key, vec![1, 0], "key in index order: (sub, id)");

    let run = SourceRun::start(&yaml, &unique("tables"), None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    let (messages, _) = run.stop().await;
    let snapshot_schema = messages
        .iter()
        .find_map(|m| match m {
            etcdsync_core::Message::Changes(c) => c
                .iter()
                .find(|c| c.table.id == items.id)
                .map(|c| c.table.clone()),
            _ => None,
        })
        .expect("rows of items");
    assert_eq!(*snapshot_schema, **items, "the snapshot's own schema");

    let progress = etcdsync_core::telemetry::get().snapshot_progress();
    let items_progress = progress.get(&items.id).expect("progress of items");
    assert_eq!(items_progress.rows, 600);
    assert!(items_progress.done);
    assert!(
        items_progress.estimated_rows.is_some(),
        "{items_progress:?}"
    );
    let rendered = etcdsync_core::telemetry::get().render();
    assert!(
        rendered.contains(&format!(
            "etcdsync_snapshot_rows_total{{table=\"{}\"}} 600",
            items.id
        )),
        "{rendered}"
    );

    // Keyless tables cannot be scanned; a stale schema is refused with a clear message.
    let nokey = schema(&tables, &TableId::new(&name, "nokey"));
    let err = inspect.scan(nokey, None, 5).await.expect_err("no key");
    assert!(err.to_string().contains("no primary key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_pages_awkward_composite_keys_in_order_byte_identical_to_the_snapshot() {
    let dbs = TestDbs::create("myi_scan", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE `{name}`.k (s VARCHAR(40) NOT NULL, b VARBINARY(8) NOT NULL, d DATETIME(3) NOT NULL,
                 doc JSON, n INT, PRIMARY KEY (s, b, d));
             INSERT INTO `{name}`.k
               SELECT s.v, b.v, d.v, JSON_OBJECT('s', s.v, 'list', JSON_ARRAY(1, 2.50, 'x')), 7
               FROM (SELECT 'a/b' AS v UNION ALL SELECT '50%' UNION ALL SELECT 'é ünï 雪' UNION ALL SELECT 'plain' UNION ALL SELECT 'z/%/é') s,
                    (SELECT X'' AS v UNION ALL SELECT X'00' UNION ALL SELECT X'00ff' UNION ALL SELECT X'7f' UNION ALL SELECT X'ff00') b,
                    (SELECT '2024-02-29 23:59:58.120' AS v UNION ALL SELECT '1999-12-31 00:00:00' UNION ALL SELECT '2024-01-01 00:00:00.001') d;
             CREATE TABLE `{name}`.e (k ENUM('zeta', 'alpha', 'mid') NOT NULL, n INT NOT NULL, PRIMARY KEY (k, n));
             INSERT INTO `{name}`.e VALUES ('zeta', 1), ('alpha', 1), ('alpha', 2), ('mid', 1);
             CREATE TABLE `{name}`.ts (t TIMESTAMP(6) NOT NULL, bb BINARY(4) NOT NULL, PRIMARY KEY (t, bb));
             INSERT INTO `{name}`.ts VALUES ('2024-01-01 00:00:00.5', X'01'), ('2024-01-01 00:00:00.5', X'0102'), ('2030-06-30 12:00:00', X'')"
        ),
    )
    .await;
    let yaml = source_yaml(&includes(&dbs), "");
    let mut inspect = inspector(&yaml, &unique("scan")).await;
    let tables = inspect.tables().await.expect("tables");
    let run = SourceRun::start(&yaml, &unique("scan"), None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    let (messages, _) = run.stop().await;
    let snapshot = apply(&messages, PREFIX);

    for (table, count, page) in [("k", 75usize, 7usize), ("e", 4, 1), ("ts", 3, 1)] {
        let table = schema(&tables, &TableId::new(&name, table)).clone();
        let all = inspect
            .scan(&table, None, 10_000)
            .await
            .expect("scan everything");
        assert_eq!(all.len(), count, "{}", table.id);
        let paged = scan_all(inspect.as_mut(), &table, page).await;
        assert_eq!(
            paged, all,
            "{}: pages of {page} give every row once, in key order",
            table.id
        );
        let prefix = format!("{PREFIX}/{name}/{}/", table.id.table);
        let from_snapshot: BTreeMap<String, String> = snapshot
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            encoded(&table, &paged),
            from_snapshot,
            "{}: byte-identical to the snapshot",
            table.id
        );
    }
    let enums = schema(&tables, &TableId::new(&name, "e")).clone();
    let order: Vec<Vec<String>> = scan_all(inspect.as_mut(), &enums, 1)
        .await
        .iter()
        .map(|r| key_texts(&enums, r))
        .collect();
    assert_eq!(
        order,
        vec![
            texts(&["zeta", "1"]),
            texts(&["alpha", "1"]),
            texts(&["alpha", "2"]),
            texts(&["mid", "1"])
        ],
        "ENUM keys page in their definition order"
    );
    let k = schema(&tables, &TableId::new(&name, "k")).clone();
    let first = inspect.scan(&k, None, 1).await.expect("first row");
    let doc = k.column_index("doc").expect("doc");
    assert!(
        matches!(&first[0][doc], Value::Json(_)),
        "JSON columns as JSON: {:?}",
        first[0][doc]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_keys_finds_present_keys_only() {
    let dbs = TestDbs::create("myi_keys", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE `{name}`.k (s VARCHAR(40) NOT NULL, b VARBINARY(8) NOT NULL, d DATETIME(3) NOT NULL, PRIMARY KEY (s, b, d));
             INSERT INTO `{name}`.k VALUES ('a/b', X'00ff', '2024-02-29 23:59:58.12'), ('plain', X'', '1999-12-31 00:00:00'),
                 ('é 50%', X'ff', '2024-01-01 00:00:00.001');
             CREATE TABLE `{name}`.ts (t TIMESTAMP(6) NOT NULL, bb BINARY(4) NOT NULL, PRIMARY KEY (t, bb));
             INSERT INTO `{name}`.ts VALUES ('2024-01-01 00:00:00.5', X'01');
             CREATE TABLE `{name}`.e (k ENUM('zeta', 'alpha') NOT NULL, n INT NOT NULL, PRIMARY KEY (k, n));
             INSERT INTO `{name}`.e VALUES ('alpha', 1)"
        ),
    )
    .await;
    let yaml = source_yaml(&includes(&dbs), "");
    let mut inspect = inspector(&yaml, &unique("keys")).await;
    let tables = inspect.tables().await.expect("tables");

    let k = schema(&tables, &TableId::new(&name, "k")).clone();
    let present = vec![
        texts(&["a/b", "00ff", "2024-02-29T23:59:58.12"]),
        texts(&["plain", "", "1999-12-31T00:00:00"]),
        texts(&["é 50%", "ff", "2024-01-01T00:00:00.001"]),
    ];
    let mut asked = present.clone();
    asked.extend([
        texts(&["a/b", "00ff", "2024-02-29T23:59:58.13"]), // absent
        texts(&["nobody", "00", "2024-02-29T23:59:58.12"]), // absent
        texts(&["A/B", "00ff", "2024-02-29T23:59:58.12"]), // the collation matches, the key is not this
        texts(&["a/b", "00FF", "2024-02-29T23:59:58.12"]), // not lowercase hex
        texts(&["a/b", "zz", "2024-02-29T23:59:58.12"]),   // not hex
        texts(&["a/b", "00ff", "garbage"]),                // not a datetime
        texts(&["a/b", "00ff", "2024-02-29 23:59:58.12"]), // not the canonical text
        texts(&["a/b", "00ff"]),                           // wrong width
    ]);
    let found = inspect.existing_keys(&k, &asked).await.expect("look up");
    assert_eq!(found, present);
    // The same texts the scan produces find every row.
    let scanned: Vec<Vec<String>> = inspect
        .scan(&k, None, 100)
        .await
        .expect("scan")
        .iter()
        .map(|r| key_texts(&k, r))
        .collect();
    assert_eq!(
        inspect.existing_keys(&k, &scanned).await.expect("look up"),
        scanned
    );

    let ts = schema(&tables, &TableId::new(&name, "ts")).clone();
    let asked = vec![
        texts(&["2024-01-01T00:00:00.5Z", "01000000"]),
        texts(&["2024-01-01T00:00:00.5", "01000000"]),
        texts(&["2024-01-01T00:00:00.5Z", "01"]),
    ];
    assert_eq!(
        inspect.existing_keys(&ts, &asked).await.expect("look up"),
        vec![texts(&["2024-01-01T00:00:00.5Z", "01000000"])],
        "TIMESTAMP keys in UTC with Z, BINARY(n) with its padding"
    );

    let e = schema(&tables, &TableId::new(&name, "e")).clone();
    let asked = vec![
        texts(&["alpha", "1"]),
        texts(&["alpha", "01"]),
        texts(&["alpha", "x"]),
        texts(&["zeta", "1"]),
        texts(&["nope", "1"]),
    ];
    assert_eq!(
        inspect.existing_keys(&e, &asked).await.expect("look up"),
        vec![texts(&["alpha", "1"])]
    );
    assert!(inspect
        .existing_keys(&e, &[])
        .await
        .expect("nothing")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_bytes_grow_with_writes() {
    let dbs = TestDbs::create("myi_lag", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    exec(
        &mut db,
        &format!("CREATE TABLE `{name}`.t (id INT PRIMARY KEY, v TEXT)"),
    )
    .await;
    let mut inspect = inspector(&source_yaml(&includes(&dbs), ""), &unique("lag")).await;
    let start = Position::new(binlog_position(&mut db).await);
    let before = inspect
        .lag(&start)
        .await
        .expect("lag")
        .bytes
        .expect("bytes");
    db.query_drop(format!(
        "INSERT INTO `{name}`.t SELECT seq, REPEAT('x', 200) FROM `{name}`.seq_1_to_50"
    ))
    .await
    .expect("insert");
    let lag = inspect.lag(&start).await.expect("lag");
    let after = lag.bytes.expect("bytes");
    assert!(after >= before + 50 * 200, "{before} → {after}");
    let current = lag.current_position.expect("current position");
    assert!(
        current.starts_with("mysql-bin.") && current.contains(" gtid="),
        "file:offset and the MariaDB GTID position: {current}"
    );
    // The current position is itself a position this source reads back.
    let from_current = inspect
        .lag(&Position::new(current.clone()))
        .await
        .expect("lag");
    assert!(from_current.bytes.is_some(), "{from_current:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_and_wrong_password_are_failed_checks() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let down = format!(
        "type: mysql\nurl: \"mysql://u:secret@127.0.0.1:{port}/\"\ntables: {{ include: [\"x.*\"] }}\n"
    );
    let results = inspector(&down, &unique("down")).await.check().await;
    assert_eq!(results.len(), 1, "{results:#?}");
    let connection = &results[0];
    assert!(!connection.ok && connection.name == "mysql connection");
    assert!(
        connection
            .fix
            .as_deref()
            .unwrap_or_default()
            .starts_with("start the server, or fix host and port in source.url"),
        "{connection:?}"
    );
    assert!(!connection.detail.contains("secret"), "{connection:?}");

    let host = url()
        .split_once('@')
        .map(|(_, h)| h.to_string())
        .expect("user in url");
    let wrong = format!(
        "type: mysql\nurl: \"mysql://etcdsync:wrong-secret@{host}\"\ntables: {{ include: [\"x.*\"] }}\n"
    );
    let results = inspector(&wrong, &unique("wrong")).await.check().await;
    let connection = find(&results, "mysql connection");
    assert!(!connection.ok, "{results:#?}");
    assert!(
        connection
            .fix
            .as_deref()
            .unwrap_or_default()
            .starts_with("check the user and password in source.url"),
        "{connection:?}"
    );
    assert!(
        !connection.detail.contains("wrong-secret"),
        "{connection:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileges_granted_through_a_default_role_are_recognised() {
    let dbs = TestDbs::create("myi_role", 1).await;
    let name = dbs.name(0).to_string();
    let user = unique("roled");
    let role = unique("etcdsync_role");
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE `{name}`.t (id INT PRIMARY KEY);
             CREATE ROLE '{role}';
             GRANT REPLICATION SLAVE, BINLOG MONITOR, RELOAD ON *.* TO '{role}';
             GRANT SELECT ON `{name}`.* TO '{role}';
             CREATE USER '{user}'@'%' IDENTIFIED BY 'pw';
             GRANT '{role}' TO '{user}'@'%';
             SET DEFAULT ROLE '{role}' FOR '{user}'@'%'"
        ),
    )
    .await;
    let host = url()
        .split_once('@')
        .map(|(_, h)| h.to_string())
        .expect("user in url");
    let yaml = format!(
        "type: mysql\nurl: \"mysql://{user}:pw@{host}\"\ntables: {{ include: [\"{name}.*\"] }}\n"
    );
    let results = inspector(&yaml, &unique("role")).await.check().await;
    for check in [
        "privilege REPLICATION SLAVE",
        "privilege BINLOG MONITOR",
        "privilege SELECT",
    ] {
        assert!(find(&results, check).ok, "{check}: {results:#?}");
    }
    exec(
        &mut db,
        &format!("DROP USER '{user}'@'%';\n DROP ROLE '{role}'"),
    )
    .await;
}
