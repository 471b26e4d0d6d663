//! The etcd inspector (`check`, `status`, `verify` reads and `--repair` writes), the status key a
//! running sink keeps, and the sink's metrics, against real etcds (`ETCDSYNC_TEST_ETCD`, the TLS
//! one with its user, and private ones started with other limits).
#![cfg(feature = "integration-tests")]

mod common;

use common::*;
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use etcdsync_core::change::{Column, Route};
use etcdsync_core::inspect::{CheckOptions, CheckResult, SinkInspector};
use etcdsync_core::sink::SinkContext;
use etcdsync_core::telemetry::{self, Phase};
use etcdsync_core::{Change, Message, Op, TableId, TableSchema, Value};
use etcdsync_etcd::status::Status;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Tests that run a sink take this: the phase and progress in telemetry are process-wide.
static SINKS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

async fn inspector(yaml: &str) -> Box<dyn SinkInspector> {
    parse(yaml)
        .expect("valid config")
        .inspect(SinkContext {
            name: PIPELINE.into(),
            source_type: SOURCE.into(),
            former_source_names: Vec::new(),
            fence: None,
        })
        .await
        .expect("inspector")
}

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

// ---- reads and repair --------------------------------------------------------------------

/// `public.settings (id int primary key, service text, name text, value text)` with keys from a
/// template `{service}/{name}` and raw values, as `key_template` makes them.
fn settings() -> Arc<TableSchema> {
    Arc::new(TableSchema::new(
        TableId::new("public", "settings"),
        vec![
            Column::new("id", "int4"),
            Column::new("service", "text"),
            Column::new("name", "text"),
            Column::new("value", "text"),
        ],
        vec![0],
    ))
}

fn insert_setting(id: i64, service: &str, name: &str, value: &str) -> Change {
    Change {
        table: settings(),
        op: Op::Insert {
            row: vec![
                Value::Int(id),
                Value::Text(service.into()),
                Value::Text(name.into()),
                Value::Text(value.into()),
            ],
        },
        route: Route {
            key: Some(format!("{service}/{name}")),
            old_key: None,
            value: Some(value.as_bytes().to_vec()),
            tracked: true,
        },
        seq: None,
    }
}

fn text(value: Option<Vec<u8>>) -> Option<String> {
    value.map(|v| String::from_utf8_lossy(&v).into_owned())
}

