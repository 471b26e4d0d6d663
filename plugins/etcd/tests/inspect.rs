//! The etcd inspector's `check` against real etcds (`ETCDSYNC_TEST_ETCD`, the TLS one with its
//! user, and private ones started with authentication or other limits): passing without
//! writing (unless asked to probe), write permission read from the user's roles, an
//! unreachable endpoint, a wrong password, limits above the server's and a NOSPACE alarm named
//! with their fix. `verify` reads and `--repair` are in verify_repair.rs, the status key and
//! metrics in sink_status.rs.
#![cfg(feature = "integration-tests")]

mod common;

use common::*;
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use etcdsync_core::inspect::{CheckOptions, CheckResult};
use etcdsync_core::sink::SinkContext;

/// The check names, in the order `check` reports them.
const CHECKS_AFTER_REACHABLE: [&str; 9] = [
    "etcd version",
    "etcd authentication",
    "etcd alarms",
    "sink.prefix / sink.meta_prefix",
    "permissions on sink.meta_prefix",
    "permissions on sink.prefix",
    "sink.max_txn_ops",
    "sink.max_request_bytes",
    "checkpoint",
];

/// Runs the read-only `check` and prints its report (shown with `--nocapture` or on failure).
async fn check(yaml: &str) -> Vec<CheckResult> {
    check_with(yaml, CheckOptions::default()).await
}

/// `check --write-probe`.
async fn check_probing(yaml: &str) -> Vec<CheckResult> {
    check_with(yaml, CheckOptions { write_probe: true }).await
}

async fn check_with(yaml: &str, options: CheckOptions) -> Vec<CheckResult> {
    let results = inspector(yaml).await.check(options).await;
    eprintln!("{}\n", report(&results));
    results
}

/// etcd's revision and raft index: neither moves unless something is written.
async fn write_marks(client: &mut etcd_client::Client) -> (i64, u64) {
    let status = client.status().await.expect("etcd status");
    let revision = status.header().map(|h| h.revision()).expect("header");
    (revision, status.raft_index())
}

