//! Transforms end to end on real PostgreSQL and etcd (issue 5): a `settings` table synced to
//! `{prefix}/{service}/{name}` with raw values through snapshot, insert, update, key move,
//! delete and truncate; a dropped secret column never reaching etcd; a row leaving a filter
//! deleted; a key collision stopping the pipeline naming both rows.
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