#[tokio::test]
async fn reads_owners_counts_and_repair_round_trip() {
    let _serial = SINKS.lock().await;
    let url = etcd_url();
    let p = Prefixes::new("reads", &url);
    let mut etcd = client(&url).await;
    // Small transactions, so reads and repairs span several.
    let yaml = p.yaml("max_txn_ops: 8\n");
    let users = table("public", "users");
    let mut sink = start(&yaml).await;
    let mut changes: Vec<Change> = (1..=20)
        .map(|i| insert(&users, i, &format!("u{i}")))
        .collect();
    changes.push(insert_setting(1, "billing", "timeout", "30"));
    changes.push(insert_setting(2, "billing", "retries", "3"));
    changes.push(insert_setting(3, "auth", "ttl", "60"));
    for part in changes.chunks(5) {
        sink.send(Message::Changes(part.to_vec())).await;
    }
    sink.send(commit(1)).await;
    sink.wait_ack(&pos(1)).await;
    sink.close().await.expect("clean stop");

    let mut ins = inspector(&yaml).await;
    let user_key = |id: i64| p.key("public", "users", id);
    let route = |k: &str| format!("{}/{k}", p.data);
    let settings_id = TableId::new("public", "settings");
    let users_id = TableId::new("public", "users");

    // checkpoint and metadata
    assert_eq!(
        ins.checkpoint()
            .await
            .expect("checkpoint")
            .map(|c| c.position),
        Some(pos(1))
    );
    let meta = ins.metadata().await.expect("metadata");
    assert_eq!(meta["checkpoint"]["position"], pos(1).as_str());
    assert_eq!(meta["status"]["phase"], "streaming", "{meta:#?}");
    assert!(
        !meta.contains_key("leader") && !meta.contains_key("snapshot"),
        "{meta:#?}"
    );

    // keys of the layout
    assert_eq!(ins.row_key(&users_id, &[Value::Int(7)]), user_key(7));
    assert_eq!(ins.route_key("billing/timeout"), route("billing/timeout"));

    // get: more keys than one transaction holds, one absent
    let mut keys: Vec<String> = (1..=20).map(user_key).collect();
    keys.push(user_key(99));
    keys.push(route("billing/timeout"));
    let values = ins.get(&keys).await.expect("get");
    assert_eq!(values.len(), 22);
    assert_eq!(text(values[6].clone()), Some(json(7, "u7")));
    assert_eq!(values[20], None);
    assert_eq!(text(values[21].clone()), Some("30".into()));

    // scan: everything in key order, in pages
    let all = dump(&mut etcd, &format!("{}/", p.data)).await;
    assert_eq!(all.len(), 23);
    let scanned = ins.scan(None, 1000).await.expect("scan");
    let scanned_text: BTreeMap<String, String> = scanned
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    assert_eq!(scanned_text, all);
    assert!(scanned.windows(2).all(|w| w[0].0 < w[1].0));
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = ins.scan(after.as_deref(), 7).await.expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        after = page.last().map(|(k, _)| k.clone());
        paged.extend(page);
    }
    assert_eq!(paged, scanned);

    // owner: default layout, key index, and keys nothing explains
    assert_eq!(
        ins.owner(&user_key(5)).await.expect("owner"),
        Some((users_id.clone(), vec!["5".to_string()]))
    );
    assert_eq!(
        ins.owner(&route("billing/timeout")).await.expect("owner"),
        Some((settings_id.clone(), vec!["1".to_string()]))
    );
    assert_eq!(
        ins.owner(&route("auth/ttl")).await.expect("owner"),
        Some((settings_id.clone(), vec!["3".to_string()]))
    );
    assert_eq!(ins.owner(&route("lonely")).await.expect("owner"), None);
    assert_eq!(
        ins.owner("/elsewhere/public/users/1").await.expect("owner"),
        None
    );

    // count
    assert_eq!(ins.count(&users_id).await.expect("count"), 20);
    assert_eq!(ins.count(&settings_id).await.expect("count"), 3);
    assert_eq!(
        ins.count(&TableId::new("public", "nothing"))
            .await
            .expect("count"),
        0
    );

    // Drift: a key deleted, a value changed, an extra key planted, a transformed key changed.
    etcd.delete(user_key(3), None).await.expect("delete");
    etcd.put(user_key(4), "changed", None).await.expect("put");
    etcd.put(user_key(999), "extra", None).await.expect("put");
    etcd.put(route("billing/timeout"), "99", None)
        .await
        .expect("put");
    assert_eq!(
        ins.owner(&user_key(999)).await.expect("owner"),
        Some((users_id.clone(), vec!["999".to_string()]))
    );

    // Outside the data prefix: refused, nothing written.
    let error = ins
        .repair(vec![(format!("{}/x", p.meta), b"v".to_vec())], vec![])
        .await
        .expect_err("outside the data prefix");
    assert!(error.to_string().contains("sink.prefix"), "{error}");
    assert_eq!(get(&mut etcd, &format!("{}/x", p.meta)).await, None);

    // Repair in several transactions (max_txn_ops 8): every user key rewritten, the extra user
    // key and the row auth/ttl removed (with its owner and index entry), billing/timeout fixed.
    let mut puts: Vec<(String, Vec<u8>)> = (1..=20)
        .map(|i| (user_key(i), json(i, &format!("u{i}")).into_bytes()))
        .collect();
    puts.push((route("billing/timeout"), b"30".to_vec()));
    ins.repair(puts, vec![user_key(999), route("auth/ttl")])
        .await
        .expect("repair");

    let mut expected: BTreeMap<String, String> = (1..=20)
        .map(|i| (user_key(i), json(i, &format!("u{i}"))))
        .collect();
    expected.insert(route("billing/timeout"), "30".into());
    expected.insert(route("billing/retries"), "3".into());
    assert_eq!(dump(&mut etcd, &format!("{}/", p.data)).await, expected);
    let owners = dump(&mut etcd, &format!("{}/owner/", p.meta)).await;
    assert_eq!(
        owners.keys().cloned().collect::<Vec<_>>(),
        vec![
            format!("{}/owner/billing/retries", p.meta),
            format!("{}/owner/billing/timeout", p.meta)
        ]
    );
    let index = dump(&mut etcd, &format!("{}/index/", p.meta)).await;
    assert_eq!(
        index.values().cloned().collect::<Vec<_>>(),
        vec!["billing/timeout".to_string(), "billing/retries".to_string()]
    );
    assert_eq!(ins.count(&settings_id).await.expect("count"), 2);
    assert_eq!(ins.count(&users_id).await.expect("count"), 20);
    // The repaired index still explains the transformed key.
    assert_eq!(
        ins.owner(&route("billing/timeout")).await.expect("owner"),
        Some((settings_id.clone(), vec!["1".to_string()]))
    );

    // A transformed key whose owner entry is gone too cannot be put back consistently: the rest
    // of the repair is applied, and the error names the key and the fix.
    etcd.delete(route("billing/retries"), None)
        .await
        .expect("delete");
    etcd.delete(format!("{}/owner/billing/retries", p.meta), None)
        .await
        .expect("delete");
    etcd.put(user_key(1), "changed", None).await.expect("put");
    let error = ins
        .repair(
            vec![
                (route("billing/retries"), b"3".to_vec()),
                (user_key(1), json(1, "u1").into_bytes()),
            ],
            vec![],
        )
        .await
        .expect_err("an unexplained key");
    let message = error.to_string();
    assert!(
        message.contains(&route("billing/retries")) && message.contains("snapshot"),
        "{message}"
    );
    assert_eq!(get(&mut etcd, &route("billing/retries")).await, None);
    assert_eq!(get(&mut etcd, &user_key(1)).await, Some(json(1, "u1")));
}

