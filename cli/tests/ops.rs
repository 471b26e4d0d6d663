//! Operator commands against real PostgreSQL and etcd (issue 6), driving the `etcdsync` binary
//! as an operator would: `check` failing with named fixes and passing, `status --json` during a
//! snapshot and while streaming, `verify` finding planted drift and `--repair` fixing it, the
//! metrics server scraped and parsed, SIGTERM leaving the checkpoint at the last applied
//! transaction, the shutdown timeout, and no password ever in the logs.
#![cfg(feature = "integration-tests")]

mod common;

use bytes::Bytes;
use common::*;
use etcdsync_core::TableId;
use etcdsync_tests::pg::{env, etcd, eventually, expected, unique};
use http_body_util::{BodyExt as _, Empty};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

// ---- check ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_with_named_fixes_then_passes_on_a_correct_setup() {
    let pipe = Pipe::new("chk").await;
    pipe.sql(
        "CREATE TABLE good (id int PRIMARY KEY, v text); CREATE TABLE nokey (a int, b text); \
         INSERT INTO good VALUES (1, 'one');",
    )
    .await;
    // A role without REPLICATION (and not superuser), able to read the tables.
    let role = unique("ops_norepl").to_lowercase();
    pipe.sql(&format!(
        "CREATE ROLE {role} LOGIN NOSUPERUSER NOREPLICATION PASSWORD 'pw'; \
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};"
    ))
    .await;
    let bad_url = pipe
        .db
        .url
        .replacen("://etcdsync:etcdsync@", &format!("://{role}:pw@"), 1);
    assert_ne!(bad_url, pipe.db.url, "the test URL has the etcdsync role");

    let bad = pipe.config(
        "bad.yaml",
        Parts {
            url: Some(&bad_url),
            endpoint: Some("http://127.0.0.1:1"),
            sink_extra: "  connect_timeout: 2s\n  request_timeout: 2s\n",
            ..Parts::default()
        },
    );
    let output = etcdsync(&["check", "-c", path(&bad), "--json"], &[]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report: Json = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(report["ok"], false, "{report:#}");
    let checks = report["checks"].as_array().expect("checks");
    let failed = |scope: &str, fix_part: &str| {
        checks.iter().any(|c| {
            c["scope"] == scope
                && c["ok"] == false
                && c["fix"].as_str().is_some_and(|f| f.contains(fix_part))
        })
    };
    assert!(
        failed("source", "REPLICATION"),
        "no REPLICATION fix: {report:#}"
    );
    assert!(
        failed("source", "ALTER ROLE"),
        "no ALTER ROLE fix: {report:#}"
    );
    assert!(
        failed("source", "ADD PRIMARY KEY"),
        "no primary key fix: {report:#}"
    );
    assert!(
        failed("sink", "sink.endpoints"),
        "no endpoint fix: {report:#}"
    );
    // Every failure carries a fix.
    for check in checks.iter().filter(|c| c["ok"] == false) {
        assert!(
            check["fix"].as_str().is_some_and(|f| !f.is_empty()),
            "failure without a fix: {check}"
        );
    }
    // The text form: one line per check, FAIL lines with their fix.
    let output = etcdsync(&["check", "-c", path(&bad)], &[]).await;
    assert_eq!(output.status.code(), Some(1));
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        out.lines().any(|l| l.starts_with("[FAIL] source: ")
            && l.contains("REPLICATION")
            && l.contains(" — fix: ")),
        "{out}"
    );
    assert!(out.lines().any(|l| l.starts_with("[ok]")), "{out}");
    assert!(out.contains("checks FAILED"), "{out}");

    // Correct: the replication role, a table with a key, the real etcd.
    let good = pipe.config(
        "good.yaml",
        Parts {
            include: "\"public.good\"",
            ..Parts::default()
        },
    );
    let output = etcdsync(&["check", "-c", path(&good)], &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(!out.contains("[FAIL]"), "{out}");
    assert!(
        out.contains("[ok]     source: wal_level") || out.contains("source: wal_level"),
        "{out}"
    );
    assert!(
        out.contains("all ") && out.contains("checks passed"),
        "{out}"
    );
    // Read-only unless asked: what needs a write is said not to be probed; --write-probe probes.
    assert!(
        out.lines()
            .any(|l| l.contains("sink.max_request_bytes") && l.contains("not probed")),
        "{out}"
    );
    let output = etcdsync(&["check", "-c", path(&good), "--write-probe"], &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        out.lines()
            .any(|l| l.contains("sink.meta_prefix") && l.contains("probed under")),
        "{out}"
    );
    assert!(!out.contains("not probed"), "{out}");
    pipe.sql(&format!("DROP OWNED BY {role}; DROP ROLE {role};"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tries_the_transforms_on_a_sample_row() {
    let pipe = Pipe::new("chkt").await;
    pipe.sql(
        "CREATE TABLE settings (id int PRIMARY KEY, service text, name text, value text); \
         INSERT INTO settings VALUES (1, 'billing', 'currency', 'EUR');",
    )
    .await;
    let transforms = "transforms:\n  - { type: key_template, tables: [\"public.settings\"], template: \"{service}/{name}\" }\n  \
                      - { type: value, tables: [\"public.settings\"], raw: value }\n";
    let good = pipe.config(
        "good.yaml",
        Parts {
            transforms,
            ..Parts::default()
        },
    );
    let output = etcdsync(&["check", "-c", path(&good), "--json"], &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report: Json = serde_json::from_slice(&output.stdout).expect("JSON");
    let sample = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "transforms on public.settings")
        .unwrap_or_else(|| panic!("no sample check: {report:#}"))
        .clone();
    assert_eq!(sample["ok"], true);
    let want = format!("{}/billing/currency", pipe.data);
    assert!(
        sample["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(&want),
        "{sample}"
    );

    // A template naming a column the table does not have fails, naming the transform.
    let bad = pipe.config(
        "bad.yaml",
        Parts {
            transforms: "transforms:\n  - { type: key_template, tables: [\"public.settings\"], template: \"{nope}/{name}\" }\n",
            ..Parts::default()
        },
    );
    let output = etcdsync(&["check", "-c", path(&bad)], &[]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        out.lines().any(
            |l| l.starts_with("[FAIL] transforms: transforms on public.settings")
                && l.contains("nope")
        ),
        "{out}"
    );
}

// ---- status -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_during_snapshot_and_streaming() {
    let pipe = Pipe::new("st").await;
    const ROWS: i64 = 20_000;
    pipe.sql(&format!(
        "CREATE TABLE big (id int PRIMARY KEY, v text); \
         INSERT INTO big SELECT g, repeat('x', 100) || g FROM generate_series(1, {ROWS}) g; ANALYZE big;"
    ))
    .await;
    // A slow sink (8 operations per etcd transaction, one in flight) keeps the snapshot visible.
    let config = pipe.config(
        "st.yaml",
        Parts {
            sink_extra: "  max_txn_ops: 8\n  snapshot_txns_in_flight: 1\n",
            ..Parts::default()
        },
    );
    let before = status_json(&config).await;
    assert_eq!(before["pipeline"], pipe.name.as_str());
    assert_eq!(before["running"], false, "{before:#}");
    assert!(before["checkpoint"].is_null(), "{before:#}");
    for field in [
        "phase",
        "updated_at",
        "pid",
        "host",
        "position",
        "last_commit_at",
        "lag_seconds",
        "lag_bytes",
        "source_position",
        "txns_applied",
        "leader",
        "tables",
        "errors",
    ] {
        assert!(
            before.get(field).is_some(),
            "field {field} missing: {before:#}"
        );
    }

    let mut run = Run::start(&config, &[]);
    // During the snapshot.
    let mut seen: Option<Json> = None;
    let start = Instant::now();
    while start.elapsed() < WAIT && seen.is_none() {
        let status = status_json(&config).await;
        let listed = status["tables"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["snapshot"].is_object()));
        if status["phase"] == "snapshot" && listed {
            seen = Some(status);
        } else if status["phase"] == "streaming" {
            break;
        }
    }
    let during =
        seen.unwrap_or_else(|| panic!("never saw the snapshot phase; stderr:\n{}", run.stderr()));
    assert_eq!(during["running"], true, "{during:#}");
    assert_eq!(during["pid"], run.pid(), "{during:#}");
    assert!(during["host"].is_string(), "{during:#}");
    let table = during["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["table"] == "public.big")
        .unwrap_or_else(|| panic!("public.big not listed: {during:#}"))
        .clone();
    let snapshot = &table["snapshot"];
    assert!(snapshot["rows"].as_u64().is_some(), "{during:#}");
    let estimate = snapshot["estimated_rows"]
        .as_u64()
        .unwrap_or_else(|| panic!("no estimate: {during:#}"));
    assert!(estimate > ROWS as u64 / 2, "estimate {estimate}");
    assert!(
        table["keys"].as_u64().is_some_and(|k| k < ROWS as u64 + 1),
        "{during:#}"
    );

    // Streaming.
    pipe.wait_synced("big", "snapshot").await;
    pipe.sql("INSERT INTO big VALUES (0, 'zero')").await;
    pipe.wait_synced("big", "insert").await;
    let ok = eventually(WAIT, || async {
        let s = status_json(&config).await;
        s["phase"] == "streaming" && s["last_commit_at"].is_string() && s["lag_seconds"].is_number()
    })
    .await;
    let streaming = status_json(&config).await;
    assert!(ok, "not streaming with a last commit: {streaming:#}");
    assert_eq!(streaming["running"], true);
    assert_eq!(streaming["checkpoint"]["source"], "pgx", "{streaming:#}");
    let position = streaming["position"].as_str().expect("position");
    assert_eq!(streaming["checkpoint"]["position"], position);
    assert!(lsn(position) > 0);
    assert!(streaming["lag_bytes"].is_u64(), "{streaming:#}");
    assert!(
        streaming["source_position"]
            .as_str()
            .is_some_and(|p| lsn(p) >= lsn(position)),
        "{streaming:#}"
    );
    assert!(
        streaming["txns_applied"].as_u64().is_some_and(|n| n >= 1),
        "{streaming:#}"
    );
    // The leader record names the running instance (DESIGN §7).
    assert_eq!(streaming["leader"]["pid"], run.pid(), "{streaming:#}");
    assert!(
        streaming["leader"]["instance"]
            .as_str()
            .is_some_and(|i| i.ends_with(&format!(":{}", run.pid()))),
        "{streaming:#}"
    );
    assert!(streaming["leader"]["since"].is_string(), "{streaming:#}");
    let table = streaming["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["table"] == "public.big")
        .expect("public.big")
        .clone();
    assert_eq!(table["keys"], ROWS + 1, "{streaming:#}");
    assert_eq!(table["snapshot"]["done"], true, "{streaming:#}");
    assert!(
        streaming["errors"].as_array().is_some_and(Vec::is_empty),
        "{streaming:#}"
    );

    // The human form names the phase and the table.
    let output = etcdsync(&["status", "-c", path(&config)], &[]).await;
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        out.contains("streaming") && out.contains("public.big") && out.contains(position),
        "{out}"
    );

    run.signal("TERM");
    let status = run.wait(WAIT).await.expect("etcdsync run did not stop");
    assert!(
        status.success(),
        "exit {status:?}; stderr:\n{}",
        run.stderr()
    );
}

// ---- verify -----------------------------------------------------------------------------------

fn keys_of(report: &Json, kind: &str) -> Vec<String> {
    report[kind]["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["key"].as_str().expect("key").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_missing_different_and_extra_keys_and_repair_fixes_them() {
    let pipe = Pipe::new("vf").await;
    pipe.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, 'value ' || g FROM generate_series(1, 1200) g; \
         CREATE TABLE other (id int PRIMARY KEY); INSERT INTO other VALUES (1);",
    )
    .await;
    let config = pipe.config("vf.yaml", Parts::default());
    {
        let mut run = Run::start(&config, &[]);
        pipe.wait_synced("t", "snapshot").await;
        run.signal("TERM");
        assert!(
            run.wait(WAIT).await.is_some_and(|s| s.success()),
            "{}",
            run.stderr()
        );
    }
    let (code, clean) = verify_json(&config, &[]).await;
    assert_eq!(code, Some(0), "{clean:#}");
    assert_eq!(clean["source_rows"], 1201, "{clean:#}");
    assert_eq!(clean["sink_keys"], 1201, "{clean:#}");

    // Drift planted directly in etcd.
    let key = |id: i64| format!("{}/public/t/{id}", pipe.data);
    let mut client = etcd().await;
    client.delete(key(3), None).await.expect("delete");
    put(&key(700), "{\"id\":700,\"v\":\"changed\"}").await;
    put(&key(5000), "{\"id\":5000,\"v\":\"planted\"}").await;
    put(&format!("{}/public/gone/1", pipe.data), "{}").await;
    put(&format!("{}/stray", pipe.data), "x").await;

    let (code, report) = verify_json(&config, &["--max-report", "10"]).await;
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["missing"]["count"], 1, "{report:#}");
    assert_eq!(keys_of(&report, "missing"), vec![key(3)]);
    assert_eq!(report["different"]["count"], 1, "{report:#}");
    assert_eq!(keys_of(&report, "different"), vec![key(700)]);
    let different = &report["different"]["keys"][0];
    assert_eq!(different["expected"], "{\"id\":700,\"v\":\"value 700\"}");
    assert_eq!(different["found"], "{\"id\":700,\"v\":\"changed\"}");
    // Keys of a table this pipeline never wrote (another pipeline sharing the prefix) and keys
    // no layout explains are reported as not ours, never as drift.
    assert_eq!(report["extra"]["count"], 1, "{report:#}");
    assert_eq!(keys_of(&report, "extra"), vec![key(5000)]);
    let mut not_ours = keys_of(&report, "not_ours");
    not_ours.sort();
    let mut foreign = vec![
        format!("{}/public/gone/1", pipe.data),
        format!("{}/stray", pipe.data),
    ];
    foreign.sort();
    assert_eq!(not_ours, foreign, "{report:#}");
    assert!(report["repaired"].is_null());

    // The text form lists them and says how to repair.
    let output = etcdsync(&["verify", "-c", path(&config), "--max-report", "1"], &[]).await;
    assert_eq!(output.status.code(), Some(1));
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        out.contains("missing: 1")
            && out.contains("different: 1")
            && out.contains("extra: 1")
            && out.contains("not ours: 2"),
        "{out}"
    );
    assert!(out.contains("--repair"), "{out}");

    // Repair, then verify is clean and etcd equals the table byte for byte.
    let (code, repaired) = verify_json(&config, &["--repair"]).await;
    assert_eq!(code, Some(0), "{repaired:#}");
    assert_eq!(repaired["repaired"]["written"], 2, "{repaired:#}");
    assert_eq!(repaired["repaired"]["deleted"], 1, "{repaired:#}");
    let (code, after) = verify_json(&config, &[]).await;
    assert_eq!(code, Some(0), "{after:#}");
    for kind in ["missing", "different", "extra"] {
        assert_eq!(after[kind]["count"], 0, "{after:#}");
    }
    let data = pipe.etcd_data().await;
    let mut want = pipe.expected("t").await;
    want.extend(
        expected(
            &pipe.db.client().await,
            &pipe.data,
            &TableId::new("public", "other"),
            &["id"],
        )
        .await,
    );
    // The keys that are not ours are still there, untouched.
    want.insert(format!("{}/public/gone/1", pipe.data), "{}".into());
    want.insert(format!("{}/stray", pipe.data), "x".into());
    assert_eq!(data, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_follows_the_transforms_template_keys_and_raw_values() {
    let pipe = Pipe::new("vt").await;
    pipe.sql(
        "CREATE TABLE settings (id int PRIMARY KEY, service text NOT NULL, name text NOT NULL, value text, secret text); \
         INSERT INTO settings VALUES (1, 'billing', 'currency', 'EUR', 's1'), (2, 'billing', 'vat', '0.2', 's2'), \
                                     (3, 'mail', 'from', 'a@b.c', 's3'), (4, 'mail', 'hidden', 'h', 's4');",
    )
    .await;
    let transforms = "transforms:\n  - { type: drop_columns, tables: [\"public.settings\"], columns: [secret] }\n  \
                      - { type: filter, tables: [\"public.settings\"], when: [{ column: name, op: eq, value: hidden }], action: drop }\n  \
                      - { type: key_template, tables: [\"public.settings\"], template: \"{service}/{name}\" }\n  \
                      - { type: value, tables: [\"public.settings\"], raw: value }\n";
    let config = pipe.config(
        "vt.yaml",
        Parts {
            transforms,
            ..Parts::default()
        },
    );
    let want: BTreeMap<String, String> = [
        ("billing/currency", "EUR"),
        ("billing/vat", "0.2"),
        ("mail/from", "a@b.c"),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{}/{k}", pipe.data), v.to_string()))
    .collect();
    {
        let mut run = Run::start(&config, &[]);
        let ok = eventually(WAIT, || async { pipe.etcd_data().await == want }).await;
        assert!(
            ok,
            "{:?}; stderr:\n{}",
            pipe.etcd_data().await,
            run.stderr()
        );
        run.signal("TERM");
        assert!(
            run.wait(WAIT).await.is_some_and(|s| s.success()),
            "{}",
            run.stderr()
        );
    }
    let (code, clean) = verify_json(&config, &[]).await;
    assert_eq!(code, Some(0), "{clean:#}");
    assert_eq!(clean["sink_keys"], 3, "{clean:#}");

    put(&format!("{}/billing/vat", pipe.data), "0.25").await;
    etcd()
        .await
        .delete(format!("{}/mail/from", pipe.data), None)
        .await
        .expect("delete");
    put(&format!("{}/mail/planted", pipe.data), "x").await;
    // The filtered-out row's default-layout key, as an older config would have written it.
    put(&format!("{}/public/settings/4", pipe.data), "{}").await;

    let (code, report) = verify_json(&config, &[]).await;
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(
        keys_of(&report, "different"),
        vec![format!("{}/billing/vat", pipe.data)]
    );
    assert_eq!(report["different"]["keys"][0]["expected"], "0.2");
    assert_eq!(
        keys_of(&report, "missing"),
        vec![format!("{}/mail/from", pipe.data)]
    );
    assert_eq!(
        keys_of(&report, "extra"),
        vec![format!("{}/public/settings/4", pipe.data)],
        "{report:#}"
    );
    // A key among the template keys that no owner entry gives to a row is not provably ours.
    assert_eq!(
        keys_of(&report, "not_ours"),
        vec![format!("{}/mail/planted", pipe.data)],
        "{report:#}"
    );

    let (code, repaired) = verify_json(&config, &["--repair"]).await;
    assert_eq!(code, Some(0), "{repaired:#}");
    let (code, after) = verify_json(&config, &[]).await;
    assert_eq!(code, Some(0), "{after:#}");
    let mut want = want;
    want.insert(format!("{}/mail/planted", pipe.data), "x".into());
    assert_eq!(pipe.etcd_data().await, want);
}

// ---- metrics and health -----------------------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// GET over HTTP/1.1 with hyper's client: (status, body).
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("host", "127.0.0.1")
        .body(Empty::<Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Prometheus text → `name{labels}` → value (labels sorted, `pipeline` left out).
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut labels: Vec<&str> = labels
            .split(',')
            .filter(|l| !l.is_empty() && !l.starts_with("pipeline="))
            .collect();
        labels.sort_unstable();
        out.insert(format!("{name}{{{}}}", labels.join(",")), value);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_are_served() {
    let pipe = Pipe::new("mx").await;
    pipe.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 300) g; ANALYZE t;",
    )
    .await;
    let port = free_port();
    let top = format!("metrics:\n  listen: \"127.0.0.1:{port}\"\n  ready_max_lag: 30s\n");
    let config = pipe.config(
        "mx.yaml",
        Parts {
            top: &top,
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &[]);
    let up = eventually(WAIT, || async {
        http_get(port, "/healthz").await.is_some()
    })
    .await;
    assert!(up, "metrics server not up; stderr:\n{}", run.stderr());
    assert_eq!(http_get(port, "/healthz").await.map(|r| r.0), Some(200));
    assert_eq!(http_get(port, "/nope").await.map(|r| r.0), Some(404));

    pipe.wait_synced("t", "snapshot").await;
    pipe.sql("UPDATE t SET v = 'updated' WHERE id = 1; DELETE FROM t WHERE id = 2;")
        .await;
    pipe.wait_synced("t", "stream").await;
    let ready = eventually(WAIT, || async {
        http_get(port, "/readyz")
            .await
            .is_some_and(|(code, _)| code == 200)
    })
    .await;
    let readyz = http_get(port, "/readyz").await;
    assert!(ready, "/readyz never 200: {readyz:?}");
    assert!(readyz.is_some_and(|(_, body)| body.contains("streaming")));

    let (code, body) = http_get(port, "/metrics").await.expect("scrape");
    assert_eq!(code, 200);
    assert!(
        body.contains(&format!("pipeline=\"{}\"", pipe.name)),
        "{body}"
    );
    let metrics = parse_prometheus(&body);
    let get = |series: &str| {
        *metrics
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{body}"))
    };
    assert_eq!(get("etcdsync_phase{}"), 2.0);
    assert_eq!(get("etcdsync_leader{}"), 1.0, "the only instance leads");
    assert_eq!(
        get("etcdsync_snapshot_rows_total{table=\"public.t\"}"),
        300.0
    );
    assert!(get("etcdsync_snapshot_rows_estimated{table=\"public.t\"}") > 0.0);
    assert!(get("etcdsync_changes_applied_total{op=\"insert\",table=\"public.t\"}") >= 300.0);
    assert!(get("etcdsync_changes_applied_total{op=\"update\",table=\"public.t\"}") >= 1.0);
    assert!(get("etcdsync_changes_applied_total{op=\"delete\",table=\"public.t\"}") >= 1.0);
    assert!(get("etcdsync_sink_txns_total{kind=\"data\"}") >= 1.0);
    assert!(get("etcdsync_sink_txn_duration_seconds_count{}") >= 1.0);
    assert!(get("etcdsync_sink_txn_duration_seconds_bucket{le=\"+Inf\"}") >= 1.0);
    assert!(get("etcdsync_sink_batch_ops_count{}") >= 1.0);
    assert!(get("etcdsync_replication_lag_seconds{}") >= 0.0);
    // The stages of a streamed transaction's latency (the update and delete above).
    assert!(get("etcdsync_commit_latency_seconds_count{stage=\"commit_to_applied\"}") >= 1.0);
    assert!(get("etcdsync_commit_latency_seconds_count{stage=\"sink_batch_wait\"}") >= 1.0);
    assert!(get("etcdsync_commit_latency_seconds_count{stage=\"commit_to_received\"}") >= 1.0);
    assert!(get("etcdsync_commit_latency_seconds_count{stage=\"commit_to_decoded\"}") >= 1.0);
    let checkpoint_at = get("etcdsync_last_checkpoint_timestamp_seconds{}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    assert!(
        checkpoint_at > now - 600.0 && checkpoint_at <= now + 1.0,
        "{checkpoint_at}"
    );

    run.signal("TERM");
    assert!(
        run.wait(WAIT).await.is_some_and(|s| s.success()),
        "{}",
        run.stderr()
    );
    // The server went away with the process.
    assert!(http_get(port, "/healthz").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_with_a_reason_when_lag_is_over_the_limit() {
    let pipe = Pipe::new("rz").await;
    pipe.sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);")
        .await;
    let port = free_port();
    // No lag is below zero: never ready, and the reason says why.
    let top = format!("metrics:\n  listen: \"127.0.0.1:{port}\"\n  ready_max_lag: 0s\n");
    let config = pipe.config(
        "rz.yaml",
        Parts {
            top: &top,
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &[]);
    pipe.wait_synced("t", "snapshot").await;
    let reason = eventually(WAIT, || async {
        http_get(port, "/readyz")
            .await
            .is_some_and(|(code, body)| code == 503 && body.contains("ready_max_lag"))
    })
    .await;
    assert!(reason, "{:?}", http_get(port, "/readyz").await);
    assert_eq!(http_get(port, "/healthz").await.map(|r| r.0), Some(200));
    run.signal("TERM");
    assert!(
        run.wait(WAIT).await.is_some_and(|s| s.success()),
        "{}",
        run.stderr()
    );
}

// ---- lifecycle --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_the_checkpoint_at_the_last_applied_transaction() {
    let pipe = Pipe::new("sig").await;
    pipe.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one');")
        .await;
    let config = pipe.config("sig.yaml", Parts::default());
    let mut run = Run::start(&config, &[]);
    pipe.wait_synced("t", "snapshot").await;
    let client = pipe.db.client().await;
    for i in 2..=40 {
        client
            .batch_execute(&format!("INSERT INTO t VALUES ({i}, 'v{i}')"))
            .await
            .expect("insert");
    }
    let before_last = current_lsn(&pipe).await;
    client
        .batch_execute("UPDATE t SET v = 'last' WHERE id = 1")
        .await
        .expect("last transaction");
    pipe.wait_synced("t", "stream").await;

    let signalled = Instant::now();
    run.signal("TERM");
    let status = run
        .wait(WAIT)
        .await
        .expect("etcdsync run did not stop after SIGTERM");
    let stderr = run.stderr();
    assert!(status.success(), "exit {status:?}; stderr:\n{stderr}");
    assert!(
        signalled.elapsed() < Duration::from_secs(30),
        "took {:?}",
        signalled.elapsed()
    );
    assert!(stderr.contains("signal received"), "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");

    let checkpoint = pipe.checkpoint().await.expect("a checkpoint");
    let position = lsn(checkpoint["position"].as_str().expect("position"));
    assert!(
        position > before_last,
        "checkpoint {position:X} is before the last transaction {before_last:X}"
    );
    // What etcd covers is exactly what PostgreSQL was told is durable.
    let confirmed = confirmed_flush(&pipe).await.expect("the slot");
    assert_eq!(
        position, confirmed,
        "checkpoint {checkpoint} vs confirmed_flush {confirmed:X}"
    );
    assert_eq!(pipe.etcd_data().await, pipe.expected("t").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_exits_1_naming_what_still_runs() {
    let pipe = Pipe::new("sto").await;
    pipe.sql("CREATE TABLE t (id int PRIMARY KEY);").await;
    // An "etcd" that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let endpoint = format!("http://{}", silent.local_addr().expect("address"));
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in silent.incoming().take(64) {
            match stream {
                Ok(stream) => open.push(stream),
                Err(_) => break,
            }
        }
    });
    let config = pipe.config(
        "sto.yaml",
        Parts {
            endpoint: Some(&endpoint),
            sink_extra: "  connect_timeout: 60s\n  request_timeout: 60s\n",
            top: "shutdown_timeout: 1s\n",
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(run.still_running(), "{}", run.stderr());
    let signalled = Instant::now();
    run.signal("TERM");
    let status = run
        .wait(Duration::from_secs(20))
        .await
        .expect("did not exit");
    let stderr = run.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "{:?}",
        signalled.elapsed()
    );
    assert!(
        stderr.contains("did not stop within shutdown_timeout"),
        "{stderr}"
    );
    assert!(
        stderr.contains("still running: ") && stderr.contains("etcd"),
        "{stderr}"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let pipe = Pipe::new("sig2").await;
    pipe.sql("CREATE TABLE t (id int PRIMARY KEY);").await;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let endpoint = format!("http://{}", silent.local_addr().expect("address"));
    let config = pipe.config(
        "sig2.yaml",
        Parts {
            endpoint: Some(&endpoint),
            sink_extra: "  connect_timeout: 60s\n  request_timeout: 60s\n",
            top: "shutdown_timeout: 60s\n",
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        run.still_running(),
        "exited on the first signal: {}",
        run.stderr()
    );
    run.signal("INT");
    let status = run
        .wait(Duration::from_secs(10))
        .await
        .expect("did not exit");
    assert_eq!(status.code(), Some(130), "{}", run.stderr());
    drop(silent);
}

// ---- logs -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_appear_in_logs() {
    let pipe = Pipe::new("sec").await;
    pipe.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one');")
        .await;
    // PostgreSQL here trusts local connections, so any password is accepted and carried
    // through every connection the source makes.
    let pg_password = format!("PgPw-{}", unique("s3cret"));
    let etcd_password = format!("EtcdPw-{}", unique("s3cret"));
    let url = pipe.db.url.replacen(
        "://etcdsync:etcdsync@",
        "://etcdsync:${OPS_PG_PASSWORD}@",
        1,
    );
    assert!(url.contains("${OPS_PG_PASSWORD}"));
    let envs = [
        ("OPS_PG_PASSWORD", pg_password.as_str()),
        ("OPS_ETCD_PASSWORD", etcd_password.as_str()),
        ("RUST_LOG", "debug"),
    ];
    let leaked = |what: &str, text: &str| {
        for secret in [&pg_password, &etcd_password] {
            assert!(
                !text.contains(secret.as_str()),
                "{what} shows a password:\n{text}"
            );
        }
        // The percent-encoded forms too.
        assert!(!text.contains("s3cret"), "{what} shows a password:\n{text}");
    };

    // 1. A whole run at debug level with JSON logs: snapshot, a change, SIGTERM.
    let config = pipe.config(
        "json.yaml",
        Parts {
            url: Some(&url),
            top: "log:\n  format: json\n  level: debug\n",
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &envs);
    pipe.wait_synced("t", "snapshot").await;
    pipe.sql("INSERT INTO t VALUES (2, 'two')").await;
    pipe.wait_synced("t", "stream").await;
    run.signal("TERM");
    assert!(
        run.wait(WAIT).await.is_some_and(|s| s.success()),
        "{}",
        run.stderr()
    );
    let stderr = run.stderr();
    assert!(
        stderr.lines().count() > 10,
        "debug logs expected:\n{stderr}"
    );
    assert!(
        stderr
            .lines()
            .all(|l| serde_json::from_str::<Json>(l).is_ok()),
        "not JSON lines:\n{stderr}"
    );
    leaked("a JSON debug run", &stderr);

    // 2. Text logs at debug level against etcd with TLS and authentication, with a wrong
    // password: the failure is reported without the password.
    let tls_sink = format!(
        "  username: etcdsync\n  password: \"${{OPS_ETCD_PASSWORD}}\"\n  tls: {{ ca: \"{}\" }}\n  connect_timeout: 3s\n  request_timeout: 3s\n",
        env("ETCDSYNC_TEST_ETCD_TLS_CA")
    );
    let tls_endpoint = env("ETCDSYNC_TEST_ETCD_TLS");
    let config = pipe.config(
        "text.yaml",
        Parts {
            url: Some(&url),
            endpoint: Some(&tls_endpoint),
            sink_extra: &tls_sink,
            top: "log:\n  format: text\n  level: debug\nshutdown_timeout: 5s\n",
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &envs);
    if run.wait(Duration::from_secs(8)).await.is_none() {
        run.signal("TERM");
        run.wait(WAIT).await.expect("stopped");
    }
    let stderr = run.stderr();
    assert!(!stderr.is_empty());
    leaked("a text debug run with a refused etcd password", &stderr);

    // 3. `check` and `status` with both passwords.
    let output = etcdsync(&["check", "-c", path(&config)], &envs).await;
    leaked("check", &text(&output));
    let output = etcdsync(&["status", "-c", path(&config)], &envs).await;
    leaked("status", &text(&output));
}

/// Passwords with `/ ? @ #` and `%` — raw as `${VAR}` inserts them, and percent-encoded — and a
/// numeric etcd password, through `run` (trace-level JSON logs, connection retries), `check`,
/// `status`, `verify`, config errors and a MySQL source: never shown anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_passwords_are_never_shown() {
    let pipe = Pipe::new("sec2").await;
    pipe.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one');")
        .await;
    // One marker inside every password: found nowhere else.
    let tag = format!(
        "Zq{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() % 1_000_000_000_000)
    );
    let raw_pg = format!("Pg/Pw?{tag}");
    let numeric_etcd: String = format!("9{}", &tag[2..]);
    let shown_nowhere = |what: &str, text: &str| {
        assert!(!text.contains(&tag), "{what} shows a password:\n{text}");
        assert!(
            !text.contains(&tag[2..]),
            "{what} shows the numeric password:\n{text}"
        );
    };
    let raw_url = pipe
        .db
        .url
        .replacen("://etcdsync:etcdsync@", "://etcdsync:${SEC_PG}@", 1);
    let envs = [
        ("SEC_PG", raw_pg.as_str()),
        ("SEC_ETCD", numeric_etcd.as_str()),
        ("RUST_LOG", "trace"),
    ];

    // A whole run at trace level with JSON logs, then check, status and verify.
    let config = pipe.config(
        "trace.yaml",
        Parts {
            url: Some(&raw_url),
            top: "log:\n  format: json\n  level: trace\n",
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &envs);
    pipe.wait_synced("t", "snapshot with a raw hostile password")
        .await;
    run.signal("TERM");
    assert!(
        run.wait(WAIT).await.is_some_and(|s| s.success()),
        "{}",
        run.stderr()
    );
    shown_nowhere("a trace-level JSON run", &run.stderr());
    for command in ["check", "status", "verify"] {
        let output = etcdsync(&[command, "-c", path(&config)], &envs).await;
        shown_nowhere(command, &text(&output));
    }

    // Connection retries against a closed port: a percent-encoded password, one given as a
    // `password=` parameter, and one with a raw `#` and `%`.
    let encoded = format!("Enc%23Pw%2F{tag}%3F%40%25");
    for (file, closed) in [
        (
            "retry.yaml",
            format!("postgres://etcdsync:{encoded}@127.0.0.1:1/nowhere"),
        ),
        (
            "retry-param.yaml",
            format!("postgres://etcdsync@127.0.0.1:1/nowhere?sslmode=disable&password=Pa{tag}"),
        ),
        (
            "retry-raw.yaml",
            format!("postgres://etcdsync:A#b%{tag}@127.0.0.1:1/nowhere"),
        ),
    ] {
        let config = pipe.config(
            file,
            Parts {
                url: Some(&closed),
                top: "log:\n  format: text\n  level: trace\nshutdown_timeout: 5s\n",
                ..Parts::default()
            },
        );
        let mut run = Run::start(&config, &envs);
        tokio::time::sleep(Duration::from_secs(4)).await;
        run.signal("TERM");
        let _ = run.wait(WAIT).await;
        let stderr = run.stderr();
        assert!(
            stderr.contains("127.0.0.1:1"),
            "retries expected:\n{stderr}"
        );
        shown_nowhere("connection retries", &stderr);
        let output = etcdsync(&["check", "-c", path(&config)], &envs).await;
        shown_nowhere("check of an unreachable server", &text(&output));
    }

    // Passwords the URL parser would split, refused without being shown: a raw `@` (then `/`),
    // a raw `&` inside a `password=` value; and a literal numeric etcd password next to a config
    // error.
    let numeric_literal =
        format!("  username: etcdsync\n  password: {numeric_etcd}\n  max_txn_ops: -5\n");
    for (file, url, sink_extra) in [
        (
            "raw-at.yaml",
            format!("postgres://etcdsync:Ab@Se/{tag}@127.0.0.1:1/x"),
            "",
        ),
        (
            "raw-amp.yaml",
            format!("postgres://etcdsync@127.0.0.1:1/x?password=Ab&{tag}"),
            "",
        ),
        (
            "numeric.yaml",
            "postgres://etcdsync@127.0.0.1:1/x".to_string(),
            numeric_literal.as_str(),
        ),
    ] {
        let config = pipe.config(
            file,
            Parts {
                url: Some(&url),
                sink_extra,
                ..Parts::default()
            },
        );
        for command in ["check", "run"] {
            let output = etcdsync(&[command, "-c", path(&config)], &envs).await;
            assert!(!output.status.success(), "{file}: {}", text(&output));
            shown_nowhere(&format!("{command} of {file}"), &text(&output));
        }
    }

    // Config errors: a URL that does not parse, and a bad key next to a numeric etcd password.
    let unparsable = format!("postgres://etcdsync:Bad%zz{tag}@127.0.0.1:1/x?port=notaport");
    let config = pipe.config(
        "bad.yaml",
        Parts {
            url: Some(&unparsable),
            sink_extra: "  username: etcdsync\n  password: ${SEC_ETCD}\n  max_txn_ops: -5\n",
            ..Parts::default()
        },
    );
    for command in ["check", "run"] {
        let output = etcdsync(&[command, "-c", path(&config)], &envs).await;
        assert!(!output.status.success(), "{}", text(&output));
        shown_nowhere(&format!("{command} with config errors"), &text(&output));
    }

    // A numeric etcd password refused by the TLS etcd.
    let tls_sink = format!(
        "  username: etcdsync\n  password: ${{SEC_ETCD}}\n  tls: {{ ca: \"{}\" }}\n  connect_timeout: 3s\n  request_timeout: 3s\n",
        env("ETCDSYNC_TEST_ETCD_TLS_CA")
    );
    let tls_endpoint = env("ETCDSYNC_TEST_ETCD_TLS");
    let config = pipe.config(
        "etcdpw.yaml",
        Parts {
            endpoint: Some(&tls_endpoint),
            sink_extra: &tls_sink,
            top: "log:\n  format: json\n  level: trace\nshutdown_timeout: 5s\n",
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &envs);
    if run.wait(Duration::from_secs(8)).await.is_none() {
        run.signal("TERM");
        run.wait(WAIT).await.expect("stopped");
    }
    shown_nowhere("a run with a refused numeric etcd password", &run.stderr());
    let output = etcdsync(&["check", "-c", path(&config)], &envs).await;
    shown_nowhere("check with a refused etcd password", &text(&output));

    // A MySQL source whose user has a hostile password (percent-encoded in the URL).
    let admin = mysql_async::Opts::from_url(&env("ETCDSYNC_TEST_MYSQL_ADMIN")).expect("admin url");
    let mut conn = mysql_async::Conn::new(admin).await.expect("mysql admin");
    let user = format!("sec{}", &tag[2..8]);
    let my_password = format!("My/Pw?{tag}@#");
    use mysql_async::prelude::Queryable as _;
    conn.query_drop(format!(
        "CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{my_password}'; \
         GRANT SELECT, RELOAD, REPLICATION CLIENT, REPLICATION SLAVE ON *.* TO '{user}'@'%'"
    ))
    .await
    .expect("mysql user");
    let my_url = env("ETCDSYNC_TEST_MYSQL").replacen(
        "://etcdsync:etcdsync@",
        &format!("://{user}:My%2FPw%3F{tag}%40%23@"),
        1,
    );
    let yaml = format!(
        "name: {name}\nsource:\n  type: mysql\n  url: \"{my_url}/\"\n  tables: {{ include: [\"nosuchdb.*\"] }}\nsink:\n  type: etcd\n  endpoints: [\"{etcd}\"]\n  prefix: {data}-my\n  meta_prefix: {meta}-my\nlog:\n  format: json\n  level: trace\nshutdown_timeout: 5s\n",
        name = pipe.name,
        etcd = env("ETCDSYNC_TEST_ETCD"),
        data = pipe.data,
        meta = pipe.meta,
    );
    let config = pipe.dir.join("mysql.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let output = etcdsync(&["check", "-c", path(&config)], &envs).await;
    shown_nowhere("check of a MySQL source", &text(&output));
    let mut run = Run::start(&config, &envs);
    tokio::time::sleep(Duration::from_secs(4)).await;
    run.signal("TERM");
    let _ = run.wait(WAIT).await;
    shown_nowhere("a trace-level MySQL run", &run.stderr());
    conn.query_drop(format!("DROP USER IF EXISTS '{user}'@'%'"))
        .await
        .expect("drop user");
}

/// etcd credentials over `http://` are sent in clear: the run says so (once), without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_credentials_over_plain_http_warn() {
    let pipe = Pipe::new("plainpw").await;
    pipe.sql("CREATE TABLE t (id int PRIMARY KEY)").await;
    let config = pipe.config(
        "plain.yaml",
        Parts {
            sink_extra: "  username: someone\n  password: PlainPw-4471\n  connect_timeout: 2s\n  request_timeout: 2s\n",
            top: "shutdown_timeout: 5s\n",
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &[]);
    if run.wait(Duration::from_secs(10)).await.is_none() {
        run.signal("TERM");
        run.wait(WAIT).await.expect("stopped");
    }
    let stderr = run.stderr();
    assert_eq!(
        stderr
            .matches("go to an http:// endpoint unencrypted")
            .count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("PlainPw-4471"), "{stderr}");
}
