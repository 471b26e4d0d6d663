//! The `mysql` source into the real etcd sink through `core::pipeline::run` (YAML config):
//! snapshot + stream of two databases, then a stop, changes while stopped, and a restart from
//! the checkpoint in etcd; every key and value in etcd is compared with the database.
#![cfg(feature = "integration-tests")]

use etcdsync_core::config::PipelineConfig;
use etcdsync_etcd as _;
use etcdsync_mysql as _;
use etcdsync_tests::mysql::{
    connect, db_state, env, etcd, etcd_dump, eventually, exec, unique, url, EtcdPrefixGuard,
    TestDbs,
};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

fn pipeline_yaml(name: &str, dbs: &TestDbs, prefix: &str) -> String {
    let include = dbs
        .names
        .iter()
        .map(|n| format!("\"{n}.*\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "name: {name}
source:
  type: mysql
  url: \"{}\"
  tables: {{ include: [{include}] }}
sink:
  type: etcd
  endpoints: [\"{}\"]
  prefix: \"{prefix}\"
  meta_prefix: \"{prefix}-meta\"
",
        url(),
        env("ETCDSYNC_TEST_ETCD")
    )
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<etcdsync_core::Result<()>>,
}

fn start(yaml: &str) -> Running {
    let config = PipelineConfig::parse(yaml).unwrap_or_else(|e| panic!("config: {e}"));
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { etcdsync_core::pipeline::run(&config, token).await });
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        match tokio::time::timeout(Duration::from_secs(30), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("pipeline failed: {e}"),
            Ok(Err(e)) => panic!("pipeline panicked: {e}"),
            Err(_) => panic!("pipeline did not stop within 30 s"),
        }
    }
}

async fn converges(prefix: &str, expected: &BTreeMap<String, String>) -> bool {
    let mut client = etcd().await;
    let data_prefix = format!("{prefix}/");
    let ok = eventually(WAIT, || {
        let mut client = client.clone();
        let data_prefix = data_prefix.clone();
        async move { etcd_dump(&mut client, &data_prefix).await == *expected }
    })
    .await;
    if !ok {
        let got = etcd_dump(&mut client, &data_prefix).await;
        panic!("etcd did not converge:\n got: {got:#?}\nwant: {expected:#?}");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_stream_stop_and_resume_into_etcd() {
    let dbs = TestDbs::create("my_e2e", 2).await;
    let (a, b) = (dbs.name(0).to_string(), dbs.name(1).to_string());
    let name = unique("e2e");
    let prefix = format!("/{name}");
    let _guard = EtcdPrefixGuard(vec![format!("{prefix}/"), format!("{prefix}-meta/")]);
    let include: Vec<String> = dbs.names.iter().map(|n| format!("{n}.*")).collect();
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE `{a}`.orders (region CHAR(2), id BIGINT UNSIGNED, total DECIMAL(10,2), placed DATETIME(3), PRIMARY KEY (region, id));
             INSERT INTO `{a}`.orders VALUES ('eu', 1, 10.50, '2024-01-02 03:04:05.600'), ('us', 18446744073709551615, 0.00, NULL);
             CREATE TABLE `{b}`.users (id INT PRIMARY KEY, name VARCHAR(40), tags SET('x','y','z'));
             INSERT INTO `{b}`.users VALUES (1, 'ann/a', 'x,z'), (2, 'bob', '')"
        ),
    )
    .await;
    let yaml = pipeline_yaml(&name, &dbs, &prefix);
    let running = start(&yaml);
    converges(&prefix, &db_state(&include, &prefix).await).await;

    exec(
        &mut db,
        &format!(
            "INSERT INTO `{a}`.orders VALUES ('eu', 2, 99.99, NOW(3));
             UPDATE `{a}`.orders SET id = 3 WHERE region = 'eu' AND id = 1;
             UPDATE `{b}`.users SET tags = 'y' WHERE id = 2;
             DELETE FROM `{b}`.users WHERE id = 1"
        ),
    )
    .await;
    converges(&prefix, &db_state(&include, &prefix).await).await;
    running.stop().await;

    let mut client = etcd().await;
    let meta = etcd_dump(&mut client, &format!("{prefix}-meta/")).await;
    let checkpoint = meta
        .iter()
        .find(|(k, _)| k.ends_with("checkpoint"))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no checkpoint in {meta:#?}"));
    assert!(checkpoint.contains("\"source\":\"mysql\""), "{checkpoint}");

    // Changes while stopped, then a restart that resumes from the checkpoint.
    exec(
        &mut db,
        &format!(
            "INSERT INTO `{b}`.users VALUES (3, 'cé', 'x,y,z');
             TRUNCATE TABLE `{a}`.orders;
             INSERT INTO `{a}`.orders VALUES ('ap', 7, 7.00, '2000-01-01 00:00:00')"
        ),
    )
    .await;
    let running = start(&yaml);
    converges(&prefix, &db_state(&include, &prefix).await).await;
    let state = etcd_dump(&mut client, &format!("{prefix}/")).await;
    assert_eq!(
        state
            .get(&format!("{prefix}/{b}/users/3"))
            .map(String::as_str),
        Some(r#"{"id":3,"name":"cé","tags":["x","y","z"]}"#)
    );
    assert_eq!(
        state
            .get(&format!("{prefix}/{a}/orders/ap/7"))
            .map(String::as_str),
        Some(r#"{"region":"ap","id":7,"total":"7.00","placed":"2000-01-01T00:00:00"}"#)
    );
    running.stop().await;
}
