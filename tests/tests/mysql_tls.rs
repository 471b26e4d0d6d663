//! The `mysql` source's `ssl-mode`s against the test MariaDB, which offers TLS with a throwaway CA
//! (tools/testenv.sh): DISABLED stays in clear, REQUIRED encrypts, VERIFY_CA and VERIFY_IDENTITY
//! verify the chain against `ssl-ca` (a certificate from another CA is refused: VERIFY_CA skips
//! the name only), and a snapshot + binlog stream run over VERIFY_CA.
#![cfg(feature = "integration-tests")]

use etcdsync_core::Message;
use etcdsync_mysql::config::parse_url;
use etcdsync_tests::mysql::{connect, env, exec, snapshot_done, unique, url, SourceRun, TestDbs};
use mysql_async::prelude::*;
use std::time::Duration;

/// The URL of the test server with these query parameters.
fn tls_url(params: &str) -> String {
    format!("{}?{params}", url())
}

/// The cipher of a connection made with the source's URL parsing (empty: no TLS).
async fn cipher(url: &str) -> Result<String, String> {
    let opts = parse_url(url).map_err(|e| e.to_string())?;
    let mut conn = mysql_async::Conn::new(opts)
        .await
        .map_err(|e| e.to_string())?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_modes_encrypt_and_verify_as_named() {
    let ca = env("ETCDSYNC_TEST_MYSQL_TLS_CA");
    assert_eq!(cipher(&url()).await.expect("DISABLED"), "");
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
    assert_ne!(
        cipher(&tls_url(&format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}")))
            .await
            .expect("VERIFY_IDENTITY"),
        ""
    );
    let other = other_ca();
    for mode in ["VERIFY_CA", "VERIFY_IDENTITY"] {
        let refused = cipher(&tls_url(&format!(
            "ssl-mode={mode}&ssl-ca={}",
            other.display()
        )))
        .await;
        assert!(
            refused.is_err(),
            "{mode} with another CA must be refused: {refused:?}"
        );
    }
    let preferred = cipher(&tls_url("ssl-mode=PREFERRED")).await;
    assert!(
        preferred.as_ref().is_err_and(|e| e.contains("PREFERRED")),
        "{preferred:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_stream_over_verify_ca() {
    let dbs = TestDbs::create("my_tls", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE `{name}`.t (id INT PRIMARY KEY, v INT);
             INSERT INTO `{name}`.t VALUES (1, 1)"
        ),
    )
    .await;
    let yaml = format!(
        "type: mysql\nurl: \"{}\"\ntables: {{ include: [\"{name}.*\"] }}\n",
        tls_url(&format!(
            "ssl-mode=VERIFY_CA&ssl-ca={}",
            env("ETCDSYNC_TEST_MYSQL_TLS_CA")
        ))
    );
    let run = SourceRun::start(&yaml, &unique("tls"), None).await;
    run.wait_for("snapshot", Duration::from_secs(60), snapshot_done)
        .await;
    exec(&mut db, &format!("INSERT INTO `{name}`.t VALUES (2, 2)")).await;
    run.wait_for("a streamed insert", Duration::from_secs(60), |m| {
        m.iter().any(|m| matches!(m, Message::Commit(_)))
    })
    .await;
    let (messages, _) = run.stop().await;
    let state = etcdsync_tests::mysql::apply(&messages, "/p");
    assert_eq!(state.len(), 2, "{state:?}");
}
