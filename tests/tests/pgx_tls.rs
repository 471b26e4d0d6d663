//! The `pgx` source over TLS against the test PostgreSQL (ssl = on with a throwaway CA whose
//! server certificate names 127.0.0.1 and localhost): `verify-full` with the CA syncs snapshot
//! and stream, both query and replication sessions; `verify-full` without the CA fails with an
//! error naming the certificate problem, not a retry; `verify-ca` accepts the CA's certificate
//! reached by an address or a name it does not carry (both sessions), which `verify-full`
//! refuses; `prefer` against a server refusing TLS syncs in clear and warns once.
#![cfg(feature = "integration-tests")]

use etcdsync_core::config::PipelineConfig;
use etcdsync_core::{ErrorKind, TableId};
use etcdsync_etcd as _;
use etcdsync_pgx as _;
use etcdsync_tests::pg::{
    env, etcd, etcd_dump, eventually, expected, unique, EtcdPrefixGuard, TestDb,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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
/// without `sslrootcert` it is refused. (The certificate names 127.0.0.1: the name-mismatch
/// path is [`verify_ca_through_an_address_the_certificate_does_not_name`] and
/// [`verify_ca_accepts_and_verify_full_refuses_a_host_name_the_certificate_does_not_have`].)
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

/// The test PostgreSQL's address (of `ETCDSYNC_TEST_PG`, which the test databases share).
fn pg_address() -> SocketAddr {
    let config: tokio_postgres::Config = env("ETCDSYNC_TEST_PG").parse().expect("ETCDSYNC_TEST_PG");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        other => panic!("ETCDSYNC_TEST_PG has no TCP host: {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}").parse().expect("an IP address")
}

/// `db`'s URL with its `host:port` replaced.
fn url_at(db: &TestDb, host_port: &str) -> String {
    let server = pg_address();
    let from = format!("@{server}/");
    assert!(db.url.contains(&from), "{} has no {from}", db.url);
    db.url.replace(&from, &format!("@{host_port}/"))
}

/// The pipeline config for a source URL and TLS settings.
fn yaml_for(url: &str, name: &str, data: &str, tls: &str) -> String {
    format!(
        "name: {name}\nsource: {{ type: pgx, url: \"{url}\", {tls} tables: {{ include: [\"public.*\"] }} }}\n\
         sink: {{ type: etcd, endpoints: [\"{}\"], prefix: {data}, meta_prefix: /tm-{name} }}\n",
        env("ETCDSYNC_TEST_ETCD")
    )
}

/// `sslmode: verify-ca` with the test CA.
fn verify_ca() -> String {
    format!(
        "sslmode: verify-ca, sslrootcert: \"{}\",",
        env("ETCDSYNC_TEST_PG_TLS_CA")
    )
}

/// Runs the pipeline of `text` until table `items` of `db` (one row already) is in etcd
/// under `data`, inserts a second row, waits for it (the replication session), and stops.
async fn sync_snapshot_and_stream(db: &TestDb, text: &str, data: &str) {
    let config = PipelineConfig::parse(text).expect("config");
    let token = CancellationToken::new();
    let stop = token.clone();
    let task = tokio::spawn(async move { etcdsync_core::pipeline::run_once(&config, stop).await });
    let table = TableId::new("public", "items");
    let matches = || async {
        let want = expected(&db.client().await, data, &table, &["id"]).await;
        etcd_dump(&mut etcd().await, &format!("{data}/")).await == want
    };
    assert!(
        eventually(Duration::from_secs(60), matches).await,
        "snapshot"
    );
    db.client()
        .await
        .batch_execute("INSERT INTO items VALUES (2, 'two')")
        .await
        .expect("insert");
    assert!(
        eventually(Duration::from_secs(60), matches).await,
        "stream (the replication session)"
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

/// A database with table `items` holding one row.
async fn items_db(prefix: &str) -> TestDb {
    let db = TestDb::create(prefix).await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, label text); INSERT INTO items VALUES (1, 'one');",
        )
        .await
        .expect("setup");
    db
}

/// The first bytes of PostgreSQL's SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A TCP forwarder to the test PostgreSQL, listening on `ip` (any port). With `refuse_tls` it
/// answers a client's SSLRequest with `N`, as a server without TLS does, and forwards the
/// rest in clear. It runs until the test's runtime ends.
struct Forwarder {
    addr: SocketAddr,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
    /// SSLRequests answered with `N`.
    refused: Arc<AtomicUsize>,
}

async fn forwarder(ip: &str, refuse_tls: bool) -> Forwarder {
    let upstream = pg_address();
    let listener = TcpListener::bind((ip, 0))
        .await
        .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
    let forwarder = Forwarder {
        addr: listener.local_addr().expect("address"),
        connections: Arc::default(),
        refused: Arc::default(),
    };
    let (connections, refused) = (forwarder.connections.clone(), forwarder.refused.clone());
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            let refused = refused.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 8];
                if refuse_tls && client.read_exact(&mut first).await.is_err() {
                    return;
                }
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    return;
                };
                if refuse_tls {
                    let sent = if first == SSL_REQUEST {
                        refused.fetch_add(1, Ordering::SeqCst);
                        client.write_all(b"N").await
                    } else {
                        server.write_all(&first).await
                    };
                    if sent.is_err() {
                        return;
                    }
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    forwarder
}

