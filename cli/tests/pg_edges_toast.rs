//! Unchanged TOASTed columns without a usable stored value (issue 11 §3) with the real `etcdsync`
//! binary, PostgreSQL and etcd: after `ALTER COLUMN … TYPE`, after `on_oversize: skip` skipped the
//! row, when a filter lets a row in by an update, and when a key template or value uses the
//! column. Each ends with etcd equal to the tables, `etcdsync verify` clean and the pipeline running.
#![cfg(feature = "integration-tests")]

mod common;

use common::*;
use etcdsync_tests::pg::eventually;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `big_text(seed, n)`: `n` concatenated md5 digests (32 × n bytes) that pglz cannot shrink, so
/// with `STORAGE EXTERNAL` (or even without) PostgreSQL stores them out of line and an update
/// that leaves them alone sends them as "unchanged".
const BIG_TEXT: &str = "CREATE FUNCTION big_text(seed int, n int) RETURNS text LANGUAGE sql IMMUTABLE AS \
     $$ SELECT string_agg(md5(seed::text || '-' || i::text), '' ORDER BY i) FROM generate_series(1, n) i $$;";

/// Asserts `public.{table}` has values stored out of line (its TOAST relation is not empty).
async fn assert_toasted(pipe: &Pipe, table: &str) {
    let row = pipe
        .db
        .client()
        .await
        .query_one(
            "SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE oid = $1::text::regclass",
            &[&format!("public.{table}")],
        )
        .await
        .expect("TOAST relation size");
    assert!(
        row.get::<_, i64>(0) > 0,
        "public.{table} has nothing stored out of line: the test would not exercise TOAST"
    );
}

/// What etcd must hold for the rows of `public.{table}` (key `id`) matching `cond`.
async fn expected_where(pipe: &Pipe, table: &str, cond: &str) -> BTreeMap<String, String> {
    pipe.expected_from_sql(&format!(
        "SELECT 'public/{table}/' || id::text, row_to_json(t)::text FROM public.{table} t WHERE {cond}"
    ))
    .await
}

/// `ALTER COLUMN … TYPE` of a TOASTed column while running — binary-coercible (text →
/// varchar, no rewrite: the old out-of-line values stay) and with a rewrite (`USING`, in the
/// same transaction as the updates) — then updates of another column: the unchanged column is
/// filled although the stored value was written under the old type; again while stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_after_alter_type_of_the_column() {
    let pipe = Pipe::new("toastty").await;
    pipe.sql(&format!(
        "{BIG_TEXT}
         CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, big text);
         ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO t SELECT g, g, big_text(g, 200) FROM generate_series(1, 20) g;"
    ))
    .await;
    assert_toasted(&pipe, "t").await;
    let config = pipe.config(
        "toastty.yaml",
        Parts {
            include: "\"public.t\"",
            source_extra: "  table_refresh_interval: 1s\n",
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &[]);
    pipe.wait_synced("t", "snapshot").await;

    pipe.sql("ALTER TABLE t ALTER COLUMN big TYPE varchar(100000)")
        .await;
    pipe.sql("UPDATE t SET v = v + 100 WHERE id <= 10").await;
    pipe.wait_synced("t", "updates after text → varchar").await;
    assert_verify_clean(&config).await;

    pipe.sql(
        "ALTER TABLE t ALTER COLUMN big TYPE text USING big || '';
         ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
         UPDATE t SET v = v + 1000;",
    )
    .await;
    assert_toasted(&pipe, "t").await;
    pipe.wait_synced("t", "updates after a rewriting ALTER TYPE")
        .await;
    pipe.sql("UPDATE t SET v = -v WHERE id % 2 = 0").await;
    pipe.wait_synced("t", "later updates").await;
    assert_verify_clean(&config).await;
    run.assert_running();

    // The same while stopped: the replay starts with the updates under the new type.
    run.stop().await;
    pipe.sql(
        "ALTER TABLE t ALTER COLUMN big TYPE varchar(100000);
         UPDATE t SET v = v + 1 WHERE id <= 5;",
    )
    .await;
    pipe.sql("UPDATE t SET v = v + 1 WHERE id > 15").await;
    let mut run = Run::start(&config, &[]);
    pipe.wait_synced("t", "replay after ALTER TYPE while stopped")
        .await;
    assert_verify_clean(&config).await;
    run.assert_running();
}

