//! The `mysql` source's `ssl-mode`s against the test MariaDB, which offers TLS with a throwaway CA
//! (tools/testenv.sh; its certificate names 127.0.0.1 and localhost only): DISABLED stays in
//! clear, REQUIRED encrypts, VERIFY_CA and VERIFY_IDENTITY verify the chain against `ssl-ca` (a
//! certificate from another CA is refused, not retried), PREFERRED is refused. Through
//! 127.0.0.2 — an address the certificate does not name, reached by a TCP forwarder in the test
//! since MariaDB listens on 127.0.0.1 only — VERIFY_CA skips the name only and syncs a snapshot
//! and the stream into etcd, and VERIFY_IDENTITY fails with an error naming the mismatch.
#![cfg(feature = "integration-tests")]

use etcdsync_core::error::display_chain;
use etcdsync_core::ErrorKind;
use etcdsync_etcd as _;
use etcdsync_mysql::config::parse_url;
use etcdsync_tests::mysql::{
    connect, converges, db_state, env, etcd, etcd_dump, exec, start, unique, url, yaml_for,
    EtcdPrefixGuard, TestDbs,
};
use mysql_async::prelude::*;
use std::time::Duration;

/// The URL of the test server with these query parameters.
fn tls_url(params: &str) -> String {
    format!("{}?{params}", url())
}

/// The cipher of a connection the source opens for `url` (empty: no TLS), or its error.
async fn cipher(url: &str) -> Result<String, String> {
    let opts = parse_url(url).map_err(|e| e.to_string())?;
    let mut conn = etcdsync_mysql::connect::connect(&opts)
        .await
        .map_err(|e| display_chain(&e))?;
    let row: Option<(String, String)> = conn
        .query_first("SHOW STATUS LIKE 'Ssl_cipher'")
        .await
        .map_err(|e| e.to_string())?;
    let _ = conn.disconnect().await;
    Ok(row.map(|(_, v)| v).unwrap_or_default())
}

/// A CA that did not sign the server's certificate.
fn other_ca() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("other-ca"));
    std::fs::create_dir_all(&dir).expect("dir");
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("ca.pem"))
        .args(["-subj", "/CN=other test CA"])
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("ca.pem")
}

/// Forwards TCP connections from 127.0.0.2:<free port> to the test MariaDB (127.0.0.1), so the
/// client connects by an address the server's certificate does not name. Stops accepting when
/// dropped.
struct Forwarder {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start() -> Forwarder {
        let opts = mysql_async::Opts::from_url(&url()).expect("ETCDSYNC_TEST_MYSQL");
        let server = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0")
            .await
            .expect("bind 127.0.0.2 (loopback)");
        let port = listener.local_addr().expect("address").port();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(&server).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        Forwarder { port, task }
    }

    /// The test server's URL through the forwarder, with these query parameters.
    fn url(&self, params: &str) -> String {
        let base = url();
        let (scheme_user, rest) = base.rsplit_once('@').expect("user@host in the URL");
        let path = rest.find('/').map_or("/", |i| &rest[i..]);
        format!("{scheme_user}@127.0.0.2:{}{path}?{params}", self.port)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ca() -> String {
    env("ETCDSYNC_TEST_MYSQL_TLS_CA")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_modes_encrypt_and_verify_as_named() {
    let ca = ca();
    assert_eq!(cipher(&url()).await.expect("DISABLED"), "");
    assert_eq!(
        cipher(&tls_url("ssl-mode=DISABLED"))
            .await
            .expect("DISABLED"),
        ""
    );
    assert_ne!(
        cipher(&tls_url("ssl-mode=REQUIRED"))
            .await
            .expect("REQUIRED"),
        ""
    );
    assert_ne!(
        cipher(&tls_url(&format!("ssl-mode=VERIFY_CA&ssl-ca={ca}")))
            .await
            .expect("VERIFY_CA"),
        ""
    );
    // The certificate names 127.0.0.1 and localhost.
    for host in ["127.0.0.1", "localhost"] {
        let by_name =
            tls_url(&format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}")).replace("127.0.0.1", host);
        assert_ne!(
            cipher(&by_name).await.expect("VERIFY_IDENTITY"),
            "",
            "{host}"
        );
    }
    let other = other_ca();
    for mode in ["VERIFY_CA", "VERIFY_IDENTITY"] {
        let refused = cipher(&tls_url(&format!(
            "ssl-mode={mode}&ssl-ca={}",
            other.display()
        )))
        .await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("certificate") && e.contains("ssl-ca")),
            "{mode} with another CA must be refused: {refused:?}"
        );
    }
    let preferred = cipher(&tls_url("ssl-mode=PREFERRED")).await;
    assert!(
        preferred.as_ref().is_err_and(|e| e.contains("PREFERRED")),
        "{preferred:?}"
    );
}

/// Through 127.0.0.2: VERIFY_CA connects (the chain is verified, the name is not), also again
/// with the name it learnt; VERIFY_IDENTITY is refused naming the mismatch; another CA is
/// refused under VERIFY_CA, before and after a name was learnt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_skips_only_the_name() {
    let ca = ca();
    let other = other_ca();
    let forwarder = Forwarder::start().await;
    let verify_ca = forwarder.url(&format!("ssl-mode=VERIFY_CA&ssl-ca={ca}"));
    let wrong_ca = forwarder.url(&format!("ssl-mode=VERIFY_CA&ssl-ca={}", other.display()));

