//! TLS (CA + client certificate) and username/password against the test environment's second
//! etcd (`ETCDSYNC_TEST_ETCD_TLS*`, `ETCDSYNC_TEST_ETCD_USER`/`_PASSWORD`).
#![cfg(feature = "integration-tests")]

mod common;

use common::*;
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use etcdsync_core::ErrorKind;

fn read(var: &str) -> Vec<u8> {
    let path = env(var);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{var}={path}: {e}"))
}

/// Client options for the TLS etcd as the test environment's user.
fn options(_endpoint: &str) -> Option<ConnectOptions> {
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read("ETCDSYNC_TEST_ETCD_TLS_CA")))
        .identity(Identity::from_pem(
            read("ETCDSYNC_TEST_ETCD_TLS_CERT"),
            read("ETCDSYNC_TEST_ETCD_TLS_KEY"),
        ));
    Some(
        ConnectOptions::new()
            .with_user(
                env("ETCDSYNC_TEST_ETCD_USER"),
                env("ETCDSYNC_TEST_ETCD_PASSWORD"),
            )
            .with_tls(tls),
    )
}

fn tls_yaml(p: &Prefixes, password: &str, tls: &str) -> String {
    p.yaml(&format!(
        "username: {}\npassword: \"{password}\"\n{tls}",
        env("ETCDSYNC_TEST_ETCD_USER")
    ))
}

fn full_tls() -> String {
    format!(
        "tls:\n  ca: {}\n  cert: {}\n  key: {}\n",
        env("ETCDSYNC_TEST_ETCD_TLS_CA"),
        env("ETCDSYNC_TEST_ETCD_TLS_CERT"),
        env("ETCDSYNC_TEST_ETCD_TLS_KEY")
    )
}

#[tokio::test]
async fn tls_and_password_authentication() {
    let url = env("ETCDSYNC_TEST_ETCD_TLS");
    let p = Prefixes::with_options("tls", &url, options);
    let config = parse(&tls_yaml(
        &p,
        &env("ETCDSYNC_TEST_ETCD_PASSWORD"),
        &full_tls(),
    ))
    .expect("valid");
    let debug = format!("{config:?}");
    assert!(
        debug.contains("password: Some(\"***\")"),
        "password not redacted: {debug}"
    );
    let mut sink = start(&tls_yaml(
        &p,
        &env("ETCDSYNC_TEST_ETCD_PASSWORD"),
        &full_tls(),
    ))
    .await;
    let t = table("public", "secure");
    sink.txn(vec![insert(&t, 1, "a"), insert(&t, 2, "b")], 1)
        .await;
    sink.wait_ack(&pos(1)).await;
    sink.close().await.expect("clean stop");

    let mut etcd = etcd_client::Client::connect([url.as_str()], options(&url))
        .await
        .expect("connect");
    assert_eq!(
        get(&mut etcd, &p.key("public", "secure", 1)).await,
        Some(json(1, "a"))
    );
    let mut sink = build(&tls_yaml(
        &p,
        &env("ETCDSYNC_TEST_ETCD_PASSWORD"),
        &full_tls(),
    ))
    .await
    .expect("build");
    assert_eq!(
        sink.checkpoint().await.expect("read").map(|c| c.position),
        Some(pos(1))
    );
}

#[tokio::test]
async fn a_wrong_password_is_a_config_error_naming_the_keys() {
    let url = env("ETCDSYNC_TEST_ETCD_TLS");
    let p = Prefixes::with_options("tls-badpw", &url, options);
    let error = build(&tls_yaml(&p, "wrong-password", &full_tls()))
        .await
        .err()
        .expect("refused");
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
    let message = error.to_string();
    assert!(
        message.contains("sink.username") && message.contains("sink.password"),
        "{message}"
    );
    assert!(
        !message.contains("wrong-password"),
        "password in the message: {message}"
    );
}

#[tokio::test]
async fn an_untrusted_server_certificate_is_a_config_error_naming_sink_tls() {
    let url = env("ETCDSYNC_TEST_ETCD_TLS");
    let p = Prefixes::with_options("tls-noca", &url, options);
    // No `ca`: the system roots do not know the test CA.
    let error = build(&tls_yaml(&p, &env("ETCDSYNC_TEST_ETCD_PASSWORD"), ""))
        .await
        .err()
        .expect("refused");
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
    assert!(error.to_string().contains("sink.tls"), "{error}");
}
