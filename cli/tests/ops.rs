//! Operator commands against real PostgreSQL and etcd (issue 6), driving the `etcdsync` binary
//! as an operator would: `check` failing with named fixes and passing, `status --json` during a
//! snapshot and while streaming, `verify` finding planted drift and `--repair` fixing it,
//! SIGTERM leaving the checkpoint at the last applied transaction, and the shutdown timeout.
//! The metrics server is tested in ops_metrics.rs, secrets kept out of the output in
//! ops_secrets.rs.
#![cfg(feature = "integration-tests")]

mod common;

use common::*;
use etcdsync_core::TableId;
use etcdsync_tests::pg::{etcd, eventually, expected, unique};
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