    let refused = cipher(&wrong_ca).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("certificate was refused") && e.contains("ssl-ca")),
        "VERIFY_CA with another CA: {refused:?}"
    );
    assert_eq!(
        cipher(&forwarder.url("ssl-mode=DISABLED"))
            .await
            .expect("DISABLED via 127.0.0.2"),
        ""
    );
    assert_ne!(
        cipher(&forwarder.url("ssl-mode=REQUIRED"))
            .await
            .expect("REQUIRED via 127.0.0.2"),
        ""
    );
    for attempt in ["first", "with the learnt name"] {
        assert_ne!(
            cipher(&verify_ca)
                .await
                .unwrap_or_else(|e| panic!("VERIFY_CA via 127.0.0.2 ({attempt}): {e}")),
            "",
            "{attempt}"
        );
    }
    let refused = cipher(&wrong_ca).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("certificate was refused")),
        "VERIFY_CA with another CA, a name learnt: {refused:?}"
    );

    let identity = cipher(&forwarder.url(&format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"))).await;
    let message = identity.expect_err("VERIFY_IDENTITY by a name the certificate lacks");
    assert!(
        message.contains("not valid for the name `127.0.0.2`")
            && message.contains("127.0.0.1")
            && message.contains("localhost")
            && message.contains("VERIFY_CA"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_by_an_unnamed_address_syncs_snapshot_and_stream_into_etcd() {
    let dbs = TestDbs::create("my_tls", 1).await;
    let name = dbs.name(0).to_string();
    let include = vec![format!("{name}.*")];
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE `{name}`.t (id INT PRIMARY KEY, v INT);
             INSERT INTO `{name}`.t VALUES (1, 1)"
        ),
    )
    .await;
    let forwarder = Forwarder::start().await;
    let pipeline = unique("tls").replace('_', "-");
    let prefix = format!("/{pipeline}");
    let _guard = EtcdPrefixGuard(vec![format!("{prefix}/"), format!("{prefix}-meta/")]);
    let source_url = forwarder.url(&format!("ssl-mode=VERIFY_CA&ssl-ca={}", ca()));
    let running = start(&yaml_for(&pipeline, &source_url, &include, &prefix));

    converges(&prefix, &db_state(&include, &prefix).await).await;
    exec(&mut db, &format!("INSERT INTO `{name}`.t VALUES (2, 2)")).await;
    converges(&prefix, &db_state(&include, &prefix).await).await;
    assert_eq!(
        etcd_dump(&mut etcd().await, &format!("{prefix}/"))
            .await
            .len(),
        2
    );
    running.stop().await;
}

/// The pipeline stops (no retries) on a certificate it must not accept, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_certificates_stop_the_pipeline_with_the_reason() {
    let dbs = TestDbs::create("my_tls_bad", 1).await;
    let include = vec![format!("{}.*", dbs.name(0))];
    let forwarder = Forwarder::start().await;
    let other = other_ca();
    for (params, expected) in [
        (
            format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", ca()),
            "not valid for the name `127.0.0.2`",
        ),
        (
            format!("ssl-mode=VERIFY_CA&ssl-ca={}", other.display()),
            "certificate was refused",
        ),
    ] {
        let pipeline = unique("tlsbad").replace('_', "-");
        let prefix = format!("/{pipeline}");
        let _guard = EtcdPrefixGuard(vec![format!("{prefix}/"), format!("{prefix}-meta/")]);
        let running = start(&yaml_for(
            &pipeline,
            &forwarder.url(&params),
            &include,
            &prefix,
        ));
        let error = running.failed(Duration::from_secs(30)).await;
        let message = display_chain(&error);
        assert!(message.contains(expected), "{params}: {message}");
        assert_eq!(error.kind(), ErrorKind::Config, "{params}: {message}");
    }
}
