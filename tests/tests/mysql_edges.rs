//! The `mysql` source at the edges (issue 12) with real MariaDB and etcd, each scenario ending
//! with etcd equal to the tables as a fresh snapshot reads them: XA transactions (committed,
//! rolled back, one phase, prepared across a restart), `ROLLBACK TO SAVEPOINT`, DDL that changes
//! rows or names without row events (comment, cut-over rename, column change, rename out,
//! `CREATE OR REPLACE`, partition truncate/exchange/drop, tablespace discard/import),
//! statement-format DML, and a table keyed by a UNIQUE NOT NULL index.
#![cfg(feature = "integration-tests")]

use etcdsync_etcd as _;
use etcdsync_mysql as _;
use etcdsync_tests::mysql::{
    connect, converges, db_state, env, etcd, etcd_dump, exec, start, unique, url, yaml_for,
    EtcdPrefixGuard, TestDbs,
};
use mysql_async::prelude::*;
use std::time::Duration;

struct Edge {
    db: String,
    name: String,
    prefix: String,
    include: Vec<String>,
    _dbs: TestDbs,
    _guard: EtcdPrefixGuard,
}

impl Edge {
    /// A database for the test; the pipeline selects `tables` of it (`*` for all).
    async fn new(tag: &str, tables: &[&str]) -> Edge {
        let dbs = TestDbs::create(&format!("my_{tag}"), 1).await;
        let db = dbs.name(0).to_string();
        let name = unique(tag);
        let prefix = format!("/{name}");
        let include = tables.iter().map(|t| format!("{db}.{t}")).collect();
        Edge {
            db,
            _guard: EtcdPrefixGuard(vec![format!("{prefix}/"), format!("{prefix}-meta/")]),
            name,
            prefix,
            include,
            _dbs: dbs,
        }
    }

    fn yaml(&self) -> String {
        yaml_for(&self.name, &url(), &self.include, &self.prefix)
    }

    async fn converges(&self) {
        converges(&self.prefix, &db_state(&self.include, &self.prefix).await).await;
    }

    async fn keys(&self, table: &str) -> Vec<String> {
        let mut client = etcd().await;
        etcd_dump(
            &mut client,
            &format!("{}/{}/{table}/", self.prefix, self.db),
        )
        .await
        .into_keys()
        .collect()
    }
}

