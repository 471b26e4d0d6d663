//! PostgreSQL at the edges (issue 11) with the real `etcdsync` binary, PostgreSQL and etcd: each
//! scenario ends with etcd equal to the tables and `etcdsync verify` clean.
#![cfg(feature = "integration-tests")]

mod common;

use common::*;
use std::path::PathBuf;
use std::time::Duration;

/// A table-rewriting `ALTER` on a table the snapshot has not copied yet waits for the snapshot
/// (it holds `ACCESS SHARE` on every table, as pg_dump does) instead of making the table look
/// empty to the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_during_the_snapshot_waits_and_loses_nothing() {
    let pipe = Pipe::new("rewr").await;
    pipe.sql(
        "CREATE TABLE a (id int PRIMARY KEY, v text);
         INSERT INTO a SELECT g, repeat('a', 50) FROM generate_series(1, 30000) g;
         CREATE TABLE b (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO b SELECT g, g FROM generate_series(1, 500) g;",
    )
    .await;
    // One worker copies `a` then `b`; small, sequential etcd transactions keep `a` busy.
    let config = pipe.config(
        "rewr.yaml",
        Parts {
            include: "\"public.a\", \"public.b\"",
            source_extra: "  snapshot_workers: 1\n",
            sink_extra: "  max_txn_ops: 8\n  snapshot_txns_in_flight: 1\n",
            ..Parts::default()
        },
    );
    let run = Run::start(&config, &[]);
    let copying_a = etcdsync_tests::pg::eventually(WAIT, || async {
        let a = pipe.etcd_table("a").await.len();
        a > 100 && a < 20000
    })
    .await;
    assert!(
        copying_a,
        "never saw the copy of `a` under way: {}",
        run.stderr()
    );
    assert!(
        pipe.etcd_table("b").await.is_empty(),
        "`b` was copied first"
    );
    // int → bigint rewrites the table; its values stay the same JSON numbers.
    let url = pipe.db.url.clone();
    let alter = tokio::spawn(async move {
        etcdsync_tests::pg::connect(&url)
            .await
            .batch_execute("ALTER TABLE b ALTER COLUMN v TYPE bigint")
            .await
            .expect("ALTER TABLE b");
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still_copying = pipe.etcd_table("a").await.len() < 30_000;
    assert!(
        !still_copying || !alter.is_finished(),
        "the rewrite did not wait for the snapshot's lock"
    );
    pipe.wait_synced("a", "snapshot of a").await;
    pipe.wait_synced("b", "snapshot of b").await;
    tokio::time::timeout(WAIT, alter)
        .await
        .expect("the ALTER ran after the snapshot")
        .expect("join");
    pipe.sql("UPDATE b SET v = v + 1 WHERE id <= 10").await;
    pipe.wait_synced("b", "after the rewrite").await;
    assert_verify_clean(&config).await;
}

/// Someone changes the managed publication while the pipeline runs — leaves out deletes, adds a
/// row filter, drops the table from it: each is repaired at the next table refresh and the table
/// is copied again, so the changes it filtered out meanwhile reach etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publication_drift_is_repaired_and_the_table_copied_again() {
    let pipe = Pipe::new("pubdr").await;
    pipe.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO t SELECT g, g FROM generate_series(1, 200) g;",
    )
    .await;
    let config = pipe.config(
        "pubdr.yaml",
        Parts {
            include: "\"public.t\"",
            source_extra: "  table_refresh_interval: 1s\n",
            ..Parts::default()
        },
    );
    let run = Run::start(&config, &[]);
    pipe.wait_synced("t", "snapshot").await;
    let publication = pipe.slot();
    for (drift, change) in [
        (
            format!("ALTER PUBLICATION {publication} SET (publish = 'insert')"),
            "DELETE FROM t WHERE id <= 10; UPDATE t SET v = 0 WHERE id = 20",
        ),
        (
            format!("ALTER PUBLICATION {publication} SET TABLE t WHERE (id > 100)"),
            "UPDATE t SET v = -1 WHERE id BETWEEN 30 AND 40",
        ),
        (
            format!("ALTER PUBLICATION {publication} DROP TABLE t"),
            "DELETE FROM t WHERE id BETWEEN 50 AND 60",
        ),
    ] {
        // The repair of the previous drift copies the table again, out of the publication
        // until the copy is done: drift only the repaired publication.
        let client = pipe.db.client().await;
        let published = etcdsync_tests::pg::eventually(WAIT, || async {
            client
                .query_opt(
                    "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND tablename = 't'",
                    &[&publication],
                )
                .await
                .ok()
                .flatten()
                .is_some()
        })
        .await;
        assert!(
            published,
            "t never came back into the publication: {}",
            run.stderr()
        );
        pipe.sql(&drift).await;
        pipe.sql(change).await;
        pipe.wait_synced("t", &drift).await;
    }
    let flags = pipe
        .db
        .client()
        .await
        .query_one(
            "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .expect("publication flags");
    assert!(flags.get::<_, bool>(0), "publish flags not repaired");
    assert!(run.stderr().contains("repairing it"), "{}", run.stderr());
    assert_verify_clean(&config).await;
}

/// With `manage_publication: false` a publication that would lose changes stops `run` and fails
/// `check`, both naming the statement that fixes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmanaged_publication_that_would_lose_changes_is_refused() {
    let pipe = Pipe::new("pubun").await;
    let publication = format!("pub_{}", pipe.slot());
    pipe.sql(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
         CREATE PUBLICATION {publication} FOR TABLE t WITH (publish = 'insert, update');"
    ))
    .await;
    let config = pipe.config(
        "pubun.yaml",
        Parts {
            include: "\"public.t\"",
            source_extra: &format!("  manage_publication: false\n  publication: {publication}\n"),
            ..Parts::default()
        },
    );
    let output = etcdsync(&["run", "-c", path(&config)], &[]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("does not publish delete, truncate")
            && stderr.contains("SET (publish = 'insert, update, delete, truncate')"),
        "{}",
        text(&output)
    );
    let output = etcdsync(&["check", "-c", path(&config)], &[]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("does not publish delete, truncate"),
        "{}",
        text(&output)
    );

    // Flags fixed, but a selected table the publication does not list: its changes would never
    // arrive, so `run` refuses before copying anything, as `check` does.
    pipe.sql(&format!(
        "ALTER PUBLICATION {publication} SET (publish = 'insert, update, delete, truncate');
         CREATE TABLE u (id int PRIMARY KEY);"
    ))
    .await;
    let config = pipe.config(
        "pubun-all.yaml",
        Parts {
            include: "\"public.*\"",
            source_extra: &format!("  manage_publication: false\n  publication: {publication}\n"),
            ..Parts::default()
        },
    );
    let output = etcdsync(&["run", "-c", path(&config)], &[]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let fix = format!(r#"ALTER PUBLICATION "{publication}" ADD TABLE "public"."u""#);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(&fix),
        "{}",
        text(&output)
    );
    assert!(
        pipe.etcd_data().await.is_empty(),
        "run copied rows before refusing"
    );
    let output = etcdsync(&["check", "-c", path(&config)], &[]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(&fix),
        "{}",
        text(&output)
    );
}