// ---- status key --------------------------------------------------------------------------

/// Waits until `{meta}/status` satisfies `ok`, returning it.
async fn wait_status(
    etcd: &mut etcd_client::Client,
    p: &Prefixes,
    what: &str,
    ok: impl Fn(&Status) -> bool,
) -> Status {
    let key = format!("{}/status", p.meta);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        if let Some(value) = get(etcd, &key).await {
            let status: Status = serde_json::from_str(&value)
                .unwrap_or_else(|e| panic!("status is not a Status ({e}): {value}"));
            if ok(&status) {
                return status;
            }
            last = Some(value);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no status with {what} in time; last: {last:?}");
}

#[tokio::test]
async fn the_status_key_follows_the_snapshot_and_then_streaming() {
    let _serial = SINKS.lock().await;
    let url = etcd_url();
    let p = Prefixes::new("status", &url);
    let mut etcd = client(&url).await;
    let t = table("public", "status_users");
    let name = t.id.to_string();
    let tm = telemetry::get();

    let mut sink = start(&p.yaml("")).await;
    let status = wait_status(&mut etcd, &p, "phase starting", |s| {
        s.phase == Phase::Starting
    })
    .await;
    assert_eq!(status.pid, std::process::id());
    assert!(!status.host.is_empty());
    assert!(
        humantime::parse_rfc3339(&status.updated_at).is_ok(),
        "{status:?}"
    );

    // The source reports progress as it reads; the sink publishes it.
    tm.snapshot_table_started(&t.id, Some(100));
    sink.send(Message::SnapshotStarted {
        tables: vec![t.id.clone()],
    })
    .await;
    let rows: Vec<Change> = (1..=40).map(|i| insert(&t, i, "r")).collect();
    sink.send(Message::Changes(rows)).await;
    tm.snapshot_rows_read(&t.id, 40);
    let status = wait_status(&mut etcd, &p, "snapshot progress", |s| {
        s.phase == Phase::Snapshot && s.tables.get(&name).is_some_and(|t| t.rows == 40)
    })
    .await;
    let progress = &status.tables[&name];
    assert_eq!((progress.estimated_rows, progress.done), (Some(100), false));

    tm.snapshot_table_done(&t.id);
    sink.send(Message::SnapshotFinished { position: pos(5) })
        .await;
    sink.wait_ack(&pos(5)).await;
    let status = wait_status(&mut etcd, &p, "phase streaming", |s| {
        s.phase == Phase::Streaming
    })
    .await;
    assert!(status.tables[&name].done, "{status:?}");
    let applied_before = status.txns_applied;

    sink.txn(vec![insert(&t, 41, "s")], 6).await;
    sink.wait_ack(&pos(6)).await;
    let status = wait_status(&mut etcd, &p, "the applied transaction", |s| {
        s.txns_applied > applied_before && s.last_commit_at.is_some()
    })
    .await;
    assert!(
        status.lag_seconds.is_some_and(|lag| lag >= 0.0),
        "{status:?}"
    );

    // Rewritten every couple of seconds while the sink runs.
    let first = status.updated_at.clone();
    wait_status(&mut etcd, &p, "a newer updated_at", |s| {
        s.updated_at > first
    })
    .await;

    // `status` reads it through the inspector; the raw JSON has every documented field.
    let meta = inspector(&p.yaml(""))
        .await
        .metadata()
        .await
        .expect("metadata");
    let json = &meta["status"];
    for field in [
        "phase",
        "updated_at",
        "pid",
        "host",
        "tables",
        "last_commit_at",
        "lag_seconds",
        "txns_applied",
    ] {
        assert!(json.get(field).is_some(), "no {field} in {json}");
    }
    assert_eq!(json["phase"], "streaming");
    assert!(
        json.get("stopped").is_none(),
        "a running sink is not stopped: {json}"
    );
    sink.close().await.expect("clean stop");
    let meta = inspector(&p.yaml(""))
        .await
        .metadata()
        .await
        .expect("metadata");
    assert_eq!(
        meta["status"]["stopped"], true,
        "the last write marks a clean stop"
    );
    // Only the status key was added under the meta prefix besides checkpoint, snapshot and the
    // marker of the table written.
    let keys: Vec<String> = dump(&mut etcd, &format!("{}/", p.meta))
        .await
        .into_keys()
        .collect();
    assert_eq!(
        keys,
        vec![
            format!("{}/checkpoint", p.meta),
            format!("{}/snapshot", p.meta),
            format!("{}/status", p.meta),
            format!("{}/tables/public/status_users", p.meta)
        ]
    );
}

// ---- metrics -----------------------------------------------------------------------------

/// The value of the series `name{labels…}` in `etcdsync_core::telemetry::get().render()` (labels
/// given must match, others may exist); 0 when absent.
fn metric(name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = telemetry::get().render();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let found: Vec<(&str, &str)> = label_text
            .split("\",")
            .filter(|part| !part.is_empty())
            .filter_map(|part| {
                let (k, v) = part.split_once("=\"")?;
                Some((k, v.trim_end_matches('"')))
            })
            .collect();
        if labels.iter().all(|l| found.contains(l)) {
            return value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
        }
    }
    0.0
}

