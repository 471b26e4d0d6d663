//! A row read for a streamed change waits until the change's transaction is visible to other
//! sessions (issue 11): logical decoding sends a commit once its WAL is flushed, a moment before
//! the commit is visible, and a read in that moment returned the row from before it (or none for
//! a row moved to a new key, which lost the key change).
#![cfg(feature = "integration-tests")]

use etcdsync_pgx::config::PgxConfig;
use etcdsync_pgx::inspect::PgxInspector;
use etcdsync_tests::pg::{source_yaml, TestDb};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_waits_until_the_transaction_is_visible() {
    let db = TestDb::create("visible").await;
    let yaml = source_yaml(&db, &["public.*"], "").replacen("type: pgx\n", "", 1);
    let config: PgxConfig = serde_yaml::from_str(&yaml).expect("config");
    let mut inspector = PgxInspector::new(config.validated("visible").expect("valid"));

    // An older transaction holds an xid and stays open: the snapshot's xmax stays below the
    // transaction waited for.
    let older = db.client().await;
    older
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("table");
    older
        .batch_execute("BEGIN; SELECT txid_current();")
        .await
        .expect("an older open transaction");
    let writer = db.client().await;
    writer
        .batch_execute("BEGIN; INSERT INTO t VALUES (1);")
        .await
        .expect("open a transaction");
    let full: i64 = writer
        .query_one("SELECT txid_current()", &[])
        .await
        .expect("xid")
        .get(0);
    let xid = u32::try_from(full % (1 << 32)).expect("a 32-bit xid");

    let waiting =
        tokio::spawn(async move { inspector.wait_visible(xid).await.map(|()| inspector) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the wait ended while the transaction was open"
    );
    writer.batch_execute("COMMIT").await.expect("commit");
    let mut inspector = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the wait ends after the commit")
        .expect("join")
        .expect("visible");

    // Long committed: no wait at all.
    inspector.wait_visible(xid).await.expect("still visible");
    older.batch_execute("COMMIT").await.expect("commit");
}