/// With `manage_publication: false` a rename is not followed: `run` stops naming the table and
/// the fix, and the fix (start again, `verify --repair`) leaves etcd equal to the tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmanaged_publication_stops_at_a_rename_with_a_fix_that_works() {
    let pipe = Pipe::new("pubrn").await;
    let publication = format!("pub_{}", pipe.slot());
    pipe.sql(&format!(
        "CREATE TABLE t2 (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO t2 SELECT g, g FROM generate_series(1, 10) g;
         CREATE PUBLICATION {publication} FOR TABLE t2;"
    ))
    .await;
    let config = pipe.config(
        "pubrn.yaml",
        Parts {
            source_extra: &format!(
                "  manage_publication: false\n  publication: {publication}\n  table_refresh_interval: 1s\n"
            ),
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &[]);
    pipe.wait_synced("t2", "snapshot").await;
    pipe.sql("ALTER TABLE t2 RENAME TO t3; INSERT INTO t3 VALUES (11, 11);")
        .await;
    let status = run.wait(WAIT).await;
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{}", run.stderr());
    assert!(
        run.stderr().contains("public.t2 was renamed or dropped")
            && run.stderr().contains("verify --repair"),
        "{}",
        run.stderr()
    );

    // The fix the error names: repair while stopped, then start again; the replay of the changes
    // from before the rename goes under the new name.
    let output = etcdsync(
        &[
            "verify",
            "-c",
            path(&config),
            "--repair",
            "--delete-unselected",
        ],
        &[],
    )
    .await;
    // The insert after the rename may have been streamed (under the old or the new name) before
    // the refresh noticed the rename, or not at all: the repair copies t3 and deletes t2 either way.
    let report = text(&output);
    let counted = |label: &str| {
        report
            .lines()
            .find_map(|line| line.strip_prefix(label))
            .and_then(|n| n.trim().parse::<u32>().ok())
    };
    assert!(
        output.status.success()
            && matches!(counted("missing:"), Some(10 | 11))
            && matches!(counted("extra:"), Some(10 | 11)),
        "{report}"
    );
    assert_verify_clean(&config).await;
    let mut run = Run::start(&config, &[]);
    pipe.sql("INSERT INTO t3 VALUES (12, 12); UPDATE t3 SET v = v + 1;")
        .await;
    pipe.wait_synced("t3", "after the restart").await;
    assert!(pipe.etcd_table("t2").await.is_empty());
    assert_verify_clean(&config).await;
    assert!(run.still_running(), "{}", run.stderr());
}