/// `GET /metrics` → the value of `etcdsync_oversize_values_skipped_total` for `public.{table}`
/// (0 while the series is absent: a labelled counter appears once it counted something).
async fn oversize_skipped(port: u16, table: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).await.ok()?;
    let body = String::from_utf8_lossy(&body);
    if !body.starts_with("HTTP/1.1 200") {
        return None;
    }
    let label = format!("table=\"public.{table}\"");
    Some(
        body.lines()
            .find(|l| {
                l.starts_with("etcdsync_oversize_values_skipped_total{") && l.contains(&label)
            })
            .and_then(|l| l.rsplit_once(' '))
            .map_or(0.0, |(_, v)| v.parse().expect("counter value")),
    )
}

/// Warnings of `on_oversize: skip` for `key` in the run's stderr.
fn skips_of(run: &Run, key: &str) -> usize {
    run.stderr()
        .lines()
        .filter(|l| l.contains("sink.on_oversize: skip") && l.contains(key))
        .count()
}

/// `on_oversize: skip` skipped a row, so etcd has no value to fill its unchanged TOASTed column
/// from: an update that makes the row fit (a smaller inline column) stores the whole row, the
/// TOASTed column read from PostgreSQL; an update after which it still does not fit is skipped
/// again, logged and counted (README, docs/operations.md), and `verify` reports the key missing
/// until the row fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_of_a_row_skipped_as_oversize() {
    let pipe = Pipe::new("toasto").await;
    // `pad` stays inline (PLAIN), `big` goes out of line.
    pipe.sql(&format!(
        "{BIG_TEXT}
         CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, pad text NOT NULL, big text);
         ALTER TABLE t ALTER COLUMN pad SET STORAGE PLAIN;
         ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO t VALUES (1, 1, 'small', big_text(1, 100));"
    ))
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let top = format!("metrics:\n  listen: \"127.0.0.1:{port}\"\n");
    // A streamed change may take 49152 - 1024 - 32768 = 15360 bytes (key, value, overhead).
    let config = pipe.config(
        "toasto.yaml",
        Parts {
            include: "\"public.t\"",
            sink_extra: "  on_oversize: skip\n  max_request_bytes: 49152\n",
            top: &top,
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &[]);
    pipe.wait_synced("t", "snapshot").await;
    let (key2, key3) = (
        format!("{}/public/t/2", pipe.data),
        format!("{}/public/t/3", pipe.data),
    );

    // Row 2: 7 kB inline + 9.6 kB out of line; row 3: 16 kB out of line. Both too large.
    pipe.sql(
        "INSERT INTO t VALUES (2, 2, big_text(-2, 220), big_text(2, 300));
         INSERT INTO t VALUES (3, 3, 'small', big_text(3, 500));",
    )
    .await;
    assert_toasted(&pipe, "t").await;
    let skipped = eventually(WAIT, || async {
        skips_of(&run, &key2) == 1 && skips_of(&run, &key3) == 1
    })
    .await;
    assert!(skipped, "the inserts were not skipped: {}", run.stderr());
    let data = pipe.etcd_data().await;
    assert!(
        !data.contains_key(&key2) && !data.contains_key(&key3),
        "an oversize row was stored"
    );

    // Row 2 now fits (its unchanged `big` comes from PostgreSQL); row 3 still does not.
    pipe.sql(
        "UPDATE t SET pad = 'fits now', v = v + 10 WHERE id = 2;
         UPDATE t SET v = v + 10 WHERE id = 3;",
    )
    .await;
    pipe.wait_data(&run, "row 2 fits after the update", || {
        expected_where(&pipe, "t", "id <> 3")
    })
    .await;
    let again = eventually(WAIT, || async { skips_of(&run, &key3) == 2 }).await;
    assert!(
        again,
        "the update of row 3 was not skipped again: {}",
        run.stderr()
    );
    assert_eq!(skips_of(&run, &key2), 1, "{}", run.stderr());
    let counted = eventually(WAIT, || async {
        oversize_skipped(port, "t").await == Some(3.0)
    })
    .await;
    assert!(
        counted,
        "etcdsync_oversize_values_skipped_total: {:?}",
        oversize_skipped(port, "t").await
    );
    // Documented: a skipped value is simply not in etcd, so verify sees it missing.
    let (code, report) = verify_json(&config, &[]).await;
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["missing"]["count"], 1, "{report:#}");
    assert_eq!(report["missing"]["keys"][0]["key"], key3, "{report:#}");
    assert_eq!(report["different"]["count"], 0, "{report:#}");
    assert_eq!(report["extra"]["count"], 0, "{report:#}");

    // A smaller `big` makes row 3 fit.
    pipe.sql("UPDATE t SET big = big_text(33, 100) WHERE id = 3; UPDATE t SET v = v + 1;")
        .await;
    pipe.wait_synced("t", "all rows fit").await;
    assert_verify_clean(&config).await;
    assert_eq!(oversize_skipped(port, "t").await, Some(3.0));
    run.assert_running();
}

