//! The `pgx` source over TLS against the test PostgreSQL (ssl = on with a throwaway CA):
//! `verify-full` with the CA syncs snapshot and stream, both query and replication sessions;
//! `verify-full` without the CA fails with an error naming the certificate problem, not a retry.
#![cfg(feature = "integration-tests")]

use etcdsync_core::config::PipelineConfig;
use etcdsync_core::{ErrorKind, TableId};
use etcdsync_etcd as _;
use etcdsync_pgx as _;
use etcdsync_tests::pg::{
    env, etcd, etcd_dump, eventually, expected, unique, EtcdPrefixGuard, TestDb,
};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The pipeline config, connecting by host name: certificates are verified against it.
fn yaml(db: &TestDb, name: &str, data: &str, tls: &str) -> String {
    let url = db.url.replace("@127.0.0.1:", "@localhost:");
    format!(
        "name: {name}\nsource: {{ type: pgx, url: \"{}\", {tls} tables: {{ include: [\"public.*\"] }} }}\n\
         sink: {{ type: etcd, endpoints: [\"{}\"], prefix: {data}, meta_prefix: /tm-{name} }}\n",
        url,
        env("ETCDSYNC_TEST_ETCD")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_ca_syncs_snapshot_and_stream() {
    let db = TestDb::create("pg_tls").await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, label text); INSERT INTO items VALUES (1, 'one');",
    )
    .await
    .expect("setup");
    let name = unique("tls").replace('_', "-");
    let data = format!("/tls-{name}");
    let _guard = EtcdPrefixGuard(vec![format!("{data}/"), format!("/tm-{name}/")]);
    let tls = format!(
        "sslmode: verify-full, sslrootcert: \"{}\",",
        env("ETCDSYNC_TEST_PG_TLS_CA")
    );
    let config = PipelineConfig::parse(&yaml(&db, &name, &data, &tls)).expect("config");
    let token = CancellationToken::new();
    let stop = token.clone();
    let task = tokio::spawn(async move { etcdsync_core::pipeline::run_once(&config, stop).await });

    let table = TableId::new("public", "items");
    let matches = || async {
        let want = expected(&db.client().await, &data, &table, &["id"]).await;
        etcd_dump(&mut etcd().await, &format!("{data}/")).await == want
    };
    assert!(
        eventually(Duration::from_secs(60), matches).await,
        "snapshot over TLS"
    );
    pg.batch_execute("INSERT INTO items VALUES (2, 'two')")
        .await
        .expect("insert");
    assert!(
        eventually(Duration::from_secs(60), matches).await,
        "stream over TLS"
    );
    assert_eq!(
        etcd_dump(&mut etcd().await, &format!("{data}/"))
            .await
            .len(),
        2
    );

    token.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("stops")
        .expect("join")
        .expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_without_the_ca_is_a_certificate_error() {
    let db = TestDb::create("pg_tls_bad").await;
    let name = unique("tlsbad").replace('_', "-");
    let data = format!("/tlsbad-{name}");
    let _guard = EtcdPrefixGuard(vec![format!("{data}/"), format!("/tm-{name}/")]);
    let config =
        PipelineConfig::parse(&yaml(&db, &name, &data, "sslmode: verify-full,")).expect("config");
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        etcdsync_core::pipeline::run_once(&config, CancellationToken::new()),
    )
    .await
    .expect("fails promptly");
    let error = result.expect_err("an untrusted server certificate must fail");
    let message = etcdsync_core::error::display_chain(&error).to_lowercase();
    assert!(message.contains("certificate"), "{message}");
    assert_ne!(
        error.kind(),
        ErrorKind::Transient,
        "retrying cannot fix a certificate: {message}"
    );
}

/// `verify-ca` by IP address syncs on the query connections and the replication session alike;
/// without `sslrootcert` it is refused. (The test certificate names both `localhost` and
/// 127.0.0.1, so this does not reach the name-mismatch path, which pgwire-replication's own
/// verify-ca gets wrong for DNS names with rustls 0.23: see docs/operations.md, Security.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_by_ip_address_syncs_snapshot_and_stream() {
    let db = TestDb::create("pg_tls_ca").await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, label text); INSERT INTO items VALUES (1, 'one');",
    )
    .await
    .expect("setup");
    let name = unique("tlsca").replace('_', "-");
    let data = format!("/tls-{name}");
    let _guard = EtcdPrefixGuard(vec![format!("{data}/"), format!("/tm-{name}/")]);
    let tls = format!(
        "sslmode: verify-ca, sslrootcert: \"{}\",",
        env("ETCDSYNC_TEST_PG_TLS_CA")
    );
    let text = yaml(&db, &name, &data, &tls).replace("@localhost:", "@127.0.0.1:");
    let config = PipelineConfig::parse(&text).expect("config");
    let token = CancellationToken::new();
    let stop = token.clone();
    let task = tokio::spawn(async move { etcdsync_core::pipeline::run_once(&config, stop).await });
    let table = TableId::new("public", "items");
    let matches = || async {
        let want = expected(&db.client().await, &data, &table, &["id"]).await;
        etcd_dump(&mut etcd().await, &format!("{data}/")).await == want
    };
    assert!(
        eventually(Duration::from_secs(60), matches).await,
        "snapshot over verify-ca"
    );
    pg.batch_execute("INSERT INTO items VALUES (2, 'two')")
        .await
        .expect("insert");
    assert!(
        eventually(Duration::from_secs(60), matches).await,
        "stream over verify-ca (the replication session)"
    );
    token.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("stops")
        .expect("join")
        .expect("clean stop");

    // Without a CA file verify-ca would trust any public CA for any name: refused.
    let text = yaml(&db, &name, &data, "sslmode: verify-ca,");
    let error = PipelineConfig::parse(&text).expect_err("verify-ca without sslrootcert");
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
    assert!(error.to_string().contains("sslrootcert"), "{error}");
}