/// An update that leaves a TOASTed column alone sends it as "unchanged"; with REPLICA IDENTITY
/// FULL the old tuple carries it, so it fills the value even when etcd holds no stored row (here
/// `snapshot: never`: the row was never copied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_is_filled_from_the_full_old_tuple() {
    let setup = format!("{}ALTER TABLE t REPLICA IDENTITY FULL;", toast_sql("t", 20));
    let (pipe, config, _run) = never_copied("toastf", "t", &setup, "").await;
    pipe.sql("UPDATE t SET v = v + 1").await;
    pipe.wait_synced("t", "updates with unchanged TOAST").await;
    assert_verify_clean(&config).await;
}

/// Creates `public.{name}` with `rows` rows `(id, v)`.
fn table_sql(name: &str, rows: i64) -> String {
    format!(
        "CREATE TABLE {name} (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO {name} SELECT g, '{name} ' || g FROM generate_series(1, {rows}) g;"
    )
}

/// The key of the tables [`table_sql`] and [`toast_sql`] create.
const ID: &[&str] = &["id"];

/// Creates `public.{name}` `(id, v, big)` with `big` stored out of line and `rows` rows.
fn toast_sql(name: &str, rows: i64) -> String {
    format!(
        "CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL, big text);
         ALTER TABLE {name} ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO {name} SELECT g, g, repeat(md5(g::text), 100) FROM generate_series(1, {rows}) g;"
    )
}

/// A pipeline `tag` on `public.{table}` (created by `setup`) that never copies it (`snapshot:
/// never`, then `source_extra`), started and streaming.
async fn never_copied(
    tag: &str,
    table: &str,
    setup: &str,
    source_extra: &str,
) -> (Pipe, PathBuf, Run) {
    let pipe = Pipe::new(tag).await;
    pipe.sql(setup).await;
    let config = pipe.config(
        &format!("{tag}.yaml"),
        Parts {
            include: &format!("\"public.{table}\""),
            source_extra: &format!("  snapshot: never\n{source_extra}"),
            ..Parts::default()
        },
    );
    let run = Run::start(&config, &[]);
    pipe.wait_streaming(&run).await;
    (pipe, config, run)
}

