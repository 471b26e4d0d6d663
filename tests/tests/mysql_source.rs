//! The `mysql` source against a real MariaDB (tools/testenv.sh), with an in-memory sink that
//! acknowledges every position: snapshot then stream over two databases with composite keys,
//! TRUNCATE, DROP TABLE, PK change, resume without loss or duplicates (by GTID and by file
//! offset), ALTER TABLE while running, table and column selection, parallel snapshot workers
//! and a 100k-row transaction in bounded chunks. Values and charsets are in mysql_types.rs,
//! refused setups in mysql_prereqs.rs.
#![cfg(feature = "integration-tests")]

use etcdsync_core::pipeline::CHANGES_PER_MESSAGE;
use etcdsync_core::{Message, Op, TableId};
use etcdsync_mysql as _;
use etcdsync_tests::mysql::{
    apply, apply_into, commits, connect, db_state, db_state_yaml, exec, includes, snapshot_done,
    source_yaml, unique, url, SourceRun, TestDbs,
};
use mysql_async::prelude::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const PREFIX: &str = "/t";

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
