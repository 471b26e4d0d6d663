//! Transforms end to end on real PostgreSQL and etcd (issue 5): a `settings` table synced to
//! `{prefix}/{service}/{name}` with raw values through snapshot, insert, update, key move,
//! delete and truncate; a dropped secret column never reaching etcd; a row leaving a filter
//! deleted; a key collision stopping the pipeline naming both rows; a row whose key template
//! renders an empty component stopping it (`on_invalid_key: error`) or skipped with its old key
//! deleted (`skip`).
#![cfg(feature = "integration-tests")]

use etcdsync_core::config::PipelineConfig;
use etcdsync_etcd as _;
use etcdsync_pgx as _;
use etcdsync_tests::pg::{env, etcd, etcd_dump, eventually, unique, EtcdPrefixGuard, TestDb};
use etcdsync_transforms as _;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(40);

struct Pipeline {
    data: String,
    meta: String,
    yaml: String,
}

impl Pipeline {
    fn new(db: &TestDb, transforms: &str) -> Pipeline {
        let name = unique("tr").replace('_', "-");
        let data = format!("/cfg-{name}");
        let meta = format!("/meta-{name}");
        let yaml = format!(
            "name: {name}\nsource:\n  type: pgx\n  url: \"{url}\"\n  sslmode: disable\n  heartbeat_interval: 1s\n  \
             tables:\n    include: [\"public.*\"]\ntransforms:\n{transforms}\
             sink:\n  type: etcd\n  endpoints: [\"{etcd}\"]\n  prefix: {data}\n  meta_prefix: {meta}\n",
            url = db.url,
            etcd = env("ETCDSYNC_TEST_ETCD"),
        );
        Pipeline { data, meta, yaml }
    }

    /// Adds lines to the sink section (the last one of the config).
    fn with_sink_options(mut self, lines: &str) -> Pipeline {
        self.yaml.push_str(lines);
        self
    }

    /// Keys under the meta prefix, relative to it.
    async fn meta_keys(&self) -> Vec<String> {
        let mut client = etcd().await;
        let prefix = format!("{}/", self.meta);
        etcd_dump(&mut client, &prefix)
            .await
            .into_keys()
            .map(|k| k[prefix.len()..].to_string())
            .collect()
    }

    fn guard(&self) -> EtcdPrefixGuard {
        EtcdPrefixGuard(vec![format!("{}/", self.data), format!("{}/", self.meta)])
    }

    fn start(
        &self,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<etcdsync_core::Result<()>>,
    ) {
        let config =
            PipelineConfig::parse(&self.yaml).unwrap_or_else(|e| panic!("pipeline config: {e}"));
        let token = CancellationToken::new();
        let stop = token.clone();
        (
            token,
            tokio::spawn(async move { etcdsync_core::pipeline::run(&config, stop).await }),
        )
    }

    /// The data keys, relative to the prefix, with their values.
    async fn data(&self) -> BTreeMap<String, String> {
        let mut client = etcd().await;
        let prefix = format!("{}/", self.data);
        etcd_dump(&mut client, &prefix)
            .await
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_string(), v))
            .collect()
    }

    async fn wait_for(&self, what: &str, want: &[(&str, &str)]) {
        let want: BTreeMap<String, String> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let matched = eventually(WAIT, || async { self.data().await == want }).await;
        assert!(
            matched,
            "{what}: etcd holds {:?}, expected {want:?}",
            self.data().await
        );
    }
}