/// Table identity is the OID (DESIGN §2): renamed within the selection, the keys move; renamed
/// out of it or dropped, they go; renamed into it, it is copied; dropped and created again under
/// the same name, the new table's rows replace the old ones — all while running, and again for
/// a rename and a drop that happen while etcdsync is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renames_and_drops_follow_the_table_identity() {
    let pipe = Pipe::new("ident").await;
    let mut setup = String::new();
    for (name, rows) in [
        ("keep_a", 30),
        ("keep_c", 20),
        ("other_d", 25),
        ("keep_e", 10),
        ("keep_f", 15),
        ("keep_g", 12),
        ("keep_h", 8),
    ] {
        setup.push_str(&table_sql(name, rows));
    }
    pipe.sql(&setup).await;
    let config = pipe.config(
        "ident.yaml",
        Parts {
            include: "\"public.keep_*\"",
            source_extra: "  table_refresh_interval: 1s\n",
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &[]);
    pipe.wait_exactly(
        &run,
        &[
            ("keep_a", ID),
            ("keep_c", ID),
            ("keep_e", ID),
            ("keep_f", ID),
            ("keep_g", ID),
            ("keep_h", ID),
        ],
        "snapshot",
    )
    .await;

    pipe.sql(
        "ALTER TABLE keep_a RENAME TO keep_b;
         UPDATE keep_b SET v = 'after the rename' WHERE id = 1;
         ALTER TABLE keep_c RENAME TO other_c;
         ALTER TABLE other_d RENAME TO keep_d;
         DROP TABLE keep_e;
         DROP TABLE keep_f;
         CREATE TABLE keep_f (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO keep_f VALUES (100, 'recreated');",
    )
    .await;
    let renamed: &[(&str, &[&str])] = &[
        ("keep_b", ID),
        ("keep_d", ID),
        ("keep_f", ID),
        ("keep_g", ID),
        ("keep_h", ID),
    ];
    pipe.wait_exactly(&run, renamed, "after renames and drops while running")
        .await;
    pipe.sql("INSERT INTO keep_b VALUES (1000, 'streamed under the new name'); INSERT INTO keep_f VALUES (101, 'x');")
        .await;
    pipe.wait_exactly(&run, renamed, "streaming after them")
        .await;
    assert_verify_clean(&config).await;

    // While stopped.
    run.stop().await;
    pipe.sql("ALTER TABLE keep_g RENAME TO keep_g2; DROP TABLE keep_h;")
        .await;
    let run = Run::start(&config, &[]);
    pipe.wait_exactly(
        &run,
        &[
            ("keep_b", ID),
            ("keep_d", ID),
            ("keep_f", ID),
            ("keep_g2", ID),
        ],
        "after a rename and a drop while stopped",
    )
    .await;
    assert_verify_clean(&config).await;
}

/// Without a stored value to fill an unchanged TOASTed column from — the column was renamed
/// since the row was stored, or the row was never copied (`snapshot: never`) — the sink reads the
/// row from PostgreSQL by its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_without_a_stored_value_is_read_from_postgres() {
    let pipe = Pipe::new("toastr").await;
    pipe.sql(&format!("{}{}", toast_sql("t", 20), toast_sql("n", 0)))
        .await;
    let config = pipe.config(
        "toastr.yaml",
        Parts {
            include: "\"public.t\"",
            ..Parts::default()
        },
    );
    let run = Run::start(&config, &[]);
    pipe.wait_synced("t", "snapshot").await;
    pipe.sql("ALTER TABLE t RENAME COLUMN big TO huge; UPDATE t SET v = v + 1 WHERE id <= 5;")
        .await;
    pipe.wait_synced("t", "update after RENAME COLUMN").await;
    assert_verify_clean(&config).await;
    drop(run);

    // A row never copied: `snapshot: never`, and no REPLICA IDENTITY FULL.
    let (pipe, config, _run) = never_copied("toastn", "n", &toast_sql("n", 10), "").await;
    pipe.sql("UPDATE n SET v = v + 1").await;
    pipe.wait_synced("n", "updates of rows never copied").await;
    assert_verify_clean(&config).await;
}

