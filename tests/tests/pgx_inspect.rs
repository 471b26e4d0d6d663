//! The `pgx` inspector (issue 6) against a real PostgreSQL: `check` passing on a correct setup
//! and failing with the named fix (role without REPLICATION, table without key, missing SELECT,
//! publication ownership, wal_level and capacity on a private server, empty selection, foreign
//! slot); `tables` equal to the streamed schemas; `scan` paging in key order with the snapshot's
//! bytes; `existing_keys`; `lag`; snapshot progress and source retries in the telemetry.
#![cfg(feature = "integration-tests")]

use etcdsync_core::encode::json::encode_row;
use etcdsync_core::inspect::{CheckResult, SourceInspector};
use etcdsync_core::source::{SourceConfig, SourceContext};
use etcdsync_core::{telemetry, Message, Op, Position, Row, TableId, TableSchema, Value};
use etcdsync_pgx as _;
use etcdsync_tests::pg::{eventually, source_yaml, unique, PrivatePg, SourceRun, TestDb, TestRole};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn config(yaml: &str) -> Box<dyn SourceConfig> {
    serde_yaml::from_str(yaml).expect("source yaml")
}

async fn inspector(yaml: &str, name: &str) -> Box<dyn SourceInspector> {
    config(yaml)
        .inspect(name)
        .await
        .unwrap_or_else(|e| panic!("inspect: {e}"))
}

