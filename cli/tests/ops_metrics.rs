//! The metrics server of `etcdsync run` against real PostgreSQL and etcd (issue 6): `/healthz`,
//! `/readyz` (503 with a reason while lag is over the limit) and `/metrics`, scraped over HTTP
//! and parsed.
#![cfg(feature = "integration-tests")]

mod common;

use bytes::Bytes;
use common::*;
use etcdsync_tests::pg::eventually;
use http_body_util::{BodyExt as _, Empty};
use std::collections::BTreeMap;

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