const SETTINGS: &str = "
  - { type: filter, tables: [\"public.settings\"], when: [{ column: enabled, op: eq, value: true }] }
  - { type: drop_columns, tables: [\"public.settings\"], columns: [secret] }
  - { type: key_template, tables: [\"public.settings\"], template: \"{service}/{name}\" }
  - { type: value, tables: [\"public.settings\"], raw: value }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_table_as_config_keys_through_every_kind_of_change() {
    let db = TestDb::create("transforms").await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TABLE settings (service text, name text, value text, secret text, enabled bool NOT NULL DEFAULT true,
                                PRIMARY KEY (service, name));
         INSERT INTO settings VALUES ('billing', 'timeout', '30s', 'hunter2', true),
                                     ('billing', 'retries', '3', 'hunter2', true),
                                     ('search', 'shards/replicas', '5/1', 'hunter2', true),
                                     ('search', 'hidden', 'x', 'hunter2', false);",
    )
    .await
    .expect("setup");
    let p = Pipeline::new(&db, SETTINGS);
    let _guard = p.guard();
    let (token, task) = p.start();

    p.wait_for(
        "snapshot",
        &[
            ("billing/retries", "3"),
            ("billing/timeout", "30s"),
            ("search/shards%2Freplicas", "5/1"),
        ],
    )
    .await;

    pg.batch_execute(
        "INSERT INTO settings VALUES ('search', 'timeout', '2s', 'hunter2', true);
         UPDATE settings SET value = '45s' WHERE service = 'billing' AND name = 'timeout';",
    )
    .await
    .expect("insert + update");
    p.wait_for(
        "insert and update",
        &[
            ("billing/retries", "3"),
            ("billing/timeout", "45s"),
            ("search/shards%2Freplicas", "5/1"),
            ("search/timeout", "2s"),
        ],
    )
    .await;

    pg.batch_execute(
        "UPDATE settings SET service = 'payments' WHERE service = 'billing' AND name = 'retries';
         DELETE FROM settings WHERE service = 'search' AND name = 'timeout';
         UPDATE settings SET enabled = false WHERE service = 'search' AND name = 'shards/replicas';
         UPDATE settings SET enabled = true WHERE name = 'hidden';",
    )
    .await
    .expect("move, delete, filter");
    p.wait_for(
        "key move, delete, leaving and entering the filter",
        &[
            ("billing/timeout", "45s"),
            ("payments/retries", "3"),
            ("search/hidden", "x"),
        ],
    )
    .await;

    let mut client = etcd().await;
    let everything = etcd_dump(&mut client, "/").await;
    let leaked: Vec<_> = everything
        .iter()
        .filter(|(_, v)| v.contains("hunter2"))
        .collect();
    assert!(
        leaked.is_empty(),
        "the dropped secret column reached etcd: {leaked:?}"
    );

    pg.batch_execute("TRUNCATE settings")
        .await
        .expect("truncate");
    p.wait_for("truncate", &[]).await;
    pg.batch_execute("INSERT INTO settings VALUES ('after', 'truncate', 'yes', 's', true)")
        .await
        .expect("insert");
    p.wait_for("insert after truncate", &[("after/truncate", "yes")])
        .await;

    token.cancel();
    match tokio::time::timeout(Duration::from_secs(30), task).await {
        Ok(Ok(Ok(()))) => {}
        other => panic!("pipeline did not stop cleanly: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rows_mapping_to_one_key_stop_the_pipeline_naming_both() {
    let db = TestDb::create("collision").await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TABLE settings (service text, name text, value text, PRIMARY KEY (service, name));
         INSERT INTO settings VALUES ('billing', 'timeout', '30s');",
    )
    .await
    .expect("setup");
    let p = Pipeline::new(
        &db,
        "  - { type: key_template, tables: [\"public.settings\"], template: \"{service}\" }\n",
    );
    let _guard = p.guard();
    let (_token, task) = p.start();
    p.wait_for(
        "snapshot",
        &[(
            "billing",
            "{\"service\":\"billing\",\"name\":\"timeout\",\"value\":\"30s\"}",
        )],
    )
    .await;

    pg.batch_execute("INSERT INTO settings VALUES ('billing', 'retries', '3')")
        .await
        .expect("insert");
    let result = tokio::time::timeout(WAIT, task)
        .await
        .expect("pipeline stops")
        .expect("join");
    let error = result
        .expect_err("a collision must stop the pipeline")
        .to_string();
    assert!(
        error.contains("timeout") && error.contains("retries"),
        "both rows named: {error}"
    );
    assert_eq!(
        p.data().await.get("billing").map(String::as_str),
        Some("{\"service\":\"billing\",\"name\":\"timeout\",\"value\":\"30s\"}"),
        "the first row's value was not overwritten"
    );
}

const NAME_TEMPLATE: &str =
    "  - { type: key_template, tables: [\"public.settings\"], template: \"{service}/{name}\" }\n  \
                             - { type: value, tables: [\"public.settings\"], raw: value }\n";

/// `etcdsync_invalid_keys_skipped_total{table="public.settings"}` of this process.
fn invalid_keys_skipped() -> u64 {
    etcdsync_core::telemetry::get()
        .invalid_keys_skipped
        .with_label_values(&["public.settings"])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_key_component_stops_the_pipeline_naming_table_row_and_fix() {
    let db = TestDb::create("invalidkey").await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TABLE settings (id int PRIMARY KEY, service text, name text, value text);
         INSERT INTO settings VALUES (1, 'billing', 'timeout', '30s');",
    )
    .await
    .expect("setup");
    let p = Pipeline::new(&db, NAME_TEMPLATE);
    let _guard = p.guard();
    let (_token, task) = p.start();
    p.wait_for("snapshot", &[("billing/timeout", "30s")]).await;

    pg.batch_execute("UPDATE settings SET name = '' WHERE id = 1")
        .await
        .expect("update");
    let result = tokio::time::timeout(WAIT, task)
        .await
        .expect("pipeline stops")
        .expect("join");
    let error = result
        .expect_err("an empty key component must stop the pipeline")
        .to_string();
    for part in [
        "public.settings",
        "id = 1",
        "billing/`",
        "empty component",
        "sink.on_invalid_key: skip",
    ] {
        assert!(error.contains(part), "`{part}` not in: {error}");
    }
    assert_eq!(
        p.data().await.get("billing/timeout").map(String::as_str),
        Some("30s"),
        "nothing of the failed transaction was applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_invalid_key_skip_skips_the_row_deletes_its_old_key_and_counts_it() {
    let db = TestDb::create("skipkey").await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TABLE settings (id int PRIMARY KEY, service text, name text, value text);
         INSERT INTO settings VALUES (1, 'billing', 'timeout', '30s'),
                                     (2, 'billing', '', 'x'),
                                     (3, 'search', 'shards', '5');",
    )
    .await
    .expect("setup");
    let p = Pipeline::new(&db, NAME_TEMPLATE).with_sink_options("  on_invalid_key: skip\n");
    let _guard = p.guard();
    let before = invalid_keys_skipped();
    let (token, task) = p.start();

    // The snapshot skips row 2 (`billing/`) and copies the others.
    p.wait_for(
        "snapshot",
        &[("billing/timeout", "30s"), ("search/shards", "5")],
    )
    .await;
    assert!(
        invalid_keys_skipped() > before,
        "the skipped row was not counted"
    );

    // A row whose key becomes invalid loses its old key, with its key-index entries.
    let indexed = p.meta_keys().await;
    assert!(
        indexed.iter().any(|k| k.ends_with("owner/billing/timeout")),
        "{indexed:?}"
    );
    let skipped = invalid_keys_skipped();
    pg.batch_execute("UPDATE settings SET name = '' WHERE id = 1")
        .await
        .expect("update to an empty name");
    p.wait_for("old key deleted", &[("search/shards", "5")])
        .await;
    assert!(
        invalid_keys_skipped() > skipped,
        "the update was not counted"
    );
    let left = p.meta_keys().await;
    assert!(
        !left
            .iter()
            .any(|k| k.ends_with("owner/billing/timeout") || k.ends_with("index/public/settings/1")),
        "stale key-index entries: {left:?}"
    );

    // Valid again: the row comes back; an invalid insert and its delete pass without a trace.
    pg.batch_execute(
        "UPDATE settings SET name = 'retries' WHERE id = 2;
         INSERT INTO settings VALUES (4, '', 'x', 'y');
         DELETE FROM settings WHERE id = 4;
         UPDATE settings SET name = 'limit' WHERE id = 1;",
    )
    .await
    .expect("more changes");
    p.wait_for(
        "rows valid again",
        &[
            ("billing/limit", "30s"),
            ("billing/retries", "x"),
            ("search/shards", "5"),
        ],
    )
    .await;
    assert!(
        !task.is_finished(),
        "the pipeline stopped: {:?}",
        task.await
    );

    token.cancel();
    match tokio::time::timeout(Duration::from_secs(30), task).await {
        Ok(Ok(Ok(()))) => {}
        other => panic!("pipeline did not stop cleanly: {other:?}"),
    }
}