fn show(results: &[CheckResult]) -> String {
    results
        .iter()
        .map(|r| {
            format!(
                "[{}] {}: {}{}",
                if r.ok { "ok" } else { "FAIL" },
                r.name,
                r.detail,
                r.fix
                    .as_ref()
                    .map(|f| format!(" — fix: {f}"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn named<'a>(results: &'a [CheckResult], name: &str) -> &'a CheckResult {
    results
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no check named `{name}`:\n{}", show(results)))
}

/// The failed check `name` whose fix contains `fix`.
fn failed_with(results: &[CheckResult], name: &str, fix: &str) {
    let found = results
        .iter()
        .any(|r| !r.ok && r.name == name && r.fix.as_deref().is_some_and(|f| f.contains(fix)));
    assert!(
        found,
        "no failed `{name}` with fix containing `{fix}`:\n{}",
        show(results)
    );
}

fn snapshot_done(messages: &[Message]) -> bool {
    messages
        .iter()
        .any(|m| matches!(m, Message::SnapshotFinished { .. }))
}

/// Inserts of `table` in the messages, in order.
fn inserts(messages: &[Message], table: &TableId) -> Vec<(Arc<TableSchema>, Row)> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Changes(changes) => Some(changes),
            _ => None,
        })
        .flatten()
        .filter(|c| c.table.id == *table)
        .filter_map(|c| match &c.op {
            Op::Insert { row } => Some((c.table.clone(), row.clone())),
            _ => None,
        })
        .collect()
}

fn json(schema: &TableSchema, row: &[Value]) -> String {
    String::from_utf8(encode_row(schema, row).expect("encode")).expect("utf8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_a_correct_setup_and_shows_the_slot() {
    let db = TestDb::create("pgx_check_ok").await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TABLE users (id int PRIMARY KEY, name text);
         CREATE TABLE pairs (a int, b text, PRIMARY KEY (a, b));
         INSERT INTO users VALUES (1, 'one');",
    )
    .await
    .expect("setup");
    let name = unique("p");
    let yaml = source_yaml(&db, &["public.*"], "");
    let mut inspect = inspector(&yaml, &name).await;
    let results = inspect.check().await;
    assert!(results.iter().all(|r| r.ok), "{}", show(&results));
    for check in [
        "postgres connection",
        "postgres version",
        "wal_level",
        "replication role",
        "max_replication_slots",
        "max_wal_senders",
        "table selection",
        "SELECT privilege",
        "table keys",
    ] {
        named(&results, check);
    }
    assert_eq!(named(&results, "wal_level").detail, "logical");
    assert!(named(&results, "postgres version")
        .detail
        .starts_with("PostgreSQL 1"));
    let publication = format!("publication etcdsync_{name}");
    let slot = format!("replication slot etcdsync_{name}");
    assert!(
        named(&results, &publication)
            .detail
            .contains("created at start with the 2 selected tables"),
        "{}",
        show(&results)
    );
    assert!(named(&results, &slot).detail.contains("does not exist yet"));

    // while this pipeline streams, its own slot and walsender are fine
    let run = SourceRun::start(&yaml, &name, None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    let mut streaming = false;
    let start = Instant::now();
    while !streaming && start.elapsed() < WAIT {
        let results = inspect.check().await;
        assert!(results.iter().all(|r| r.ok), "{}", show(&results));
        streaming = named(&results, &slot)
            .detail
            .contains("in use by this pipeline");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        streaming,
        "the slot never showed as in use by this pipeline"
    );
    run.stop().await;

    // the server's walsender lets go of the slot shortly after the stream ends
    let mut results = inspect.check().await;
    let start = Instant::now();
    while !named(&results, &slot).detail.contains("inactive") && start.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
        results = inspect.check().await;
    }
    assert!(results.iter().all(|r| r.ok), "{}", show(&results));
    let detail = &named(&results, &slot).detail;
    assert!(
        detail.contains("exists, inactive")
            && detail.contains("confirmed_flush_lsn ")
            && detail.contains("bytes of WAL"),
        "{detail}"
    );
    assert!(named(&results, &publication)
        .detail
        .contains("covers exactly the 2 selected tables"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_fixes_for_a_restricted_role() {
    let role = TestRole::create("pgx_norepl", "NOREPLICATION NOSUPERUSER").await;
    let db = TestDb::create("pgx_check_role").await;
    let pg = db.client().await;
    pg.batch_execute(&format!(
        "CREATE TABLE readable (id int PRIMARY KEY, v text);
         CREATE TABLE secret (id int PRIMARY KEY, v text);
         CREATE TABLE nokey (at timestamptz, line text);
         GRANT SELECT ON readable, nokey TO {0};",
        role.name
    ))
    .await
    .expect("setup");
    let yaml = source_yaml(&db, &["public.*"], "").replace(&db.url, &role.url(&db.url));
    let name = unique("p");
    let results = inspector(&yaml, &name).await.check().await;
    let text = show(&results);
    for ok in [
        "postgres connection",
        "wal_level",
        "max_replication_slots",
        "table selection",
    ] {
        assert!(named(&results, ok).ok, "{text}");
    }
    failed_with(
        &results,
        "replication role",
        &format!("ALTER ROLE \"{}\" REPLICATION;", role.name),
    );
    failed_with(
        &results,
        "SELECT on public.secret",
        &format!(
            "GRANT SELECT ON \"public\".\"secret\" TO \"{}\";",
            role.name
        ),
    );
    failed_with(
        &results,
        "key of public.nokey",
        "ALTER TABLE \"public\".\"nokey\" ADD PRIMARY KEY",
    );
    failed_with(&results, "key of public.nokey", "REPLICA IDENTITY FULL");
    let publication = format!("publication etcdsync_{name}");
    failed_with(
        &results,
        &publication,
        &format!(
            "GRANT CREATE ON DATABASE \"{}\" TO \"{}\";",
            db.name, role.name
        ),
    );
    failed_with(
        &results,
        &publication,
        &format!(
            "ALTER TABLE \"public\".\"readable\" OWNER TO \"{}\";",
            role.name
        ),
    );
    assert!(named(&results, "SELECT privilege")
        .detail
        .contains("2 of 3"));
    assert!(named(&results, "table keys").detail.contains("2 of 3"));

    // `run` refuses to start with the same fix
    let err = build_error(&yaml, &name, "a role without REPLICATION was accepted").await;
    assert!(
        err.contains(&format!("ALTER ROLE \"{}\" REPLICATION", role.name)),
        "{err}"
    );
}

/// The error of building the source of `yaml` as pipeline `name`; panics with `accepted` when
/// it builds.
async fn build_error(yaml: &str, name: &str, accepted: &str) -> String {
    match config(yaml)
        .build(SourceContext {
            name: name.to_string(),
            resume: None,
            fence: None,
            written_tables: Default::default(),
        })
        .await
    {
        Ok(_) => panic!("{accepted}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_wal_level_and_capacity_on_a_server_without_logical_decoding() {
    let started = Instant::now();
    let server =
        PrivatePg::start("wal_level = replica\nmax_wal_senders = 0\nmax_replication_slots = 0");
    let boot = started.elapsed();
    let pg = etcdsync_tests::pg::connect(&server.url).await;
    pg.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("setup");
    let yaml = format!(
        "type: postgres\nurl: \"{}\"\ntables: {{ include: [\"public.*\"] }}\nsslmode: disable\n",
        server.url
    );
    let name = unique("p");
    let results = inspector(&yaml, &name).await.check().await;
    failed_with(
        &results,
        "wal_level",
        "ALTER SYSTEM SET wal_level = logical; and restart PostgreSQL",
    );
    assert!(named(&results, "wal_level")
        .detail
        .contains("wal_level = replica"));
    failed_with(
        &results,
        "max_replication_slots",
        "ALTER SYSTEM SET max_replication_slots = 2;",
    );
    failed_with(
        &results,
        "max_wal_senders",
        "ALTER SYSTEM SET max_wal_senders = 2;",
    );
    assert!(named(&results, "replication role").ok);
    assert!(named(&results, "table keys").ok);

    let err = build_error(&yaml, &name, "wal_level = replica was accepted").await;
    assert!(
        err.contains("ALTER SYSTEM SET wal_level = logical"),
        "{err}"
    );
    eprintln!(
        "private server started in {boot:?}, whole test {:?}",
        started.elapsed()
    );
}

/// `synchronous_standby_names` naming etcdsync's replication connection would make it a
/// synchronous standby: commits would wait for etcdsync while it waits for them. `check` fails
/// and `run` refuses, both naming the fix; a `*` is a warning `check` shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_standby_setting_that_names_etcdsync_is_refused() {
    let name = unique("p");
    let server = PrivatePg::start(&format!(
        "wal_level = logical\nsynchronous_standby_names = 'FIRST 1 (replica1, \"etcdsync-{name}\", *)'"
    ));
    let pg = etcdsync_tests::pg::connect(&server.url).await;
    // No standby is connected: only commits that do not wait for one complete.
    pg.batch_execute("SET synchronous_commit = local; CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("setup");
    let yaml = format!(
        "type: pgx\nurl: \"{}\"\ntables: {{ include: [\"public.*\"] }}\nsslmode: disable\n",
        server.url
    );
    let results = inspector(&yaml, &name).await.check().await;
    failed_with(
        &results,
        "synchronous_standby_names",
        "list only the real synchronous standbys",
    );
    assert!(named(&results, "wal_level").ok);
    let err = build_error(&yaml, &name, "a setting naming etcdsync was accepted").await;
    assert!(
        err.contains("synchronous_standby_names") && err.contains(&format!("etcdsync-{name}")),
        "{err}"
    );
    // ALTER SYSTEM runs alone (not in a transaction block).
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (replica1, *)'",
        "SELECT pg_reload_conf()",
    ] {
        pg.batch_execute(sql).await.expect(sql);
    }
    let warned = eventually(WAIT, || async {
        let results = inspector(&yaml, &name).await.check().await;
        let standby = named(&results, "synchronous_standby_names");
        standby.ok && standby.detail.contains("warning") && standby.detail.contains("`*`")
    })
    .await;
    assert!(warned, "check did not warn about `*`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_on_bad_connection_empty_selection_foreign_slot_and_unmanaged_publication() {
    let db = TestDb::create("pgx_check_misc").await;
    let pg = db.client().await;
    let name = unique("p");
    let slot = format!("etcdsync_{name}");
    pg.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY);
         CREATE TABLE b (id int PRIMARY KEY);
         CREATE PUBLICATION mine FOR TABLE a;",
    )
    .await
    .expect("setup");
    // a slot of that name with another plugin (its own transaction: no writes before it)
    pg.execute(
        "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
        &[&slot],
    )
    .await
    .expect("foreign slot");
    let results = inspector(&source_yaml(&db, &["nomatch.*"], ""), &name)
        .await
        .check()
        .await;
    failed_with(&results, "table selection", "source.tables.include");
    failed_with(
        &results,
        &format!("replication slot {slot}"),
        "set `source.slot` to another name",
    );

    // unreachable server, missing database
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let yaml = source_yaml(&db, &["public.*"], "").replace(
        &db.url,
        &format!("postgres://etcdsync:secret@127.0.0.1:{closed}/x"),
    );
    let results = inspector(&yaml, &name).await.check().await;
    assert_eq!(results.len(), 1, "{}", show(&results));
    failed_with(&results, "postgres connection", "check host and port");
    assert!(!show(&results).contains("secret"), "{}", show(&results));
    let missing = etcdsync_tests::pg::with_database(&db.url, "no_such_db");
    let yaml = source_yaml(&db, &["public.*"], "").replace(&db.url, &missing);
    let results = inspector(&yaml, &name).await.check().await;
    failed_with(
        &results,
        "postgres connection",
        "create database no_such_db",
    );

    let yaml = source_yaml(
        &db,
        &["public.*"],
        "manage_publication: false\npublication: mine\n",
    );
    let results = inspector(&yaml, &name).await.check().await;
    failed_with(
        &results,
        "publication mine",
        "ALTER PUBLICATION \"mine\" ADD TABLE \"public\".\"b\";",
    );
    pg.batch_execute("ALTER PUBLICATION mine ADD TABLE b")
        .await
        .expect("add");
    let results = inspector(&yaml, &name).await.check().await;
    assert!(named(&results, "publication mine").ok, "{}", show(&results));
}

const SCAN_DDL: &str = "
CREATE TABLE docs (
  t text, b bytea, ts timestamptz, id int UNIQUE NOT NULL,
  n numeric(8,3), f float8, j jsonb, arr int[], flag bool, iv interval, c char(3), secret text,
  PRIMARY KEY (t, b, ts)
);
INSERT INTO docs
SELECT (ARRAY['a/b', '100%', 'é ü', 'plain', 'Zebra', 'x''q\"\\\\'])[1 + i % 6],
       decode(lpad(to_hex(i % 4), 2, '0') || 'ff', 'hex'),
       timestamptz '2024-01-02 03:04:05.25+00' + (i / 12) * interval '1 day 0.5 second',
       i, i * 1.5, CASE WHEN i % 7 = 0 THEN 'NaN'::float8 ELSE i / 3.0 END,
       jsonb_build_object('i', i, 'tags', jsonb_build_array('x', i)), ARRAY[i, NULL, 3],
       i % 2 = 0, make_interval(days => i, secs => 0.5), 'ab', 'hidden'
FROM generate_series(0, 70) AS i;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_scan_and_snapshot_agree_byte_for_byte_in_key_order() {
    let db = TestDb::create("pgx_scan").await;
    let pg = db.client().await;
    pg.batch_execute(SCAN_DDL).await.expect("setup");
    pg.batch_execute(
        "CREATE TABLE events (at timestamptz NOT NULL, line text NOT NULL UNIQUE);
         ALTER TABLE events REPLICA IDENTITY FULL;
         INSERT INTO events VALUES ('2024-01-01', 'a'), ('2024-01-02', 'b');",
    )
    .await
    .expect("setup events");
    let docs = TableId::new("public", "docs");
    let events = TableId::new("public", "events");
    let yaml = source_yaml(&db, &["public.*"], "").replace(
        "  include: [\"public.*\"]\n",
        "  include: [\"public.*\"]\n  exclude_columns: { \"public.docs\": [secret] }\n",
    ) + "key_columns: { \"public.events\": [line] }\n";
    let name = unique("p");

    // what the source emits: the snapshot, then one streamed insert per table
    let run = SourceRun::start(&yaml, &name, None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    pg.batch_execute(
        "INSERT INTO docs (t, b, ts, id) VALUES ('zz stream', '\\x00', now(), 1000);
         INSERT INTO events VALUES ('2024-01-03', 'c');",
    )
    .await
    .expect("stream inserts");
    // one simple query, one transaction
    run.wait_for("streamed inserts", WAIT, |m| {
        m.iter().any(|m| matches!(m, Message::Commit(_)))
    })
    .await;
    let (messages, _) = run.stop().await;
    pg.batch_execute("DELETE FROM docs WHERE id = 1000; DELETE FROM events WHERE line = 'c'")
        .await
        .expect("undo stream inserts");
    let snapshot_docs = inserts(&messages, &docs);
    assert_eq!(snapshot_docs.len(), 72, "71 copied + 1 streamed");

    // tables(): exactly the schemas the snapshot and the stream carry
    let mut inspect = inspector(&yaml, &name).await;
    let tables = inspect.tables().await.expect("tables");
    let ids: Vec<&TableId> = tables.iter().map(|t| &t.id).collect();
    assert_eq!(ids, vec![&docs, &events]);
    for table in &tables {
        let emitted = inserts(&messages, &table.id);
        let (snapshot, streamed) = (&emitted[0].0, &emitted[emitted.len() - 1].0);
        assert_eq!(**table, **snapshot, "snapshot schema of {}", table.id);
        assert_eq!(**table, **streamed, "streamed schema of {}", table.id);
    }
    let docs_schema = tables[0].clone();
    assert!(docs_schema.column_index("secret").is_none());
    assert_eq!(
        docs_schema
            .key
            .iter()
            .map(|&i| docs_schema.columns[i].name.as_str())
            .collect::<Vec<_>>(),
        vec!["t", "b", "ts"]
    );
    assert_eq!(tables[1].key, vec![1], "events keyed by key_columns");

    // scan(): pages of 7 in key order, no gaps, no duplicates, the snapshot's bytes
    let mut scanned: Vec<Row> = Vec::new();
    let mut after: Option<Vec<Value>> = None;
    let mut pages = 0;
    loop {
        let page = inspect
            .scan(&docs_schema, after.as_deref(), 7)
            .await
            .expect("scan");
        pages += 1;
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        after = Some(docs_schema.key_of(last));
        let full = page.len() == 7;
        scanned.extend(page);
        if !full {
            break;
        }
    }
    assert_eq!(pages, 11, "71 rows in pages of 7");
    let id_at = docs_schema.column_index("id").expect("id column");
    let scanned_ids: Vec<i64> = scanned
        .iter()
        .map(|row| match row[id_at] {
            Value::Int(id) => id,
            ref other => panic!("id {other:?}"),
        })
        .collect();
    let ordered: Vec<i64> = pg
        .query("SELECT id::int8 FROM docs ORDER BY t, b, ts", &[])
        .await
        .expect("order")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(scanned_ids, ordered, "scan order is the key order");
    let snapshot: BTreeMap<String, String> = snapshot_docs
        .iter()
        .filter(|(_, row)| row[id_at] != Value::Int(1000))
        .map(|(schema, row)| (format!("{:?}", schema.key_of(row)), json(schema, row)))
        .collect();
    let from_scan: BTreeMap<String, String> = scanned
        .iter()
        .map(|row| {
            (
                format!("{:?}", docs_schema.key_of(row)),
                json(&docs_schema, row),
            )
        })
        .collect();
    assert_eq!(from_scan.len(), scanned.len(), "no duplicates");
    assert_eq!(from_scan, snapshot, "scan and snapshot bytes differ");
    assert!(
        from_scan.values().any(|v| v.contains("\"f\":\"NaN\"")),
        "{from_scan:?}"
    );

    // existing_keys(): present, absent, unparsable and non-canonical texts in one batch
    let present: Vec<Vec<String>> = scanned
        .iter()
        .step_by(5)
        .map(|row| docs_schema.key_of(row).iter().map(Value::to_text).collect())
        .collect();
    let some = &present[1];
    let with = |i: usize, text: &str| {
        let mut key = some.clone();
        key[i] = text.to_string();
        key
    };
    let absent = [
        with(0, "nope"),
        with(1, "0aff"),
        with(2, "2030-01-01T00:00:00Z"),
    ];
    let invalid = [
        with(1, "zz"),
        with(1, "0FF"),
        with(1, "00FF"),
        with(2, "not a time"),
        with(2, "2024-13-45T00:00:00Z"),
        with(0, "nul\0byte"),
        vec!["too".into(), "short".into()],
    ];
    // parses and finds the row, but is not how the row's key is written
    let non_canonical = [with(2, &some[2].replace('T', " ").replace('Z', "+00"))];
    let mut asked = Vec::new();
    for (i, key) in present.iter().enumerate() {
        asked.push(key.clone());
        if let Some(k) = absent.get(i) {
            asked.push(k.clone());
        }
        if let Some(k) = invalid.get(i) {
            asked.push(k.clone());
        }
        if let Some(k) = non_canonical.get(i) {
            asked.push(k.clone());
        }
    }
    let found = inspect
        .existing_keys(&docs_schema, &asked)
        .await
        .expect("existing keys");
    assert_eq!(found, present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_keys_in_large_batches_with_unparsable_integers() {
    let db = TestDb::create("pgx_keys").await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TABLE nums (id int8 PRIMARY KEY, v text);
         INSERT INTO nums SELECT i, 'v' || i FROM generate_series(1, 1200, 2) AS i;",
    )
    .await
    .expect("setup");
    let yaml = source_yaml(&db, &["public.nums"], "");
    let mut inspect = inspector(&yaml, &unique("p")).await;
    let tables = inspect.tables().await.expect("tables");
    let nums = &tables[0];
    let mut asked: Vec<Vec<String>> = (0..1200).map(|i| vec![i.to_string()]).collect();
    asked.extend(
        ["007", "abc", "1.5", "99999999999999999999", "", " 5"]
            .iter()
            .map(|s| vec![s.to_string()]),
    );
    let found = inspect.existing_keys(nums, &asked).await.expect("keys");
    let want: Vec<Vec<String>> = (1..1200).step_by(2).map(|i| vec![i.to_string()]).collect();
    assert_eq!(found, want);
    assert!(inspect
        .existing_keys(nums, &[])
        .await
        .expect("none")
        .is_empty());
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').expect("lsn");
    (u64::from_str_radix(hi, 16).expect("hi") << 32) | u64::from_str_radix(lo, 16).expect("lo")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_grows_with_writes_and_is_zero_at_the_current_position() {
    let db = TestDb::create("pgx_lag").await;
    let pg = db.client().await;
    pg.batch_execute("CREATE TABLE w (id int PRIMARY KEY, v text)")
        .await
        .expect("setup");
    let yaml = source_yaml(&db, &["public.w"], "");
    let mut inspect = inspector(&yaml, &unique("p")).await;
    let start = inspect
        .lag(&Position::new("0/0"))
        .await
        .expect("lag")
        .current_position
        .expect("current");
    let before = inspect
        .lag(&Position::new(start.clone()))
        .await
        .expect("lag");
    pg.batch_execute("INSERT INTO w SELECT i, repeat('x', 100) FROM generate_series(1, 2000) i")
        .await
        .expect("writes");
    // pg_current_wal_lsn() is the WAL written so far; with synchronous_commit = off (the test
    // server) the WAL writer catches up within wal_writer_delay
    let b0 = before.bytes.expect("bytes");
    let mut after = inspect
        .lag(&Position::new(start.clone()))
        .await
        .expect("lag");
    let deadline = Instant::now() + Duration::from_secs(10);
    while after.bytes.expect("bytes") < b0 + 200_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = inspect
            .lag(&Position::new(start.clone()))
            .await
            .expect("lag");
    }
    let b1 = after.bytes.expect("bytes");
    assert!(b1 >= b0 + 200_000, "lag {b0} → {b1} after 2000 rows");
    let current = after.current_position.expect("current");
    assert_eq!(
        b1,
        lsn(&current) - lsn(&start),
        "bytes = current − position"
    );

    // at the current position the lag is zero (once no one else writes in between)
    let mut zero = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut position = current;
    while !zero && Instant::now() < deadline {
        let lag = inspect
            .lag(&Position::new(position.clone()))
            .await
            .expect("lag");
        zero = lag.bytes == Some(0);
        position = lag.current_position.expect("current");
    }
    assert!(zero, "lag never reached 0");
    // a position ahead of the server is not negative lag
    let ahead = inspect.lag(&Position::new("FFFF/0")).await.expect("lag");
    assert_eq!(ahead.bytes, Some(0));
    assert!(inspect
        .lag(&Position::new("mysql-bin.000001:4"))
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_progress_and_source_retries_reach_the_telemetry() {
    let db = TestDb::create("pgx_progress").await;
    let pg = db.client().await;
    let table = unique("progress").to_lowercase();
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, v text);
         INSERT INTO {table} SELECT i, 'v' FROM generate_series(1, 2500) i;
         ANALYZE {table};"
    ))
    .await
    .expect("setup");
    let id = TableId::new("public", table.as_str());
    let include = format!("public.{table}");
    let run = SourceRun::start(
        &source_yaml(&db, &[include.as_str()], ""),
        &unique("p"),
        None,
    )
    .await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    run.stop().await;
    let progress = telemetry::get().snapshot_progress();
    let progress = progress.get(&id).expect("progress of the table");
    assert_eq!(progress.rows, 2500);
    assert_eq!(progress.estimated_rows, Some(2500));
    assert!(progress.done);
    let text = telemetry::get().render();
    assert!(
        text.contains(&format!(
            "etcdsync_snapshot_rows_total{{table=\"public.{table}\"}} 2500"
        )),
        "{text}"
    );

    // a source that finds its slot held by an earlier session of the same pipeline (a deposed
    // leader, DESIGN §7) ends that session and takes the slot over, counting each wait as a retry
    let retries = || {
        telemetry::get()
            .retries
            .with_label_values(&["source"])
            .get()
    };
    let yaml = source_yaml(&db, &[include.as_str()], "");
    let name = unique("p");
    let slot = format!("etcdsync_{name}");
    let first = SourceRun::start(&yaml, &name, None).await;
    first.wait_for("snapshot", WAIT, snapshot_done).await;
    let holder = || async {
        pg.query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&slot],
        )
        .await
        .ok()
        .flatten()
        .map(|r| r.get::<_, i32>(0))
    };
    assert!(
        eventually(WAIT, || async { holder().await.is_some() }).await,
        "the first run never streamed from its slot"
    );
    let first_holder = holder().await;
    let before = retries();
    let second =
        SourceRun::start_leading(&yaml, &name, etcdsync_core::leadership::Fence::new(1)).await;
    assert!(
        retries() > before,
        "no retry counted while the slot was taken over"
    );
    let error = first
        .join(WAIT)
        .await
        .expect_err("the earlier session's stream was ended");
    assert_eq!(error.kind(), etcdsync_core::ErrorKind::Transient, "{error}");
    second
        .wait_for("the snapshot on the taken-over slot", WAIT, snapshot_done)
        .await;
    assert!(
        eventually(WAIT, || async {
            holder().await.is_some_and(|pid| Some(pid) != first_holder)
        })
        .await,
        "the slot is not held by the new session"
    );
    second.stop().await;
}

/// A selected UNLOGGED table: no publication may list it, so `check` fails naming the fix, and
/// the selection lists only the logged tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_on_a_selected_unlogged_table() {
    let db = TestDb::create("pgx_check_unlogged").await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY); CREATE UNLOGGED TABLE u (id int PRIMARY KEY);",
        )
        .await
        .expect("setup");
    let results = inspector(&source_yaml(&db, &["public.*"], ""), &unique("p"))
        .await
        .check()
        .await;
    failed_with(
        &results,
        "unlogged tables",
        "ALTER TABLE \"public\".\"u\" SET LOGGED;",
    );
    let selection = named(&results, "table selection");
    assert!(
        selection.ok
            && selection.detail.contains("public.t")
            && !selection.detail.contains("public.u"),
        "{}",
        show(&results)
    );
    // With `manage_publication: false` etcdsync could not copy it once logged: `run` refuses.
    let yaml = source_yaml(&db, &["public.*"], "manage_publication: false\n");
    let err = build_error(&yaml, &unique("p"), "an unlogged table was accepted").await;
    assert!(
        err.contains("UNLOGGED") && err.contains("SET LOGGED"),
        "{err}"
    );
}

/// An unmanaged `FOR ALL TABLES` publication that lists a selected partitioned table only by its
/// partitions (not through the root): the fix `check` names is the publication's
/// `publish_via_partition_root`, not an `ADD TABLE` such a publication refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_all_tables_publication_missing_a_partitioned_table_names_the_root_fix() {
    let db = TestDb::create("pgx_check_alltables").await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE m (id int PRIMARY KEY, at int NOT NULL) PARTITION BY RANGE (id);
             CREATE TABLE m1 PARTITION OF m FOR VALUES FROM (0) TO (100);
             CREATE PUBLICATION everything FOR ALL TABLES;",
        )
        .await
        .expect("setup");
    let yaml = source_yaml(
        &db,
        &["public.m"],
        "manage_publication: false\npublication: everything\n",
    );
    let results = inspector(&yaml, &unique("p")).await.check().await;
    let publication = results
        .iter()
        .filter(|r| r.name == "publication everything" && !r.ok)
        .filter_map(|r| r.fix.as_deref())
        .collect::<Vec<_>>()
        .join(" | ");
    assert!(
        publication.contains("publish_via_partition_root = true")
            && !publication.contains("ADD TABLE"),
        "{}",
        show(&results)
    );
}