/// A root connection (session binlog settings, users).
async fn admin() -> mysql_async::Conn {
    let opts = mysql_async::Opts::from_url(&env("ETCDSYNC_TEST_MYSQL_ADMIN")).expect("admin url");
    mysql_async::Conn::new(opts)
        .await
        .expect("admin connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xa_transactions_arrive_once_at_commit_and_never_after_rollback() {
    let edge = Edge::new("xa", &["*"]).await;
    let db = &edge.db;
    let mut xa = connect().await;
    let mut other = connect().await;
    exec(
        &mut xa,
        &format!(
            "CREATE TABLE `{db}`.t (id INT PRIMARY KEY, v INT NOT NULL);
             CREATE TABLE `{db}`.u (id INT PRIMARY KEY);
             INSERT INTO `{db}`.u VALUES (1), (2)"
        ),
    )
    .await;
    let running = start(&edge.yaml());
    edge.converges().await;

    // Prepared, with more rows than one message holds; an ordinary transaction after it.
    exec(
        &mut xa,
        &format!(
            "XA START 'big';
             INSERT INTO `{db}`.t SELECT seq, seq FROM `{db}`.seq_1_to_300;
             XA END 'big';
             XA PREPARE 'big'"
        ),
    )
    .await;
    // Nothing else is held back while it waits: a transaction and a TRUNCATE of another table.
    exec(
        &mut other,
        &format!(
            "INSERT INTO `{db}`.t VALUES (1000, 1);
             TRUNCATE TABLE `{db}`.u"
        ),
    )
    .await;
    edge.converges().await;
    assert_eq!(
        edge.keys("t").await.len(),
        1,
        "only the committed row before XA COMMIT"
    );
    assert!(edge.keys("u").await.is_empty());

    // A restart while the XA transaction is prepared: its rows are read again.
    running.stop().await;
    let running = start(&edge.yaml());
    exec(
        &mut other,
        &format!("UPDATE `{db}`.t SET v = 2 WHERE id = 1000"),
    )
    .await;
    edge.converges().await;
    assert_eq!(edge.keys("t").await.len(), 1);

    exec(
        &mut xa,
        &format!(
            "XA COMMIT 'big';
             XA START 'gone';
             INSERT INTO `{db}`.t SELECT seq, seq FROM `{db}`.seq_2001_to_2300;
             XA END 'gone';
             XA PREPARE 'gone';
             XA ROLLBACK 'gone';
             XA START 'one';
             INSERT INTO `{db}`.t VALUES (3000, 3);
             XA END 'one';
             XA COMMIT 'one' ONE PHASE"
        ),
    )
    .await;
    edge.converges().await;
    assert_eq!(edge.keys("t").await.len(), 302);

    // Overlapping: A prepared, B prepared, A committed, a restart, then B committed.
    let mut b = connect().await;
    exec(
        &mut xa,
        &format!(
            "XA START 'A';
             INSERT INTO `{db}`.t VALUES (5001, 1);
             XA END 'A';
             XA PREPARE 'A'"
        ),
    )
    .await;
    exec(
        &mut b,
        &format!(
            "XA START 'B';
             INSERT INTO `{db}`.t VALUES (5002, 2);
             XA END 'B';
             XA PREPARE 'B'"
        ),
    )
    .await;
    exec(&mut xa, "XA COMMIT 'A'").await;
    edge.converges().await;
    running.stop().await;
    let running = start(&edge.yaml());
    exec(&mut b, "XA COMMIT 'B'").await;
    edge.converges().await;
    assert_eq!(edge.keys("t").await.len(), 304);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_after_a_savepoint_rolled_back_to_never_arrive() {
    let edge = Edge::new("svp", &["*"]).await;
    let db = &edge.db;
    let mut conn = connect().await;
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE `{db}`.t (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB;
             CREATE TABLE `{db}`.m (id INT PRIMARY KEY) ENGINE=MyISAM"
        ),
    )
    .await;
    let running = start(&edge.yaml());
    edge.converges().await;
    exec(
        &mut conn,
        &format!(
            "BEGIN;
             INSERT INTO `{db}`.t VALUES (1, 1);
             SAVEPOINT s1;
             INSERT INTO `{db}`.m VALUES (1);
             INSERT INTO `{db}`.t SELECT seq + 100, seq FROM `{db}`.seq_1_to_300;
             ROLLBACK TO SAVEPOINT s1;
             INSERT INTO `{db}`.t VALUES (3, 3);
             COMMIT"
        ),
    )
    .await;
    edge.converges().await;
    assert_eq!(edge.keys("t").await.len(), 2);
    assert_eq!(edge.keys("m").await.len(), 1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_that_changes_rows_or_names_without_row_events_is_followed() {
    let edge = Edge::new("ddl", &["orders"]).await;
    let db = &edge.db;
    let mut conn = connect().await;
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE `{db}`.orders (id INT PRIMARY KEY, v INT NOT NULL);
             INSERT INTO `{db}`.orders SELECT seq, seq FROM `{db}`.seq_1_to_20"
        ),
    )
    .await;
    let running = start(&edge.yaml());
    edge.converges().await;

    // A comment that says "rename" touches nothing.
    exec(
        &mut conn,
        &format!(
            "ALTER TABLE `{db}`.orders COMMENT 'rename soon, DROP later';
             INSERT INTO `{db}`.orders VALUES (21, 21)"
        ),
    )
    .await;
    edge.converges().await;
    assert_eq!(edge.keys("orders").await.len(), 21);

    // gh-ost / pt-online-schema-change cut-over: the keys end equal to the new table.
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE `{db}`._orders_gho (id INT PRIMARY KEY, v INT NOT NULL, note VARCHAR(10) NOT NULL DEFAULT 'new');
             INSERT INTO `{db}`._orders_gho (id, v) SELECT id, v * 10 FROM `{db}`.orders WHERE id <= 15;
             RENAME TABLE `{db}`.orders TO `{db}`._orders_old, `{db}`._orders_gho TO `{db}`.orders"
        ),
    )
    .await;
    edge.converges().await;
    assert_eq!(edge.keys("orders").await.len(), 15);

    // A column change rewrites every row's value.
    exec(
        &mut conn,
        &format!("ALTER TABLE `{db}`.orders ADD COLUMN extra INT NOT NULL DEFAULT 7"),
    )
    .await;
    edge.converges().await;

    // CREATE OR REPLACE drops the old rows without row events.
    exec(
        &mut conn,
        &format!(
            "CREATE OR REPLACE TABLE `{db}`.orders (id INT PRIMARY KEY, v INT NOT NULL);
             INSERT INTO `{db}`.orders VALUES (1, 100), (2, 200)"
        ),
    )
    .await;
    edge.converges().await;
    assert_eq!(edge.keys("orders").await.len(), 2);

    // Renamed out of the selection: its keys go.
    exec(
        &mut conn,
        &format!("ALTER TABLE `{db}`.orders RENAME TO `{db}`.archived"),
    )
    .await;
    edge.converges().await;
    assert!(edge.keys("orders").await.is_empty());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_truncate_and_exchange_are_followed() {
    let edge = Edge::new("part", &["p"]).await;
    let db = &edge.db;
    let mut conn = connect().await;
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE `{db}`.p (id INT PRIMARY KEY, v INT NOT NULL)
               PARTITION BY RANGE (id) (PARTITION p0 VALUES LESS THAN (100), PARTITION p1 VALUES LESS THAN (200));
             INSERT INTO `{db}`.p SELECT seq, seq FROM `{db}`.seq_1_to_150;
             CREATE TABLE `{db}`.swap (id INT PRIMARY KEY, v INT NOT NULL);
             INSERT INTO `{db}`.swap SELECT seq, 0 FROM `{db}`.seq_100_to_120"
        ),
    )
    .await;
    let running = start(&edge.yaml());
    edge.converges().await;
    exec(
        &mut conn,
        &format!("ALTER TABLE `{db}`.p TRUNCATE PARTITION p0"),
    )
    .await;
    edge.converges().await;
    assert_eq!(edge.keys("p").await.len(), 51);
    exec(
        &mut conn,
        &format!("ALTER TABLE `{db}`.p EXCHANGE PARTITION p1 WITH TABLE `{db}`.swap"),
    )
    .await;
    edge.converges().await;
    assert_eq!(edge.keys("p").await.len(), 21);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_drop_is_followed() {
    let edge = Edge::new("droppart", &["p"]).await;
    let db = &edge.db;
    let mut conn = connect().await;
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE `{db}`.p (id INT PRIMARY KEY, v INT NOT NULL)
               PARTITION BY RANGE (id) (PARTITION p0 VALUES LESS THAN (100),
                 PARTITION p1 VALUES LESS THAN (200), PARTITION p2 VALUES LESS THAN MAXVALUE);
             INSERT INTO `{db}`.p SELECT seq, seq FROM `{db}`.seq_1_to_250"
        ),
    )
    .await;
    let running = start(&edge.yaml());
    edge.converges().await;
    assert_eq!(edge.keys("p").await.len(), 250);
    // The partition's rows go without row events; p1 takes the ids below 100 from then on.
    exec(
        &mut conn,
        &format!(
            "ALTER TABLE `{db}`.p DROP PARTITION p0;
             INSERT INTO `{db}`.p VALUES (5, 5)"
        ),
    )
    .await;
    edge.converges().await;
    assert_eq!(edge.keys("p").await.len(), 152);
    running.stop().await;
}

