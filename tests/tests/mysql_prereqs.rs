//! Setups the `mysql` source refuses, against a real MariaDB (tools/testenv.sh): a missing
//! replication privilege, a STATEMENT binlog format, a purged checkpoint and a server id in
//! use are clear errors naming their fix, and foreign keys with unlogged cascades are refused
//! unless explicitly allowed.
#![cfg(feature = "integration-tests")]

use etcdsync_mysql as _;
use etcdsync_tests::mysql::{
    apply, build, commits, connect, db_state_yaml, exec, includes, inspector, snapshot_done,
    source_yaml, unique, unique_server_id, SourceRun, TestDbs,
};
use mysql_async::prelude::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const PREFIX: &str = "/t";

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