/// verify-ca through 127.0.0.2 (loopback, not in the certificate): the chain is the CA's, so
/// snapshot (query connections) and stream (replication session) both sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_through_an_address_the_certificate_does_not_name() {
    let db = items_db("pg_tls_addr").await;
    let relay = forwarder("127.0.0.2", false).await;
    let name = unique("tlsaddr").replace('_', "-");
    let data = format!("/tls-{name}");
    let _guard = EtcdPrefixGuard(vec![format!("{data}/"), format!("/tm-{name}/")]);
    let url = url_at(&db, &relay.addr.to_string());
    sync_snapshot_and_stream(&db, &yaml_for(&url, &name, &data, &verify_ca()), &data).await;
    // The query connections and the replication session all went through 127.0.0.2.
    assert!(relay.connections.load(Ordering::SeqCst) >= 2);
}

/// A host name the certificate does not have (`hostaddr` says where the server is, the host is
/// what TLS verifies, as in libpq), at an address it does not have either (127.0.0.2):
/// verify-ca syncs on both sessions; verify-full refuses with an error naming the host, and
/// does not retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_accepts_and_verify_full_refuses_a_host_name_the_certificate_does_not_have() {
    let db = items_db("pg_tls_name").await;
    let relay = forwarder("127.0.0.2", false).await;
    let name = unique("tlsname").replace('_', "-");
    let data = format!("/tls-{name}");
    let _guard = EtcdPrefixGuard(vec![format!("{data}/"), format!("/tm-{name}/")]);
    let url = format!(
        "{}?hostaddr={}",
        url_at(&db, &format!("wrong-name.invalid:{}", relay.addr.port())),
        relay.addr.ip()
    );
    sync_snapshot_and_stream(&db, &yaml_for(&url, &name, &data, &verify_ca()), &data).await;

    let tls = format!(
        "sslmode: verify-full, sslrootcert: \"{}\",",
        env("ETCDSYNC_TEST_PG_TLS_CA")
    );
    let config = PipelineConfig::parse(&yaml_for(&url, &name, &data, &tls)).expect("config");
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        etcdsync_core::pipeline::run_once(&config, CancellationToken::new()),
    )
    .await
    .expect("fails promptly");
    let error = result.expect_err("verify-full with a name the certificate does not have");
    let message = etcdsync_core::error::display_chain(&error);
    assert!(message.contains("not valid for name"), "{message}");
    assert!(message.contains("wrong-name.invalid"), "{message}");
    assert_ne!(
        error.kind(),
        ErrorKind::Transient,
        "retrying cannot fix a certificate: {message}"
    );
}

/// What a test's tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut out) = self.0.lock() {
            out.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|out| String::from_utf8_lossy(&out).into_owned())
            .unwrap_or_default()
    }
}

/// `sslmode: prefer` against a server that refuses TLS (a forwarder answering `N`): every
/// connection, the replication session too, goes on in clear, the pipeline syncs, and one
/// warning says so. The runtime is single-threaded so that the test's subscriber (this
/// thread's default) sees the pipeline's tasks.
#[tokio::test(flavor = "current_thread")]
async fn prefer_without_tls_on_the_server_syncs_in_clear_and_warns_once() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let db = items_db("pg_tls_prefer").await;
    let relay = forwarder("127.0.0.2", true).await;
    let name = unique("tlsprefer").replace('_', "-");
    let data = format!("/tls-{name}");
    let _guard = EtcdPrefixGuard(vec![format!("{data}/"), format!("/tm-{name}/")]);
    let url = url_at(&db, &relay.addr.to_string());
    sync_snapshot_and_stream(
        &db,
        &yaml_for(&url, &name, &data, "sslmode: prefer,"),
        &data,
    )
    .await;

    // Catalog and snapshot connections, and the replication sessions (slot, stream): all
    // asked for TLS, were refused, and went on in clear.
    let refused = relay.refused.load(Ordering::SeqCst);
    assert!(refused >= 4, "SSLRequests refused: {refused}");
    assert_eq!(refused, relay.connections.load(Ordering::SeqCst));
    let text = logs.text();
    let warnings = text
        .lines()
        .filter(|line| line.contains("fell back to an unencrypted connection"))
        .collect::<Vec<_>>();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("WARN"), "{text}");
}