/// An update that left a TOASTed column unchanged, committed together with the column's drop:
/// etcd has no value to fill it from (`snapshot: never`) and the source's row no longer has the
/// column when the sink reads it. The put is left out and the column change copies the table
/// again — no stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_of_a_column_dropped_since_is_left_to_the_copy() {
    let (pipe, config, mut run) = never_copied(
        "toastdrop",
        "n",
        &toast_sql("n", 10),
        "  table_refresh_interval: 1s\n",
    )
    .await;
    // One implicit transaction: the update and the drop commit together.
    pipe.sql("UPDATE n SET v = v + 1 WHERE id <= 3; ALTER TABLE n DROP COLUMN big;")
        .await;
    pipe.wait_synced("n", "after the update and the dropped column")
        .await;
    assert!(run.still_running(), "{}", run.stderr());
    assert_verify_clean(&config).await;
}

/// A primary-key value stored out of line (over ~2 kB, not compressible): PostgreSQL 15 logs the
/// old key of an update whole when it is stored so, which gives the unchanged key value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toasted_primary_key_value_is_followed() {
    let pipe = Pipe::new("toastk").await;
    pipe.sql(
        "CREATE TABLE k (id text PRIMARY KEY, v int NOT NULL);
         ALTER TABLE k ALTER COLUMN id SET STORAGE EXTERNAL;
         INSERT INTO k SELECT string_agg(md5(g::text || s::text), '') , s
           FROM generate_series(1, 3) s, generate_series(1, 78) g GROUP BY s;",
    )
    .await;
    let config = pipe.config(
        "toastk.yaml",
        Parts {
            include: "\"public.k\"",
            ..Parts::default()
        },
    );
    let run = Run::start(&config, &[]);
    let synced = |rows: usize| {
        let pipe = &pipe;
        async move {
            let expected = pipe.expected("k").await;
            expected.len() == rows && pipe.etcd_table("k").await == expected
        }
    };
    assert!(
        etcdsync_tests::pg::eventually(WAIT, || synced(3)).await,
        "snapshot: {}",
        run.stderr()
    );
    pipe.sql("UPDATE k SET v = v + 10; DELETE FROM k WHERE v = 13;")
        .await;
    let followed = etcdsync_tests::pg::eventually(WAIT, || synced(2)).await;
    assert!(followed, "updates keeping a TOASTed key: {}", run.stderr());
    assert_verify_clean(&config).await;
}

/// A transform that reads a TOASTed column (here a filter on it) sees its value, not "unchanged":
/// updates that leave it alone have it read from PostgreSQL before the transforms run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transforms_see_toasted_columns_of_updates() {
    let pipe = Pipe::new("toastx").await;
    pipe.sql(&format!(
        "{}UPDATE t SET big = NULL WHERE id > 15;",
        toast_sql("t", 20)
    ))
    .await;
    let config = pipe.config(
        "toastx.yaml",
        Parts {
            include: "\"public.t\"",
            transforms: "transforms:\n  - { type: filter, tables: [\"public.t\"], when: [{ column: big, op: not_null }] }\n",
            ..Parts::default()
        },
    );
    let run = Run::start(&config, &[]);
    let kept = |n: usize| {
        let pipe = &pipe;
        async move { pipe.etcd_table("t").await.len() == n }
    };
    assert!(
        etcdsync_tests::pg::eventually(WAIT, || kept(15)).await,
        "snapshot through the filter: {}",
        run.stderr()
    );
    pipe.sql("UPDATE t SET v = v + 100").await;
    let expected = pipe.expected("t").await;
    let updated = etcdsync_tests::pg::eventually(WAIT, || async {
        let have = pipe.etcd_table("t").await;
        have.len() == 15 && have.iter().all(|(k, v)| expected.get(k) == Some(v))
    })
    .await;
    assert!(
        updated,
        "updates leaving the TOASTed column alone: {}",
        run.stderr()
    );
    assert_verify_clean(&config).await;
    drop(run);

    // Rows updated (one to a new key) and deleted while stopped: at the replay PostgreSQL no
    // longer has them, so the filter cannot be given their value; the deletes that follow remove
    // them and nothing stalls.
    pipe.sql(
        "UPDATE t SET v = v + 1 WHERE id <= 3;
         UPDATE t SET id = id + 1000 WHERE id = 4;
         DELETE FROM t WHERE id <= 3 OR id = 1004;",
    )
    .await;
    let run = Run::start(&config, &[]);
    let expected = pipe.expected("t").await;
    let replayed = etcdsync_tests::pg::eventually(WAIT, || async {
        let have = pipe.etcd_table("t").await;
        have.len() == 11 && have.iter().all(|(k, v)| expected.get(k) == Some(v))
    })
    .await;
    assert!(
        replayed,
        "updates of rows gone at the source: {}",
        run.stderr()
    );
    assert_verify_clean(&config).await;
}