/// `public.t (id, v, big)` with 20 rows, `big` out of line; rows `1..=kept_rows` have `v >= 100`.
fn filtered_table_sql(kept_rows: i32) -> String {
    format!(
        "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, big text);
         ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO t SELECT g, CASE WHEN g <= {kept_rows} THEN g + 100 ELSE g END, big_text(g, 100)
           FROM generate_series(1, 20) g;"
    )
}

/// A pipeline `tag` on [`filtered_table_sql`]'s table through a filter keeping `v >= 100`,
/// with `source_extra`, its snapshot synced.
async fn filtered(tag: &str, kept_rows: i32, source_extra: &str) -> (Pipe, PathBuf, Run) {
    let pipe = Pipe::new(tag).await;
    pipe.sql(&format!("{BIG_TEXT}{}", filtered_table_sql(kept_rows)))
        .await;
    assert_toasted(&pipe, "t").await;
    let config = pipe.config(
        &format!("{tag}.yaml"),
        Parts {
            include: "\"public.t\"",
            source_extra,
            transforms: "transforms:\n  - { type: filter, tables: [\"public.t\"], when: [{ column: v, op: ge, value: \"100\" }] }\n",
            ..Parts::default()
        },
    );
    let run = Run::start(&config, &[]);
    pipe.wait_data(&run, "snapshot through the filter", || {
        expected_where(&pipe, "t", "v >= 100")
    })
    .await;
    (pipe, config, run)
}

/// A filter keeps rows with `v >= 100`; an update of `v` lets filtered-out rows in while their
/// TOASTed column is unchanged: their keys hold the whole row. Rows leaving the filter go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_letting_a_row_in_by_an_update_stores_its_toasted_value() {
    let (pipe, config, mut run) = filtered("toastfl", 10, "").await;
    let kept = || expected_where(&pipe, "t", "v >= 100");
    assert_eq!(pipe.etcd_data().await.len(), 10);

    pipe.sql("UPDATE t SET v = v + 100 WHERE id > 15").await;
    pipe.wait_data(&run, "rows let in by an update", kept).await;
    assert_eq!(pipe.etcd_data().await.len(), 15);
    pipe.sql(
        "UPDATE t SET v = 0 WHERE id IN (1, 16);
         UPDATE t SET v = v + 200 WHERE id IN (11, 16);",
    )
    .await;
    pipe.wait_data(&run, "out of the filter and in again", kept)
        .await;
    assert_eq!(pipe.etcd_data().await.len(), 15);
    assert_verify_clean(&config).await;
    run.assert_running();
}