/// Waits (up to 10 s) until `ok` holds.
async fn eventually(what: &str, ok: impl Fn() -> bool) {
    for _ in 0..100 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not in time: {what}");
}

#[tokio::test]
async fn metrics_move_after_transactions() {
    let _serial = SINKS.lock().await;
    let url = etcd_url();
    let p = Prefixes::new("metrics", &url);
    let t = table("public", "metrics_rows");
    let changes = |op: &str| {
        metric(
            "etcdsync_changes_applied_total",
            &[("table", "public.metrics_rows"), ("op", op)],
        )
    };
    let data_txns = || metric("etcdsync_sink_txns_total", &[("kind", "data")]);
    let latency_count = || metric("etcdsync_sink_txn_duration_seconds_count", &[]);
    let batch_count = || metric("etcdsync_sink_batch_ops_count", &[]);
    let before = (data_txns(), latency_count(), batch_count());

    let mut sink = start(&p.yaml("")).await;
    sink.txn(
        vec![
            insert(&t, 1, "a"),
            insert(&t, 2, "b"),
            insert(&t, 3, "c"),
            Change::update(Arc::clone(&t), None, row(1, "a2")),
            Change::delete(Arc::clone(&t), row(2, "b")),
        ],
        1,
    )
    .await;
    sink.wait_ack(&pos(1)).await;

    assert_eq!(changes("insert"), 3.0);
    assert_eq!(changes("update"), 1.0);
    assert_eq!(changes("delete"), 1.0);
    assert!(data_txns() > before.0);
    assert!(latency_count() > before.1);
    assert!(batch_count() > before.2);
    assert!(metric("etcdsync_last_checkpoint_timestamp_seconds", &[]) > 1.0e9);
    assert!(metric("etcdsync_replication_lag_seconds", &[]) >= 0.0);
    assert_eq!(metric("etcdsync_phase", &[]), 2.0);
    assert!(metric("etcdsync_sink_txns_total", &[("kind", "checkpoint")]) >= 0.0);

    // A snapshot moves the phase; its inserts count as inserts.
    sink.send(Message::SnapshotStarted {
        tables: vec![t.id.clone()],
    })
    .await;
    sink.send(Message::Changes(vec![insert(&t, 10, "s")])).await;
    eventually("phase snapshot", || metric("etcdsync_phase", &[]) == 1.0).await;
    assert!(
        metric("etcdsync_sink_txns_total", &[("kind", "snapshot")]) >= 1.0,
        "the snapshot's start marker"
    );
    sink.send(Message::SnapshotFinished { position: pos(2) })
        .await;
    sink.wait_ack(&pos(2)).await;
    assert_eq!(changes("insert"), 4.0);
    assert_eq!(metric("etcdsync_phase", &[]), 2.0);
    sink.close().await.expect("clean stop");
}