/// Columns changed with no row change after them — added, renamed, or dropped and added again
/// under the same name and type (told apart by its new `attnum`) — while running and while
/// etcdsync is stopped: the copied columns are kept with the table registry, so the refresh or
/// the next start notices and copies the table again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_changed_while_stopped_are_noticed_at_start() {
    let pipe = Pipe::new("colstop").await;
    pipe.sql(&table_sql("keep_t", 25)).await;
    let config = pipe.config(
        "colstop.yaml",
        Parts {
            include: "\"public.keep_*\"",
            source_extra: "  table_refresh_interval: 1s\n",
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &[]);
    pipe.wait_synced("keep_t", "snapshot").await;
    let reset = |column: &str, to: &str| {
        format!("ALTER TABLE keep_t DROP COLUMN {column}; ALTER TABLE keep_t ADD COLUMN {column} text NOT NULL DEFAULT '{to}';")
    };
    pipe.sql(&reset("v", "reset while running")).await;
    pipe.wait_synced(
        "keep_t",
        "after a column was dropped and added again while running",
    )
    .await;
    // Let the registry (written once etcd holds the copy) settle, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.stop().await;
    pipe.sql(&format!(
        "{} ALTER TABLE keep_t ADD COLUMN extra int DEFAULT 7; ALTER TABLE keep_t RENAME COLUMN v TO label;",
        reset("v", "reset while stopped")
    ))
    .await;
    let mut run = Run::start(&config, &[]);
    pipe.wait_synced("keep_t", "after column changes while stopped")
        .await;
    assert!(
        run.stderr().contains("copying it again"),
        "{}",
        run.stderr()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.stop().await;
    // Only a drop and add of the same column, name and type unchanged.
    pipe.sql(&reset("label", "reset again while stopped")).await;
    let run = Run::start(&config, &[]);
    pipe.wait_synced(
        "keep_t",
        "after a column was dropped and added again while stopped",
    )
    .await;
    assert!(
        run.stderr().contains("copying it again"),
        "{}",
        run.stderr()
    );
    assert_verify_clean(&config).await;
}

/// A column no longer excluded (`exclude_columns` changed between runs) is in every row after the
/// restart: the registry keeps the synced columns, so the table is copied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_no_longer_excluded_is_copied_in() {
    let pipe = Pipe::new("exclch").await;
    pipe.sql(&table_sql("keep_x", 15)).await;
    let excluded = pipe.config(
        "excluded.yaml",
        Parts {
            include: "\"public.keep_*\"",
            source_extra:
                "    exclude_columns: { \"public.keep_x\": [v] }\n  table_refresh_interval: 1s\n",
            ..Parts::default()
        },
    );
    let mut run = Run::start(&excluded, &[]);
    let copied = etcdsync_tests::pg::eventually(WAIT, || async {
        pipe.etcd_table("keep_x").await.len() == 15
    })
    .await;
    assert!(copied, "{}", run.stderr());
    assert_verify_clean(&excluded).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.stop().await;

    let whole = pipe.config(
        "whole.yaml",
        Parts {
            include: "\"public.keep_*\"",
            source_extra: "  table_refresh_interval: 1s\n",
            ..Parts::default()
        },
    );
    let run = Run::start(&whole, &[]);
    pipe.wait_synced("keep_x", "after the exclusion was removed")
        .await;
    assert!(
        run.stderr().contains("copying it again"),
        "{}",
        run.stderr()
    );
    assert_verify_clean(&whole).await;
}