fn report(results: &[CheckResult]) -> String {
    results
        .iter()
        .map(|r| match &r.fix {
            None => format!(
                "[{}] {}: {}",
                if r.ok { "ok" } else { "FAIL" },
                r.name,
                r.detail
            ),
            Some(fix) => format!("[FAIL] {}: {} — fix: {fix}", r.name, r.detail),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn named<'a>(results: &'a [CheckResult], name: &str) -> &'a CheckResult {
    results
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no check `{name}` in\n{}", report(results)))
}

fn assert_all_pass(results: &[CheckResult], url: &str) {
    let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
    let reachable = format!("etcd reachable ({url})");
    let mut expected = vec![reachable.as_str()];
    expected.extend(CHECKS_AFTER_REACHABLE);
    assert_eq!(names, expected, "{}", report(results));
    assert!(results.iter().all(|r| r.ok), "{}", report(results));
}

#[tokio::test]
async fn check_passes_on_the_test_etcd_and_leaves_no_probe_behind() {
    let url = etcd_url();
    let p = Prefixes::new("check-ok", &url);
    let mut etcd = client(&url).await;
    let results = check(&p.yaml("")).await;
    assert_all_pass(&results, &url);
    assert!(
        named(&results, "checkpoint").detail.contains("snapshot"),
        "{}",
        report(&results)
    );
    assert!(
        named(&results, "sink.max_request_bytes")
            .detail
            .contains("not probed"),
        "{}",
        report(&results)
    );
    let results = check_probing(&p.yaml("")).await;
    assert_all_pass(&results, &url);
    assert!(
        named(&results, "permissions on sink.meta_prefix")
            .detail
            .contains("probed"),
        "{}",
        report(&results)
    );
    assert!(dump(&mut etcd, &format!("{}/", p.meta)).await.is_empty());
    assert!(dump(&mut etcd, &format!("{}/", p.data)).await.is_empty());

    // A checkpoint of this source is reported; one of another source is a failure with the fix.
    let checkpoint = |source: &str| {
        format!(
            r#"{{"source":"{source}","position":"p0000000007","applied_at":"2024-01-01T00:00:00Z"}}"#
        )
    };
    etcd.put(p.checkpoint_key(), checkpoint(SOURCE), None)
        .await
        .expect("put");
    let results = check(&p.yaml("")).await;
    let found = named(&results, "checkpoint");
    assert!(
        found.ok && found.detail.contains("p0000000007"),
        "{}",
        report(&results)
    );
    etcd.put(p.checkpoint_key(), checkpoint("other-source"), None)
        .await
        .expect("put");
    let results = check(&p.yaml("")).await;
    let found = named(&results, "checkpoint");
    assert!(!found.ok, "{}", report(&results));
    assert!(
        found
            .fix
            .as_deref()
            .unwrap_or_default()
            .contains("etcdctl del"),
        "{}",
        report(&results)
    );

    // A name an earlier version recorded for the same source (an alias's) is this source's.
    etcd.put(p.checkpoint_key(), checkpoint("former-name"), None)
        .await
        .expect("put");
    let results = parse(&p.yaml(""))
        .expect("valid config")
        .inspect(SinkContext {
            name: PIPELINE.into(),
            source_type: SOURCE.into(),
            former_source_names: vec!["former-name".into()],
            fence: None,
        })
        .await
        .expect("inspector")
        .check(CheckOptions::default())
        .await;
    assert!(named(&results, "checkpoint").ok, "{}", report(&results));
}

#[tokio::test]
async fn check_writes_nothing_unless_asked_to_probe() {
    let etcd = PrivateEtcd::start("readonly").await;
    let url = etcd.url();
    let p = Prefixes::new("check-ro", &url);
    let mut client = client(&url).await;

    let before = write_marks(&mut client).await;
    let results = check(&p.yaml("")).await;
    assert_all_pass(&results, &url);
    for name in [
        "permissions on sink.meta_prefix",
        "permissions on sink.prefix",
    ] {
        assert!(
            named(&results, name).detail.contains("nothing written"),
            "{}",
            report(&results)
        );
    }
    let after = write_marks(&mut client).await;
    assert_eq!(after.0, before.0, "check without --write-probe wrote a key");
    // No write request either: etcd 3.4 logs only the alarm list (a read) in its raft log.
    assert!(
        after.1 <= before.1 + 1,
        "check without --write-probe sent requests through raft: index {} → {}",
        before.1,
        after.1
    );

    // --write-probe writes (and deletes) its probe key: the revision moves, no key remains.
    let results = check_probing(&p.yaml("")).await;
    assert_all_pass(&results, &url);
    let probed = write_marks(&mut client).await;
    assert!(
        probed.0 > after.0,
        "no write with --write-probe: {probed:?}"
    );
    assert!(dump(&mut client, "").await.is_empty());
}

/// A private etcd with authentication: `root` and a user `app` whose role may read everything
/// but write only under `writable`.
async fn etcd_with_a_limited_user(writable: &[&str]) -> PrivateEtcd {
    use etcd_client::{ConnectOptions, Permission};
    let etcd = PrivateEtcd::start("auth").await;
    let root = client(&etcd.url()).await;
    let mut auth = root.auth_client();
    auth.user_add("root", "rootpw", None).await.expect("root");
    auth.user_grant_role("root", "root").await.ok();
    auth.user_add("app", "apppw", None).await.expect("user");
    auth.role_add("app").await.expect("role");
    auth.role_grant_permission("app", Permission::read("").with_all_keys())
        .await
        .expect("read");
    for prefix in writable {
        auth.role_grant_permission("app", Permission::read_write(*prefix).with_prefix())
            .await
            .expect("write");
    }
    auth.user_grant_role("app", "app").await.expect("grant");
    auth.auth_enable().await.expect("auth enable");
    // Authentication is on once root's token works.
    etcd_client::Client::connect(
        [etcd.url()],
        Some(ConnectOptions::new().with_user("root", "rootpw")),
    )
    .await
    .expect("root login");
    etcd
}

#[tokio::test]
async fn check_reads_write_permission_from_the_users_roles_and_agrees_with_the_probe() {
    let as_app = |p: &Prefixes| p.yaml("username: app\npassword: apppw\n");
    // Write on the meta prefix only: the data prefix is refused, by the roles and by the probe.
    let etcd = etcd_with_a_limited_user(&["/tmeta-"]).await;
    let url = etcd.url();
    let p = Prefixes::with_options("check-roles", &url, |_| {
        Some(etcd_client::ConnectOptions::new().with_user("root", "rootpw"))
    });
    assert!(p.meta.starts_with("/tmeta-"), "{}", p.meta);
    for results in [check(&as_app(&p)).await, check_probing(&as_app(&p)).await] {
        let text = report(&results);
        assert!(
            named(&results, "permissions on sink.meta_prefix").ok,
            "{text}"
        );
        let data = named(&results, "permissions on sink.prefix");
        assert!(!data.ok, "{text}");
        let fix = data.fix.as_deref().unwrap_or_default();
        assert!(
            fix.contains("grant-permission") && fix.contains(&p.data),
            "{text}"
        );
    }
    let read_only = check(&as_app(&p)).await;
    assert!(
        named(&read_only, "permissions on sink.meta_prefix")
            .detail
            .contains("by the roles of user `app` (app"),
        "{}",
        report(&read_only)
    );

    // root may write everywhere: that is read from its role, nothing is written.
    let results = check(&p.yaml("username: root\npassword: rootpw\n")).await;
    assert_all_pass(&results, &url);
    assert!(
        named(&results, "permissions on sink.prefix")
            .detail
            .contains("root role"),
        "{}",
        report(&results)
    );
}

#[tokio::test]
async fn check_names_the_endpoint_to_fix_when_one_is_unreachable() {
    let url = etcd_url();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let p = Prefixes::new("check-dead", &url);
    let timeouts = "connect_timeout: 1s\nrequest_timeout: 2s\n";

    // Only a dead endpoint: that is the one failure, and nothing else can be checked.
    let yaml = p
        .yaml(timeouts)
        .replace(&format!("[\"{url}\"]"), &format!("[\"{dead}\"]"));
    let results = check(&yaml).await;
    assert_eq!(results.len(), 1, "{}", report(&results));
    let failed = named(&results, &format!("etcd reachable ({dead})"));
    assert!(!failed.ok);
    assert!(
        failed
            .fix
            .as_deref()
            .unwrap_or_default()
            .contains("sink.endpoints[0]"),
        "{}",
        report(&results)
    );

    // A good and a dead one: the dead one is named, the rest is checked through the good one.
    let yaml = p
        .yaml(timeouts)
        .replace(&format!("[\"{url}\"]"), &format!("[\"{url}\", \"{dead}\"]"));
    let results = check(&yaml).await;
    assert!(
        named(&results, &format!("etcd reachable ({url})")).ok,
        "{}",
        report(&results)
    );
    let failed = named(&results, &format!("etcd reachable ({dead})"));
    assert!(
        !failed.ok
            && failed
                .fix
                .as_deref()
                .unwrap_or_default()
                .contains("sink.endpoints[1]"),
        "{}",
        report(&results)
    );
    for name in CHECKS_AFTER_REACHABLE {
        assert!(named(&results, name).ok, "{}", report(&results));
    }
}

fn read(var: &str) -> Vec<u8> {
    let path = env(var);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{var}={path}: {e}"))
}

/// Client options for the TLS etcd as the test environment's user (for the prefix guard).
fn tls_options(_endpoint: &str) -> Option<ConnectOptions> {
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

fn tls_yaml(p: &Prefixes, password: &str) -> String {
    p.yaml(&format!(
        "username: {}\npassword: \"{password}\"\ntls:\n  ca: {}\n",
        env("ETCDSYNC_TEST_ETCD_USER"),
        env("ETCDSYNC_TEST_ETCD_TLS_CA"),
    ))
}

#[tokio::test]
async fn check_over_tls_passes_with_the_user_and_names_the_password_when_it_is_wrong() {
    let url = env("ETCDSYNC_TEST_ETCD_TLS");
    let p = Prefixes::with_options("check-tls", &url, tls_options);

    let results = check(&tls_yaml(&p, &env("ETCDSYNC_TEST_ETCD_PASSWORD"))).await;
    assert_all_pass(&results, &url);
    assert!(
        named(&results, "etcd authentication")
            .detail
            .contains(&env("ETCDSYNC_TEST_ETCD_USER")),
        "{}",
        report(&results)
    );

    let results = check(&tls_yaml(&p, "wrong-password")).await;
    let text = report(&results);
    assert!(
        named(&results, &format!("etcd reachable ({url})")).ok,
        "{text}"
    );
    let auth = named(&results, "etcd authentication");
    assert!(!auth.ok, "{text}");
    let fix = auth.fix.as_deref().unwrap_or_default();
    assert!(
        fix.contains("sink.username") && fix.contains("sink.password"),
        "{text}"
    );
    assert!(
        !text.contains("wrong-password"),
        "password in the report: {text}"
    );
    // Nothing past authentication can be checked.
    assert_eq!(
        results.last().map(|r| r.name.as_str()),
        Some("etcd authentication")
    );

    // Without TLS settings the system roots do not know the test CA: a TLS fix.
    let yaml = p.yaml(&format!(
        "username: {}\npassword: \"{}\"\nconnect_timeout: 2s\nrequest_timeout: 2s\n",
        env("ETCDSYNC_TEST_ETCD_USER"),
        env("ETCDSYNC_TEST_ETCD_PASSWORD")
    ));
    let results = check(&yaml).await;
    let reachable = named(&results, &format!("etcd reachable ({url})"));
    assert!(
        !reachable.ok
            && reachable
                .fix
                .as_deref()
                .unwrap_or_default()
                .contains("sink.tls"),
        "{}",
        report(&results)
    );
}

#[tokio::test]
async fn check_finds_limits_above_the_servers_and_what_it_accepts() {
    let etcd =
        PrivateEtcd::start_with("limits", &["--max-txn-ops=32", "--max-request-bytes=65536"]).await;
    let url = etcd.url();
    let p = Prefixes::new("check-limits", &url);

    // The operation count is probed with reads; the request size needs --write-probe.
    let results = check(&p.yaml("")).await;
    let text = report(&results);
    let ops = named(&results, "sink.max_txn_ops");
    assert!(!ops.ok, "{text}");
    let bytes = named(&results, "sink.max_request_bytes");
    assert!(bytes.ok && bytes.detail.contains("not probed"), "{text}");

    let results = check_probing(&p.yaml("")).await;
    let text = report(&results);
    let ops = named(&results, "sink.max_txn_ops");
    assert!(!ops.ok, "{text}");
    assert!(
        ops.fix
            .as_deref()
            .unwrap_or_default()
            .contains("set sink.max_txn_ops: 32"),
        "{text}"
    );
    let bytes = named(&results, "sink.max_request_bytes");
    assert!(!bytes.ok, "{text}");
    // The search names a setting etcd accepts: a little under its 65536.
    let fix = bytes.fix.as_deref().unwrap_or_default();
    let suggested: usize = fix
        .strip_prefix("set sink.max_request_bytes: ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no setting in the fix: {text}"));
    assert!((60_000..=65_536).contains(&suggested), "{text}");
    assert!(fix.contains("--max-request-bytes"), "{text}");
    for name in ["etcd alarms", "permissions on sink.prefix", "checkpoint"] {
        assert!(named(&results, name).ok, "{text}");
    }

    let results = check_probing(&p.yaml(&format!(
        "max_txn_ops: 32\nmax_request_bytes: {suggested}\n"
    )))
    .await;
    assert_all_pass(&results, &url);
    // The probes wrote nothing.
    let mut client = client(&url).await;
    assert!(dump(&mut client, "").await.is_empty());
}

#[tokio::test]
async fn check_reports_a_nospace_alarm_with_the_fix() {
    let etcd = PrivateEtcd::start_with("nospace", &["--quota-backend-bytes=16384"]).await;
    let url = etcd.url();
    let p = Prefixes::new("check-nospace", &url);
    let mut client = client(&url).await;
    // Fill the tiny quota until etcd raises the alarm.
    for i in 0..1000 {
        if client
            .put(format!("/fill/{i}"), vec![b'x'; 4096], None)
            .await
            .is_err()
        {
            break;
        }
    }
    let results = check_probing(&p.yaml("")).await;
    let text = report(&results);
    let alarms = named(&results, "etcd alarms");
    assert!(!alarms.ok, "{text}");
    let fix = alarms.fix.as_deref().unwrap_or_default();
    assert!(
        fix.contains("NOSPACE") && fix.contains("alarm disarm"),
        "{text}"
    );
    // Even with --write-probe nothing is written, which etcd would refuse for the same reason:
    // the reads are checked, the writes are said not to be probed.
    for name in [
        "permissions on sink.meta_prefix",
        "permissions on sink.prefix",
        "sink.max_request_bytes",
    ] {
        let result = named(&results, name);
        assert!(result.ok && result.detail.contains("alarm"), "{text}");
    }
    assert!(named(&results, "sink.max_txn_ops").ok, "{text}");
    assert!(named(&results, "checkpoint").ok, "{text}");
}
