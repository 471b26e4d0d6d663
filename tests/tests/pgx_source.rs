//! The `pgx` source against a real PostgreSQL (tools/testenv.sh), with an in-memory sink that
//! acknowledges every position: snapshot then stream, type parity, TRUNCATE, key changes,
//! TOAST-unchanged values, resume, idle advancement, rejected tables.
#![cfg(feature = "integration-tests")]

use etcdsync_core::encode::json::encode_row;
use etcdsync_core::{Message, Op, TableId};
use etcdsync_pgx as _;
use etcdsync_tests::pg::{apply, expected, source_yaml, unique, SourceRun, TestDb};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn snapshot_done(messages: &[Message]) -> bool {
    messages
        .iter()
        .any(|m| matches!(m, Message::SnapshotFinished { .. }))
}

fn commits(messages: &[Message]) -> usize {
    messages
        .iter()
        .filter(|m| matches!(m, Message::Commit(_)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_stream_composite_keys_truncate_and_key_change() {
    let db = TestDb::create("pgx_stream").await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TABLE items (id int, sub text, name text, PRIMARY KEY (id, sub));
         INSERT INTO items VALUES (1, 'a/b%c', 'slash and percent'), (2, 'x', 'two'), (3, 'é y', 'unicode');
         CREATE TABLE other (k text PRIMARY KEY, v int);
         INSERT INTO other VALUES ('k1', 1);",
    )
    .await
    .expect("setup");
    let name = unique("p");
    let run = SourceRun::start(
        &source_yaml(&db, &["public.*"], "snapshot_workers: 2\n"),
        &name,
        None,
    )
    .await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    let items = TableId::new("public", "items");
    let other = TableId::new("public", "other");
    {
        let messages = run.messages.lock().expect("lock").clone();
        let got = apply(&messages, "/t");
        let mut want = expected(&pg, "/t", &items, &["id", "sub"]).await;
        want.extend(expected(&pg, "/t", &other, &["k"]).await);
        assert_eq!(got, want);
        assert!(got.contains_key("/t/public/items/1/a%2Fb%25c"), "{got:?}");
        assert!(
            matches!(messages.first(), Some(Message::SnapshotStarted { tables }) if tables.len() == 2)
        );
    }

    pg.batch_execute("INSERT INTO items VALUES (4, 'q/r', 'four')")
        .await
        .expect("insert");
    pg.batch_execute("UPDATE items SET name = 'TWO' WHERE id = 2")
        .await
        .expect("update");
    pg.batch_execute("UPDATE items SET id = 10, sub = '%%' WHERE id = 1")
        .await
        .expect("key change");
    pg.batch_execute("DELETE FROM items WHERE id = 3")
        .await
        .expect("delete");
    pg.batch_execute(
        "BEGIN; INSERT INTO other VALUES ('k2', 2); UPDATE other SET v = 3 WHERE k = 'k1'; COMMIT",
    )
    .await
    .expect("txn");
    run.wait_for("5 commits", WAIT, |m| commits(m) >= 5).await;
    {
        let messages = run.messages.lock().expect("lock").clone();
        let got = apply(&messages, "/t");
        let mut want = expected(&pg, "/t", &items, &["id", "sub"]).await;
        want.extend(expected(&pg, "/t", &other, &["k"]).await);
        assert_eq!(got, want);
        // the key change carries the old key
        let key_change = messages.iter().find_map(|m| match m {
            Message::Changes(c) => c
                .iter()
                .find(|c| matches!(&c.op, Op::Update { old: Some(_), .. }))
                .cloned(),
            _ => None,
        });
        assert!(key_change.is_some(), "no update with the old key");
    }

    pg.batch_execute("TRUNCATE items").await.expect("truncate");
    pg.batch_execute("INSERT INTO items VALUES (7, 'after', 'truncate')")
        .await
        .expect("insert");
    run.wait_for("7 commits", WAIT, |m| commits(m) >= 7).await;
    let (messages, last) = run.stop().await;
    let got = apply(&messages, "/t");
    let mut want = expected(&pg, "/t", &items, &["id", "sub"]).await;
    want.extend(expected(&pg, "/t", &other, &["k"]).await);
    assert_eq!(got, want);
    assert!(messages
        .iter()
        .any(|m| matches!(m, Message::Changes(c) if c.iter().any(|c| c.op == Op::Truncate))));
    // the slot confirmed what the sink acknowledged
    let last = last.expect("an acknowledged position");
    let confirmed = db
        .confirmed_flush(&format!("etcdsync_{name}"))
        .await
        .expect("slot");
    let last = pgwire_lsn(last.as_str());
    assert!(
        confirmed >= last,
        "confirmed {confirmed:X} < acknowledged {last:X}"
    );
}

fn pgwire_lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').expect("lsn");
    (u64::from_str_radix(hi, 16).expect("hi") << 32) | u64::from_str_radix(lo, 16).expect("lo")
}

const TYPES_DDL: &str = "
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN email AS text;
CREATE TABLE typed (
  id int PRIMARY KEY,
  b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, f8nan float8, f8inf float8, f8ninf float8,
  n numeric(10,4), nbig numeric, t text, vc varchar(10), c char(3), by bytea, u uuid,
  j json, jb jsonb, d date, dinf date, dninf date, tm time, ts timestamp, tsinf timestamp,
  tz timestamptz, tzinf timestamptz, iv interval, ia int[], ta text[], a2 int[][], fa float8[],
  m mood, ma mood[], dom posint, em email, inet_ inet, money_ money, bits bit(4), tr int4range,
  x xml, oid_ oid, h hstore
)";

const TYPES_VALUES: &str = "
  true, -32768, 2147483647, -9223372036854775808, 1.1, 0.1, 'NaN', 'Infinity', '-Infinity',
  12.34, 123456789012345678901234567890.000000001, E'multi\\nline \"quoted\" \\\\ tab\\t', 'var', 'ab',
  '\\x00ff10'::bytea, 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '{\"b\": [1, 2.50], \"a\": \"x y\"}',
  '{\"b\": [1, 2.50], \"a\": \"x y\"}', '2024-02-29', 'infinity', '-infinity', '04:05:06.5',
  '2024-01-02 03:04:05.25', 'infinity', '2024-01-02 03:04:05.1+02', '-infinity',
  '1 year 2 months 3 days 04:05:06.5', '{1,NULL,3}', '{\"a b\",NULL,\"NULL\",\"c,d\",\"q\\\"x\"}',
  '{{1,2},{3,NULL}}', '{NaN,-Infinity,1.5}', 'happy', '{sad,ok}', 7, 'me@example.com',
  '10.0.0.1/8', 12.5, B'1010', '[1,5)', '<a>x</a>', 42, 'a=>1, \"b c\"=>NULL'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_stream_values_are_byte_identical() {
    let db = TestDb::create("pgx_types").await;
    let pg = db.client().await;
    pg.batch_execute(TYPES_DDL).await.expect("ddl");
    pg.batch_execute(&format!("INSERT INTO typed VALUES (1, {TYPES_VALUES})"))
        .await
        .expect("row 1");
    let name = unique("p");
    let run = SourceRun::start(&source_yaml(&db, &["public.typed"], ""), &name, None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    pg.batch_execute(&format!("INSERT INTO typed VALUES (2, {TYPES_VALUES})"))
        .await
        .expect("row 2");
    run.wait_for("commit", WAIT, |m| commits(m) >= 1).await;
    let (messages, _) = run.stop().await;
    let inserts: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            Message::Changes(c) => Some(c.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(inserts.len(), 2, "{inserts:#?}");
    let encode = |i: usize| {
        let Op::Insert { row } = &inserts[i].op else {
            panic!("not an insert")
        };
        let mut row = row.clone();
        row[0] = etcdsync_core::Value::Int(0);
        String::from_utf8(encode_row(&inserts[i].table, &row).expect("encode")).expect("utf8")
    };
    let (snapshot, stream) = (encode(0), encode(1));
    assert_eq!(snapshot, stream, "snapshot and stream differ");
    assert_eq!(inserts[0].table, inserts[1].table, "schemas differ");
    let expected = concat!(
        r#"{"id":0,"b":true,"i2":-32768,"i4":2147483647,"i8":-9223372036854775808,"f4":1.1,"f8":0.1,"#,
        r#""f8nan":"NaN","f8inf":"Infinity","f8ninf":"-Infinity","n":"12.3400","#,
        r#""nbig":"123456789012345678901234567890.000000001","t":"multi\nline \"quoted\" \\ tab\t","#,
        r#""vc":"var","c":"ab ","by":"AP8Q","u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","#,
        r#""j":{"b":[1,2.50],"a":"x y"},"jb":{"a":"x y","b":[1,2.50]},"d":"2024-02-29","dinf":"infinity","#,
        r#""dninf":"-infinity","tm":"04:05:06.5","ts":"2024-01-02T03:04:05.25","tsinf":"infinity","#,
        r#""tz":"2024-01-02T01:04:05.1Z","tzinf":"-infinity","iv":"P1Y2M3DT4H5M6.5S","ia":[1,null,3],"#,
        r#""ta":["a b",null,"NULL","c,d","q\"x"],"a2":[[1,2],[3,null]],"fa":["NaN","-Infinity",1.5],"#,
        r#""m":"happy","ma":["sad","ok"],"dom":7,"em":"me@example.com","inet_":"10.0.0.1/8","#,
        r#""money_":"$12.50","bits":"1010","tr":"[1,5)","x":"<a>x</a>","oid_":42,"h":"\"a\"=>\"1\", \"b c\"=>NULL"}"#
    );
    assert_eq!(snapshot, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toast_unchanged_value_is_marked_not_invented() {
    let db = TestDb::create("pgx_toast").await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;",
    )
    .await
    .expect("ddl");
    let name = unique("p");
    let run = SourceRun::start(&source_yaml(&db, &["public.docs"], ""), &name, None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    pg.batch_execute("INSERT INTO docs SELECT 1, string_agg(md5(g::text), '') , 0 FROM generate_series(1, 400) g")
        .await
        .expect("insert big");
    pg.batch_execute("UPDATE docs SET n = 1 WHERE id = 1")
        .await
        .expect("update");
    run.wait_for("2 commits", WAIT, |m| commits(m) >= 2).await;
    let (messages, _) = run.stop().await;
    let update = messages
        .iter()
        .filter_map(|m| match m {
            Message::Changes(c) => c
                .iter()
                .find(|c| matches!(c.op, Op::Update { .. }))
                .cloned(),
            _ => None,
        })
        .next()
        .expect("an update");
    let Op::Update { row, .. } = &update.op else {
        panic!()
    };
    assert_eq!(row[1], etcdsync_core::Value::Unchanged);
    assert_eq!(row[2], etcdsync_core::Value::Int(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_skips_applied_transactions_and_delivers_missed_ones() {
    let db = TestDb::create("pgx_resume").await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv VALUES (1, 'one')",
    )
    .await
    .expect("setup");
    let name = unique("p");
    let yaml = source_yaml(&db, &["public.kv"], "");
    let run = SourceRun::start(&yaml, &name, None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    pg.batch_execute("INSERT INTO kv VALUES (2, 'two')")
        .await
        .expect("insert");
    run.wait_for("commit", WAIT, |m| commits(m) >= 1).await;
    let (first, last) = run.stop().await;
    let last = last.expect("acknowledged");

    pg.batch_execute("INSERT INTO kv VALUES (3, 'three'); UPDATE kv SET v = 'ONE' WHERE k = 1")
        .await
        .expect("while down");
    let run = SourceRun::start(&yaml, &name, Some(last.clone())).await;
    // one simple query with two statements is one transaction
    run.wait_for("commit", WAIT, |m| commits(m) >= 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (second, _) = run.stop().await;
    assert!(
        !second
            .iter()
            .any(|m| matches!(m, Message::SnapshotStarted { .. })),
        "resumed with a snapshot"
    );
    let rows: Vec<_> = second
        .iter()
        .filter_map(|m| match m {
            Message::Changes(c) => Some(c.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(
        rows.len(),
        2,
        "exactly the two changes made while down: {rows:#?}"
    );
    let mut all = first;
    all.extend(second);
    let kv = TableId::new("public", "kv");
    assert_eq!(apply(&all, "/r"), expected(&pg, "/r", &kv, &["k"]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_resent_at_or_before_the_checkpoint_are_skipped() {
    let db = TestDb::create("pgx_skip").await;
    let pg = db.client().await;
    pg.batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v text)")
        .await
        .expect("setup");
    let name = unique("p");
    let yaml = source_yaml(&db, &["public.kv"], "");
    // a sink that never acknowledges: the slot keeps its consistent point
    let run = SourceRun::start_with(&yaml, &name, None, false).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    pg.batch_execute("INSERT INTO kv VALUES (1, 'a')")
        .await
        .expect("txn 1");
    pg.batch_execute("INSERT INTO kv VALUES (2, 'b')")
        .await
        .expect("txn 2");
    run.wait_for("2 commits", WAIT, |m| commits(m) >= 2).await;
    let (first, _) = run.stop().await;
    let positions: Vec<_> = first
        .iter()
        .filter_map(|m| match m {
            Message::Commit(c) => Some(c.position.clone()),
            _ => None,
        })
        .collect();
    // etcd holds txn 1 (its checkpoint); PostgreSQL re-sends both; only txn 2 may come out
    let run = SourceRun::start(&yaml, &name, Some(positions[0].clone())).await;
    run.wait_for("commit", WAIT, |m| commits(m) >= 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (second, _) = run.stop().await;
    let resent: Vec<_> = second
        .iter()
        .filter_map(|m| match m {
            Message::Commit(c) => Some(c.position.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(resent, vec![positions[1].clone()]);
    let kv = TableId::new("public", "kv");
    assert_eq!(
        apply(&second, "/q").keys().collect::<Vec<_>>(),
        vec!["/q/public/kv/2"]
    );
    let mut all = first;
    all.extend(second);
    assert_eq!(apply(&all, "/q"), expected(&pg, "/q", &kv, &["k"]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalives_advance_confirmed_flush() {
    let db = TestDb::create("pgx_idle").await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TABLE synced (k int PRIMARY KEY); CREATE TABLE noise (k int PRIMARY KEY)",
    )
    .await
    .expect("setup");
    let name = unique("p");
    let slot = format!("etcdsync_{name}");
    let run = SourceRun::start(&source_yaml(&db, &["public.synced"], ""), &name, None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    // traffic the publication does not carry
    pg.batch_execute("INSERT INTO noise SELECT generate_series(1, 1000)")
        .await
        .expect("noise");
    let target: i64 = pg
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8", &[])
        .await
        .expect("lsn")
        .get(0);
    let advanced = etcdsync_tests::pg::eventually(Duration::from_secs(40), || async {
        db.confirmed_flush(&slot)
            .await
            .is_some_and(|c| c >= target as u64)
    })
    .await;
    let (messages, _) = run.stop().await;
    assert!(advanced, "confirmed_flush_lsn did not reach {target:X}");
    assert!(
        messages
            .iter()
            .any(|m| matches!(m, Message::Heartbeat { .. })),
        "no heartbeat: {messages:?}"
    );
    assert_eq!(commits(&messages), 0, "filtered traffic produced commits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_a_key_is_left_out_until_it_has_one() {
    let db = TestDb::create("pgx_nokey").await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TABLE logs (id int NOT NULL, line text);
         INSERT INTO logs VALUES (1, 'a');
         CREATE TABLE items (id int PRIMARY KEY, label text);
         INSERT INTO items VALUES (1, 'one');",
    )
    .await
    .expect("setup");
    // The keyless table does not stop the others; once it has a key it is copied, then streamed.
    let yaml = source_yaml(&db, &["public.*"], "");
    let run = SourceRun::start(&yaml, &unique("p"), None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    let snapshot = apply(&run.messages.lock().expect("messages").clone(), "/k");
    assert!(
        snapshot.keys().any(|k| k.contains("/items/")),
        "{snapshot:?}"
    );
    assert!(
        !snapshot.keys().any(|k| k.contains("/logs/")),
        "{snapshot:?}"
    );
    pg.batch_execute("ALTER TABLE logs ADD PRIMARY KEY (id)")
        .await
        .expect("add a key");
    run.wait_for("the copy of logs", WAIT, |m| {
        apply(m, "/k").keys().any(|k| k.contains("/logs/1"))
    })
    .await;
    pg.batch_execute("INSERT INTO logs VALUES (2, 'b')")
        .await
        .expect("insert");
    run.wait_for("the streamed insert into logs", WAIT, |m| {
        apply(m, "/k").keys().any(|k| k.contains("/logs/2"))
    })
    .await;
    run.stop().await;

    // key_columns must be covered by a unique index on NOT NULL columns.
    pg.batch_execute(
        "CREATE TABLE events (at timestamptz NOT NULL, line text);
         ALTER TABLE events REPLICA IDENTITY FULL;",
    )
    .await
    .expect("events");
    let yaml = source_yaml(
        &db,
        &["public.events"],
        "key_columns: { \"public.events\": [line] }\n",
    );
    let config: Box<dyn etcdsync_core::source::SourceConfig> =
        serde_yaml::from_str(&yaml).expect("yaml");
    let refused = || async {
        match config
            .build(etcdsync_core::source::SourceContext {
                name: unique("p"),
                resume: None,
                fence: None,
                written_tables: Default::default(),
            })
            .await
        {
            Ok(_) => panic!("unusable key_columns were accepted"),
            Err(e) => e,
        }
    };
    let err = refused().await;
    let text = err.to_string();
    assert!(
        text.contains("source.key_columns.public.events")
            && text.contains("may be NULL")
            && text.contains("SET NOT NULL"),
        "{text}"
    );
    assert_eq!(err.kind(), etcdsync_core::ErrorKind::Config);
    pg.batch_execute("ALTER TABLE events ALTER COLUMN line SET NOT NULL")
        .await
        .expect("not null");
    let text = refused().await.to_string();
    assert!(
        text.contains("source.key_columns.public.events") && text.contains("CREATE UNIQUE INDEX"),
        "{text}"
    );

    // With a unique index on NOT NULL columns and REPLICA IDENTITY FULL the table is accepted
    // and deletes carry the key.
    pg.batch_execute(
        "CREATE UNIQUE INDEX ON events (line);
         INSERT INTO events VALUES ('2024-01-01', 'a')",
    )
    .await
    .expect("unique index");
    let run = SourceRun::start(&yaml, &unique("p"), None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    pg.batch_execute("DELETE FROM events WHERE line = 'a'")
        .await
        .expect("delete");
    run.wait_for("commit", WAIT, |m| commits(m) >= 1).await;
    let (messages, _) = run.stop().await;
    assert!(apply(&messages, "/k").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_table_while_running_updates_the_schema() {
    let db = TestDb::create("pgx_alter").await;
    let pg = db.client().await;
    pg.batch_execute("CREATE TABLE t (id int PRIMARY KEY, a text); INSERT INTO t VALUES (1, 'x')")
        .await
        .expect("setup");
    let name = unique("p");
    let run = SourceRun::start(&source_yaml(&db, &["public.t"], ""), &name, None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    pg.batch_execute("ALTER TABLE t ADD COLUMN b int DEFAULT 5; INSERT INTO t VALUES (2, 'y', 6)")
        .await
        .expect("add");
    pg.batch_execute("ALTER TABLE t DROP COLUMN a; UPDATE t SET b = 7 WHERE id = 1")
        .await
        .expect("drop");
    pg.batch_execute("ALTER TABLE t ALTER COLUMN b TYPE text; ALTER TABLE t RENAME COLUMN id TO ident; INSERT INTO t VALUES (3, 'z')")
        .await
        .expect("type change and key rename");
    // Columns added, dropped, retyped and renamed change the shape of rows no change rewrites:
    // the table is copied again, so every row ends in the current shape under the current key.
    let t = TableId::new("public", "t");
    let want = expected(&pg, "/a", &t, &["ident"]).await;
    run.wait_for("every row in the table's current shape", WAIT, |m| {
        let got = apply(m, "/a");
        want.iter().all(|(k, v)| got.get(k) == Some(v))
    })
    .await;
    let (messages, _) = run.stop().await;
    let got = apply(&messages, "/a");
    assert_eq!(
        got.get("/a/public/t/3").map(String::as_str),
        Some(r#"{"ident":3,"b":"z"}"#)
    );
    assert_eq!(
        got.get("/a/public/t/1").map(String::as_str),
        Some(r#"{"ident":1,"b":"7"}"#)
    );
    assert!(
        messages
            .iter()
            .filter(|m| matches!(m, Message::SnapshotStarted { .. }))
            .count()
            >= 2,
        "no copy after the columns changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_exclude_and_excluded_columns() {
    let db = TestDb::create("pgx_select").await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE SCHEMA app; CREATE SCHEMA other;
         CREATE TABLE app.users (id int PRIMARY KEY, name text, password text);
         CREATE TABLE app.audit_log (id int PRIMARY KEY);
         CREATE TABLE other.things (id int PRIMARY KEY, v text);
         CREATE TABLE public.ignored (id int PRIMARY KEY);
         INSERT INTO app.users VALUES (1, 'ann', 'secret'); INSERT INTO app.audit_log VALUES (1);
         INSERT INTO other.things VALUES (1, 'x'); INSERT INTO public.ignored VALUES (1);",
    )
    .await
    .expect("setup");
    let name = unique("p");
    let yaml = source_yaml(&db, &["app.*", "other.th*"], "")
        .replace("  include:", "  exclude: [\"app.audit_*\"]\n  exclude_columns: { \"app.users\": [password] }\n  include:");
    let run = SourceRun::start(&yaml, &name, None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    pg.batch_execute(
        "INSERT INTO app.users VALUES (2, 'bob', 'pw'); INSERT INTO app.audit_log VALUES (2);
         INSERT INTO public.ignored VALUES (2); UPDATE other.things SET v = 'y'",
    )
    .await
    .expect("changes");
    run.wait_for("commit", WAIT, |m| commits(m) >= 1).await;
    let (messages, _) = run.stop().await;
    let got = apply(&messages, "/s");
    let want: std::collections::BTreeMap<String, String> = [
        ("/s/app/users/1", r#"{"id":1,"name":"ann"}"#),
        ("/s/app/users/2", r#"{"id":2,"name":"bob"}"#),
        ("/s/other/things/1", r#"{"id":1,"v":"y"}"#),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(got, want);
    let Some(Message::SnapshotStarted { tables }) = messages.first() else {
        panic!("no SnapshotStarted")
    };
    assert_eq!(
        tables,
        &vec![
            TableId::new("app", "users"),
            TableId::new("other", "things")
        ]
    );
    // the publication covers exactly the selected tables
    let published: Vec<String> = pg
        .query("SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1", &[&format!("etcdsync_{name}")])
        .await
        .expect("publication")
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(published, vec!["app.users", "other.things"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_streams_in_bounded_chunks() {
    let db = TestDb::create("pgx_big").await;
    let pg = db.client().await;
    pg.batch_execute("CREATE TABLE big (id int PRIMARY KEY, v text)")
        .await
        .expect("setup");
    let name = unique("p");
    let run = SourceRun::start(&source_yaml(&db, &["public.big"], ""), &name, None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    pg.batch_execute("INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, 100000) g")
        .await
        .expect("big txn");
    run.wait_for("commit", Duration::from_secs(120), |m| commits(m) >= 1)
        .await;
    let (messages, _) = run.stop().await;
    let sizes: Vec<usize> = messages
        .iter()
        .filter_map(|m| match m {
            Message::Changes(c) => Some(c.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), 100_000);
    assert!(
        sizes
            .iter()
            .all(|&n| n <= etcdsync_core::pipeline::CHANGES_PER_MESSAGE),
        "a chunk over the limit"
    );
    assert_eq!(commits(&messages), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_replication_connection_is_a_transient_error() {
    let db = TestDb::create("pgx_lost").await;
    let pg = db.client().await;
    pg.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("setup");
    let name = unique("p");
    let config: Box<dyn etcdsync_core::source::SourceConfig> =
        serde_yaml::from_str(&source_yaml(&db, &["public.t"], "snapshot: never\n")).expect("yaml");
    let source = config
        .build(etcdsync_core::source::SourceContext {
            name: name.clone(),
            resume: None,
            fence: None,
            written_tables: Default::default(),
        })
        .await
        .expect("build");
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let (_ack_tx, ack_rx) = tokio::sync::watch::channel(None);
    let io = etcdsync_core::source::SourceIo {
        output: tx,
        acked: ack_rx,
        shutdown: tokio_util::sync::CancellationToken::new(),
    };
    let task = tokio::spawn(source.run(io));
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let slot = format!("etcdsync_{name}");
    let terminated = etcdsync_tests::pg::eventually(WAIT, || async {
        pg.query_one(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&slot],
        )
        .await
        .map(|r| r.get::<_, i64>(0) > 0)
        .unwrap_or(false)
    })
    .await;
    assert!(terminated, "walsender never became active");
    let result = tokio::time::timeout(WAIT, task)
        .await
        .expect("source ended")
        .expect("no panic");
    let err = result.expect_err("a lost connection must fail the source");
    assert!(err.is_transient(), "{err} is {:?}", err.kind());
}

fn snapshots_finished(messages: &[Message]) -> usize {
    messages
        .iter()
        .filter(|m| matches!(m, Message::SnapshotFinished { .. }))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_created_later_are_copied_then_streamed() {
    let db = TestDb::create("pgx_newtable").await;
    let pg = db.client().await;
    pg.batch_execute("CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a VALUES (1, 'a1')")
        .await
        .expect("setup");
    let name = unique("p");
    let yaml = source_yaml(&db, &["public.*"], "");
    let run = SourceRun::start(&yaml, &name, None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    // rows written before etcdsync notices the table must arrive too
    pg.batch_execute("CREATE TABLE b (id int PRIMARY KEY, v text); INSERT INTO b SELECT g, 'b' || g FROM generate_series(1, 500) g")
        .await
        .expect("new table");
    pg.batch_execute("UPDATE b SET v = 'early' WHERE id = 1; INSERT INTO a VALUES (2, 'a2')")
        .await
        .expect("early");
    run.wait_for("the copy of b", WAIT, |m| snapshots_finished(m) >= 2)
        .await;
    pg.batch_execute("UPDATE b SET v = 'late' WHERE id = 2; DELETE FROM b WHERE id = 3")
        .await
        .expect("late");
    run.wait_for("commit after the copy", WAIT, |m| {
        let copied = m
            .iter()
            .rposition(|x| matches!(x, Message::SnapshotFinished { .. }))
            .unwrap_or(0);
        m[copied..].iter().any(|x| matches!(x, Message::Commit(_)))
    })
    .await;
    let (first, last) = run.stop().await;
    let (ta, tb, tc) = (
        TableId::new("public", "a"),
        TableId::new("public", "b"),
        TableId::new("public", "c"),
    );
    let mut want = expected(&pg, "/n", &ta, &["id"]).await;
    want.extend(expected(&pg, "/n", &tb, &["id"]).await);
    assert_eq!(apply(&first, "/n"), want);
    let published: Vec<String> = pg
        .query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1",
            &[&format!("etcdsync_{name}")],
        )
        .await
        .expect("publication")
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        published,
        vec!["a", "b"],
        "b was not moved into the publication"
    );

    // a table created while etcdsync is down is copied when it resumes
    pg.batch_execute("CREATE TABLE c (id int PRIMARY KEY); INSERT INTO c VALUES (1), (2); INSERT INTO a VALUES (3, 'a3')")
        .await
        .expect("while down");
    let run = SourceRun::start(&yaml, &name, last).await;
    run.wait_for("the copy of c", WAIT, |m| snapshots_finished(m) >= 1)
        .await;
    pg.batch_execute("INSERT INTO c VALUES (3)")
        .await
        .expect("after");
    run.wait_for("commits", WAIT, |m| commits(m) >= 2).await;
    let (second, _) = run.stop().await;
    let mut all = first;
    all.extend(second);
    let mut want = expected(&pg, "/n", &ta, &["id"]).await;
    want.extend(expected(&pg, "/n", &tb, &["id"]).await);
    want.extend(expected(&pg, "/n", &tc, &["id"]).await);
    assert_eq!(apply(&all, "/n"), want);
}