/// A table dropped (with an update that needed a row read in the same transaction) and created
/// again under its name at once: updates of the new table that a filter lets in with their
/// TOASTed column unchanged read the new table's rows — a table found absent a moment before is
/// looked up again for a change committed after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_dropped_and_created_again_is_read_again_at_once() {
    let (pipe, config, mut run) = filtered("toastre", 5, "  table_refresh_interval: 1s\n").await;
    let kept = || expected_where(&pipe, "t", "v >= 100");
    // The row reader learns the table, then finds it gone.
    pipe.sql("UPDATE t SET v = v + 1 WHERE id = 1").await;
    pipe.wait_data(&run, "an update read from the table", kept)
        .await;
    pipe.sql("BEGIN; UPDATE t SET v = v + 1 WHERE id = 2; DROP TABLE t; COMMIT;")
        .await;
    pipe.sql(&filtered_table_sql(5)).await;
    pipe.wait_data(&run, "the table created again, copied", kept)
        .await;
    pipe.sql("UPDATE t SET v = v + 100 WHERE id > 15").await;
    pipe.wait_data(&run, "rows of the new table let in by an update", kept)
        .await;
    assert_eq!(pipe.etcd_data().await.len(), 10);
    assert_verify_clean(&config).await;
    run.assert_running();
}

/// The etcd content of `cfg` under `{name}/{id}` with `body` as the raw value.
async fn templated(pipe: &Pipe) -> BTreeMap<String, String> {
    pipe.expected_from_sql("SELECT name || '/' || id, body FROM cfg")
        .await
}

/// A key template and a raw value that use TOASTed columns: updates leaving them alone keep the
/// key and the value; an update of the key's column moves the key with the unchanged value;
/// an update of the value keeps the unchanged key. The key index follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_template_and_value_from_toasted_columns() {
    let pipe = Pipe::new("toastkt").await;
    // Both out of line: `body` (4.8 kB) first, then `name` (2.4 kB) as the row is still too large.
    pipe.sql(&format!(
        "{BIG_TEXT}
         CREATE TABLE cfg (id int PRIMARY KEY, v int NOT NULL, name text NOT NULL, body text);
         ALTER TABLE cfg ALTER COLUMN name SET STORAGE EXTERNAL;
         ALTER TABLE cfg ALTER COLUMN body SET STORAGE EXTERNAL;
         INSERT INTO cfg SELECT g, g, big_text(g, 75), big_text(-g, 150) FROM generate_series(1, 12) g;"
    ))
    .await;
    assert_toasted(&pipe, "cfg").await;
    let config = pipe.config(
        "toastkt.yaml",
        Parts {
            include: "\"public.cfg\"",
            transforms: "transforms:\n  - { type: key_template, tables: [\"public.cfg\"], template: \"{name}/{id}\" }\n  \
                         - { type: value, tables: [\"public.cfg\"], raw: body }\n",
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &[]);
    pipe.wait_data(&run, "snapshot", || templated(&pipe)).await;

    pipe.sql("UPDATE cfg SET v = v + 1").await;
    pipe.wait_data(&run, "updates leaving both alone", || templated(&pipe))
        .await;
    pipe.sql(
        "UPDATE cfg SET name = big_text(id + 100, 75) WHERE id <= 3;
         UPDATE cfg SET body = big_text(id + 200, 150), v = v + 1 WHERE id BETWEEN 4 AND 6;
         DELETE FROM cfg WHERE id = 12;",
    )
    .await;
    pipe.wait_data(&run, "key moves and value changes", || templated(&pipe))
        .await;
    pipe.sql("UPDATE cfg SET v = v + 1").await;
    pipe.wait_data(&run, "updates after the moves", || templated(&pipe))
        .await;
    // One index entry per row, one owner entry per key.
    let mut client = etcdsync_tests::pg::etcd().await;
    let index =
        etcdsync_tests::pg::etcd_dump(&mut client, &format!("{}/index/public/cfg/", pipe.meta))
            .await;
    let owners = etcdsync_tests::pg::etcd_dump(&mut client, &format!("{}/owner/", pipe.meta)).await;
    assert_eq!(index.len(), 11, "{:?}", index.keys());
    assert_eq!(owners.len(), 11, "{:?}", owners.keys());
    assert_verify_clean(&config).await;
    run.assert_running();
}