/// `ALTER TABLE … DISCARD TABLESPACE` keeps the table's keys (its rows are expected back, and
/// none can change meanwhile) without holding up the stream, also across a restart; `IMPORT
/// TABLESPACE` copies the table again. The imported tablespace is another table's (`FLUSH
/// TABLES … FOR EXPORT`, its files copied within the server's data directory); when that
/// directory cannot be reached from the test, the table is dropped and created instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discarded_tablespace_keeps_its_keys_until_it_is_imported() {
    let edge = Edge::new("discard", &["t", "m"]).await;
    let db = &edge.db;
    let mut admin = admin().await;
    exec(
        &mut admin,
        &format!(
            "CREATE TABLE `{db}`.t (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB;
             INSERT INTO `{db}`.t SELECT seq, seq FROM `{db}`.seq_1_to_20;
             CREATE TABLE `{db}`.src (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB;
             INSERT INTO `{db}`.src SELECT seq, seq * 2 FROM `{db}`.seq_100_to_130;
             CREATE TABLE `{db}`.m (id INT PRIMARY KEY)"
        ),
    )
    .await;
    let running = start(&edge.yaml());
    edge.converges().await;
    let mut client = etcd().await;
    let t_prefix = format!("{}/{db}/t/", edge.prefix);
    let kept = etcd_dump(&mut client, &t_prefix).await;
    assert_eq!(kept.len(), 20);

    exec(
        &mut admin,
        &format!(
            "ALTER TABLE `{db}`.t DISCARD TABLESPACE;
             INSERT INTO `{db}`.m VALUES (1)"
        ),
    )
    .await;
    marker_arrives(&edge, 1).await;
    assert!(running.is_running(), "the pipeline stopped at DISCARD");
    assert_eq!(etcd_dump(&mut client, &t_prefix).await, kept);
    running.stop().await;

    let running = start(&edge.yaml());
    exec(&mut admin, &format!("INSERT INTO `{db}`.m VALUES (2)")).await;
    marker_arrives(&edge, 2).await;
    assert!(running.is_running(), "the pipeline stopped after a restart");
    assert_eq!(etcd_dump(&mut client, &t_prefix).await, kept);
    // `etcdsync check` names the discarded table and the import.
    let source = etcdsync_tests::mysql::source_section(&url(), &edge.include);
    let checks = etcdsync_tests::mysql::inspector(&source, &edge.name)
        .await
        .check()
        .await;
    let line = checks
        .iter()
        .find(|c| c.name == format!("SELECT on {db}.t"))
        .unwrap_or_else(|| panic!("no SELECT line for the discarded table: {checks:?}"));
    assert!(
        !line.ok
            && line
                .fix
                .as_deref()
                .is_some_and(|f| f.contains("IMPORT TABLESPACE")),
        "{line:?}"
    );

    let imported = import_copy(&mut admin, db, "src", "t").await;
    if !imported {
        eprintln!(
            "the server's data directory is not reachable: DROP and CREATE instead of IMPORT"
        );
        exec(
            &mut admin,
            &format!(
                "DROP TABLE `{db}`.t;
                 CREATE TABLE `{db}`.t (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB;
                 INSERT INTO `{db}`.t SELECT id, v FROM `{db}`.src"
            ),
        )
        .await;
    }
    edge.converges().await;
    assert_eq!(edge.keys("t").await.len(), 31);
    running.stop().await;
}

/// Waits until the marker table `m` has `count` keys.
async fn marker_arrives(edge: &Edge, count: usize) {
    let prefix = format!("{}/{}/m/", edge.prefix, edge.db);
    let client = etcd().await;
    let arrived = etcdsync_tests::mysql::eventually(Duration::from_secs(60), || {
        let mut client = client.clone();
        let prefix = prefix.clone();
        async move { etcd_dump(&mut client, &prefix).await.len() == count }
    })
    .await;
    assert!(arrived, "marker row {count} did not arrive");
}

/// Replaces `to`'s discarded tablespace with a copy of `from`'s (same columns) and imports it;
/// `false` when the server's data directory cannot be reached from here.
async fn import_copy(admin: &mut mysql_async::Conn, db: &str, from: &str, to: &str) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let datadir: String = admin
        .query_first("SELECT @@datadir")
        .await
        .expect("datadir")
        .expect("datadir");
    let dir = std::path::Path::new(&datadir).join(db);
    let Ok(owner) = std::fs::metadata(dir.join(format!("{from}.ibd"))) else {
        return false;
    };
    exec(admin, &format!("FLUSH TABLES `{db}`.`{from}` FOR EXPORT")).await;
    let targets: Vec<_> = ["ibd", "cfg"]
        .iter()
        .map(|ext| dir.join(format!("{to}.{ext}")))
        .collect();
    let copied = ["ibd", "cfg"]
        .iter()
        .zip(&targets)
        .try_for_each(|(ext, target)| {
            std::fs::copy(dir.join(format!("{from}.{ext}")), target)?;
            // The server opens the file read-write as its own user.
            std::os::unix::fs::chown(target, Some(owner.uid()), Some(owner.gid()))
        });
    exec(admin, "UNLOCK TABLES").await;
    if let Err(e) = copied {
        eprintln!("copying the tablespace failed: {e}");
        for target in &targets {
            let _ = std::fs::remove_file(target);
        }
        return false;
    }
    exec(
        admin,
        &format!("ALTER TABLE `{db}`.`{to}` IMPORT TABLESPACE"),
    )
    .await;
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_format_dml_naming_a_synced_table_stops_the_pipeline() {
    let edge = Edge::new("stmt", &["t"]).await;
    let db = &edge.db;
    let mut admin = admin().await;
    admin
        .query_drop(format!(
            "CREATE TABLE `{db}`.t (id INT PRIMARY KEY, v INT NOT NULL);
             CREATE TABLE `{db}`.other (id INT PRIMARY KEY, v INT NOT NULL);
             INSERT INTO `{db}`.t VALUES (1, 1);
             INSERT INTO `{db}`.other VALUES (1, 5)"
        ))
        .await
        .expect("tables");
    let running = start(&edge.yaml());
    edge.converges().await;
    admin
        .query_drop(format!(
            "SET SESSION binlog_format = 'STATEMENT';
             UPDATE `{db}`.other o JOIN `{db}`.t x ON o.id = x.id SET x.v = o.v"
        ))
        .await
        .expect("statement-format update");
    let error = running.failed(Duration::from_secs(60)).await.to_string();
    assert!(
        error.contains(&format!("{db}.t")) && error.contains("binlog_format=ROW"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_keyed_by_a_unique_not_null_index_is_copied_and_streamed() {
    let edge = Edge::new("uniq", &["*"]).await;
    let db = &edge.db;
    let mut conn = connect().await;
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE `{db}`.u (code VARCHAR(10) NOT NULL, v INT, UNIQUE KEY (code));
             INSERT INTO `{db}`.u VALUES ('a', 1), ('b', 2)"
        ),
    )
    .await;
    let running = start(&edge.yaml());
    edge.converges().await;
    assert_eq!(edge.keys("u").await.len(), 2, "copied by the snapshot");
    exec(
        &mut conn,
        &format!(
            "UPDATE `{db}`.u SET v = 5 WHERE code = 'a';
             INSERT INTO `{db}`.u VALUES ('c', 3)"
        ),
    )
    .await;
    edge.converges().await;
    assert_eq!(edge.keys("u").await.len(), 3);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selected_table_the_user_cannot_read_is_refused_not_half_synced() {
    let edge = Edge::new("priv", &["*"]).await;
    let db = &edge.db;
    let mut admin = admin().await;
    let user = format!("ro{}", std::process::id());
    admin
        .query_drop(format!(
            "CREATE TABLE `{db}`.t (id INT PRIMARY KEY, v INT NOT NULL);
             CREATE TABLE `{db}`.hidden (id INT PRIMARY KEY, v INT NOT NULL);
             INSERT INTO `{db}`.t VALUES (1, 1);
             INSERT INTO `{db}`.hidden VALUES (1, 1);
             DROP USER IF EXISTS '{user}'@'%';
             CREATE USER '{user}'@'%' IDENTIFIED BY 'ro-pw';
             GRANT RELOAD, REPLICATION CLIENT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{user}'@'%';
             GRANT SELECT ON `{db}`.t TO '{user}'@'%'"
        ))
        .await
        .expect("a user that may read one table");
    let url = url().replacen("://etcdsync:etcdsync@", &format!("://{user}:ro-pw@"), 1);
    let yaml = yaml_for(&edge.name, &url, &edge.include, &edge.prefix);
    let running = start(&yaml);
    // The snapshot copies what the user can see; the first change of the hidden table stops
    // the pipeline naming the table and the grant.
    let mut client = etcd().await;
    let copied = etcdsync_tests::mysql::eventually(Duration::from_secs(60), || {
        let mut client = client.clone();
        let prefix = format!("{}/{db}/t/", edge.prefix);
        async move { !etcd_dump(&mut client, &prefix).await.is_empty() }
    })
    .await;
    assert!(copied, "the readable table was not copied");
    admin
        .query_drop(format!("INSERT INTO `{db}`.hidden VALUES (2, 2)"))
        .await
        .expect("insert");
    let error = running.failed(Duration::from_secs(60)).await.to_string();
    assert!(
        error.contains(&format!("{db}.hidden")) && error.contains("GRANT SELECT"),
        "{error}"
    );
    assert!(
        etcd_dump(&mut client, &format!("{}/{db}/hidden/", edge.prefix))
            .await
            .is_empty()
    );
    admin
        .query_drop(format!("DROP USER IF EXISTS '{user}'@'%'"))
        .await
        .expect("drop user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_database_removes_the_keys_of_its_tables() {
    let edge = Edge::new("dropdb", &["*"]).await;
    let db = &edge.db;
    let mut conn = connect().await;
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE `{db}`.a (id INT PRIMARY KEY);
             CREATE TABLE `{db}`.b (id INT PRIMARY KEY);
             INSERT INTO `{db}`.a VALUES (1), (2);
             INSERT INTO `{db}`.b VALUES (1)"
        ),
    )
    .await;
    let running = start(&edge.yaml());
    edge.converges().await;
    assert_eq!(edge.keys("a").await.len() + edge.keys("b").await.len(), 3);
    exec(&mut conn, &format!("DROP DATABASE `{db}`")).await;
    let left = keys_left_after(&edge, Duration::from_secs(60)).await;
    if !left.is_empty() {
        if running.is_running() {
            panic!("keys left after 60 s, the pipeline still running: {left:?}");
        }
        let error = running.failed(Duration::from_secs(1)).await;
        panic!("keys left: {left:?}; the pipeline stopped: {error}");
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_data_logged_as_a_statement_stops_the_pipeline() {
    let edge = Edge::new("load", &["t"]).await;
    let db = &edge.db;
    let mut admin = admin().await;
    admin
        .query_drop(format!(
            "CREATE TABLE `{db}`.t (id INT PRIMARY KEY, v INT NOT NULL); INSERT INTO `{db}`.t VALUES (1, 1)"
        ))
        .await
        .expect("table");
    let file = std::env::temp_dir().join(format!("{}.csv", edge.name));
    std::fs::write(&file, "2,2\n3,3\n").expect("csv");
    let running = start(&edge.yaml());
    edge.converges().await;
    admin
        .query_drop(format!(
            "SET SESSION binlog_format = 'STATEMENT';
             LOAD DATA INFILE '{}' INTO TABLE `{db}`.t FIELDS TERMINATED BY ','",
            file.display()
        ))
        .await
        .expect("LOAD DATA");
    let error = running.failed(Duration::from_secs(60)).await.to_string();
    assert!(
        error.contains(&format!("{db}.t"))
            && error.contains("INTO TABLE")
            && error.contains("binlog_format=ROW"),
        "{error}"
    );
    let _ = std::fs::remove_file(&file);
}

/// A database dropped while etcdsync is stopped: the replayed `DROP DATABASE` still removes the
/// keys of its tables, which the server no longer lists — the sink's table markers name them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_dropped_while_stopped_loses_its_keys_at_the_next_start() {
    let edge = Edge::new("dropstopped", &["*"]).await;
    let db = &edge.db;
    let mut conn = connect().await;
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE `{db}`.a (id INT PRIMARY KEY);
             INSERT INTO `{db}`.a VALUES (1), (2)"
        ),
    )
    .await;
    let running = start(&edge.yaml());
    edge.converges().await;
    assert_eq!(edge.keys("a").await.len(), 2);
    running.stop().await;
    exec(&mut conn, &format!("DROP DATABASE `{db}`")).await;
    let running = start(&edge.yaml());
    let left = keys_left_after(&edge, Duration::from_secs(60)).await;
    assert!(left.is_empty(), "keys left: {left:?}");
    running.stop().await;
}

/// What the pipeline's data prefix still holds once it emptied or `patience` passed.
async fn keys_left_after(
    edge: &Edge,
    patience: Duration,
) -> std::collections::BTreeMap<String, String> {
    let client = etcd().await;
    let prefix = format!("{}/", edge.prefix);
    etcdsync_tests::mysql::eventually(patience, || {
        let mut client = client.clone();
        let prefix = prefix.clone();
        async move { etcd_dump(&mut client, &prefix).await.is_empty() }
    })
    .await;
    let mut client = client;
    etcd_dump(&mut client, &prefix).await
}

/// The selection widened while etcdsync was stopped: a table it now selects that the sink never
/// wrote is copied before its changes stream (its earlier rows are in no binlog event the
/// restart reads); an empty one needs no copy; one created while running streams from its
/// creation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_selected_while_stopped_is_copied_first() {
    let mut edge = Edge::new("widen", &["a"]).await;
    let db = edge.db.clone();
    let mut conn = connect().await;
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE `{db}`.a (id INT PRIMARY KEY, v INT NOT NULL);
             INSERT INTO `{db}`.a SELECT seq, seq FROM `{db}`.seq_1_to_20;
             CREATE TABLE `{db}`.b (id INT PRIMARY KEY, v INT NOT NULL);
             INSERT INTO `{db}`.b SELECT seq, seq FROM `{db}`.seq_1_to_30;
             CREATE TABLE `{db}`.e (id INT PRIMARY KEY)"
        ),
    )
    .await;
    let running = start(&edge.yaml());
    edge.converges().await;
    running.stop().await;
    assert!(edge.keys("b").await.is_empty());

    exec(
        &mut conn,
        &format!(
            "INSERT INTO `{db}`.b VALUES (31, 31); UPDATE `{db}`.b SET v = 0 WHERE id = 1;
             INSERT INTO `{db}`.a VALUES (21, 21)"
        ),
    )
    .await;
    edge.include = ["a", "b", "e", "c"]
        .iter()
        .map(|t| format!("{db}.{t}"))
        .collect();
    let running = start(&edge.yaml());
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE `{db}`.c (id INT PRIMARY KEY, v INT NOT NULL);
             INSERT INTO `{db}`.c SELECT seq, seq FROM `{db}`.seq_1_to_5;
             UPDATE `{db}`.b SET v = 2 WHERE id = 2"
        ),
    )
    .await;
    edge.converges().await;
    assert_eq!(edge.keys("b").await.len(), 31);
    assert_eq!(edge.keys("c").await.len(), 5);
    assert_eq!(edge.keys("a").await.len(), 21);
    running.stop().await;
}
