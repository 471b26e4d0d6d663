//! rows/s of the etcd sink against raw etcd-client transactions in the same run, same key and
//! value sizes, same batch size and in-flight policy (DESIGN §4). Needs `ETCDSYNC_TEST_ETCD`
//! (tools/bench-etcd-sink.sh provides one); `BENCH_ROWS` sets the rows per measurement,
//! `BENCH_REPEAT` the interleaved rounds (best of them is reported).

use etcd_client::{Client, DeleteOptions, TxnOp};
use etcdsync_core::change::Column;
use etcdsync_core::sink::{SinkConfig, SinkContext, SinkIo};
use etcdsync_core::{Change, Commit, Message, Position, TableId, TableSchema, Value};
use etcdsync_etcd::EtcdConfig;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Puts per raw transaction: etcd's default `--max-txn-ops`.
const OPS_PER_TXN: usize = 128;
/// Raw transactions in flight for the snapshot comparison (the sink's default
/// `snapshot_txns_in_flight`).
const SNAPSHOT_IN_FLIGHT: usize = 4;
/// Target value size in bytes.
const VALUE_BYTES: usize = 200;
/// Rows per `Changes` message, as sources send them.
const CHUNK: usize = 256;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> BenchResult<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench())
}

fn table() -> Arc<TableSchema> {
    Arc::new(TableSchema::new(
        TableId::new("public", "bench"),
        vec![Column::new("id", "int8"), Column::new("payload", "text")],
        vec![0],
    ))
}

/// A row whose JSON value is about `VALUE_BYTES` long.
fn row(id: u64) -> Vec<Value> {
    let filler = VALUE_BYTES.saturating_sub(30);
    Vec::from([
        Value::Int(id as i64),
        Value::Text(format!("{id:012}{}", "x".repeat(filler))),
    ])
}

fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}", nanos & 0xffff_ffff_ffff)
}

async fn bench() -> BenchResult<()> {
    let url = std::env::var("ETCDSYNC_TEST_ETCD").map_err(|_| {
        "ETCDSYNC_TEST_ETCD is not set; run tools/bench-etcd-sink.sh (it starts an etcd)"
    })?;
    let rows: u64 = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    if rows == 0 {
        return Err("BENCH_ROWS must be at least 1".into());
    }
    let mut client = Client::connect([url.as_str()], None).await?;
    let value_len = etcdsync_core::encode::json::encode_row(&table(), &row(1))?.len();
    println!("etcd sink vs raw etcd-client: {rows} rows per run, {value_len}-byte values, {OPS_PER_TXN} ops per txn, etcd at {url}");

    let repeat: usize = std::env::var("BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let run_id = unique();
    let raw_prefix = format!("/bench-raw-{run_id}");
    let sink_prefix = format!("/bench-sink-{run_id}");
    let meta_prefix = format!("/bench-meta-{run_id}");

    // Interleaved repetitions; the best of each counts (the machine may be busy with other work).
    let mut best = [Duration::MAX; 4];
    let mut snapshot_ratios = Vec::new();
    let mut stream_ratios = Vec::new();
    for round in 1..=repeat {
        let times = [
            raw(&client, &raw_prefix, rows, value_len, SNAPSHOT_IN_FLIGHT).await?,
            sink_snapshot(&url, &sink_prefix, &meta_prefix, rows).await?,
            raw(&client, &raw_prefix, rows, value_len, 1).await?,
            sink_stream(&url, &sink_prefix, &meta_prefix, rows).await?,
        ];
        for prefix in [&raw_prefix, &sink_prefix, &meta_prefix] {
            cleanup(&mut client, prefix).await?;
        }
        let rates: Vec<String> = times
            .iter()
            .map(|d| format!("{:.0}", rows as f64 / d.as_secs_f64()))
            .collect();
        println!("round {round}/{repeat}: rows/s raw-snapshot {} sink-snapshot {} raw-stream {} sink-stream {}", rates[0], rates[1], rates[2], rates[3]);
        // Same round, same conditions: time raw / time sink is rows/s sink / raw.
        snapshot_ratios.push(times[0].as_secs_f64() / times[1].as_secs_f64());
        stream_ratios.push(times[2].as_secs_f64() / times[3].as_secs_f64());
        for (slot, time) in best.iter_mut().zip(times) {
            *slot = (*slot).min(time);
        }
    }
    let [raw_snapshot, sink_snapshot, raw_stream, sink_stream] = best;

    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    println!();
    println!("{:<58} {:>12}", format!("best of {repeat}"), "rows/s");
    println!(
        "{:<58} {:>12.0}",
        format!("raw: {OPS_PER_TXN} puts/txn, {SNAPSHOT_IN_FLIGHT} txns in flight"),
        rate(raw_snapshot)
    );
    println!(
        "{:<58} {:>12.0}",
        format!("sink: snapshot inserts, {SNAPSHOT_IN_FLIGHT} txns in flight"),
        rate(sink_snapshot)
    );
    println!(
        "{:<58} {:>12.0}",
        format!("raw: {OPS_PER_TXN} puts/txn, 1 txn in flight"),
        rate(raw_stream)
    );
    println!(
        "{:<58} {:>12.0}",
        "sink: streaming single-row commits (group commit)",
        rate(sink_stream)
    );
    println!();
    println!(
        "ratio sink/raw, snapshot:  {:.2}  (median of the rounds' ratios; of the best rows/s: {:.2})",
        median(&mut snapshot_ratios),
        rate(sink_snapshot) / rate(raw_snapshot)
    );
    println!(
        "ratio sink/raw, streaming: {:.2}  (median of the rounds' ratios; of the best rows/s: {:.2})",
        median(&mut stream_ratios),
        rate(sink_stream) / rate(raw_stream)
    );
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

async fn cleanup(client: &mut Client, prefix: &str) -> BenchResult<()> {
    client
        .delete(
            format!("{prefix}/"),
            Some(DeleteOptions::new().with_prefix()),
        )
        .await?;
    Ok(())
}

/// Raw transactions of `OPS_PER_TXN` puts with `in_flight` of them at once.
async fn raw(
    client: &Client,
    prefix: &str,
    rows: u64,
    value_len: usize,
    in_flight: usize,
) -> BenchResult<Duration> {
    let value = vec![b'v'; value_len];
    let mut tasks: JoinSet<Result<(), etcd_client::Error>> = JoinSet::new();
    let started = Instant::now();
    let mut next = 0u64;
    while next < rows {
        while tasks.len() >= in_flight {
            if let Some(done) = tasks.join_next().await {
                done??;
            }
        }
        let end = (next + OPS_PER_TXN as u64).min(rows);
        let ops: Vec<TxnOp> = (next..end)
            .map(|i| TxnOp::put(format!("{prefix}/public/bench/{i}"), value.clone(), None))
            .collect();
        next = end;
        let mut kv = client.kv_client();
        tasks.spawn(async move {
            kv.txn(etcd_client::Txn::new().and_then(ops))
                .await
                .map(|_| ())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(started.elapsed())
}

struct Running {
    tx: mpsc::Sender<Message>,
    acked: watch::Receiver<Option<Position>>,
    handle: tokio::task::JoinHandle<etcdsync_core::Result<()>>,
}

async fn start_sink(url: &str, prefix: &str, meta: &str) -> BenchResult<Running> {
    let config = EtcdConfig {
        endpoints: vec![url.to_string()],
        prefix: prefix.to_string(),
        meta_prefix: Some(meta.to_string()),
        ..EtcdConfig::default()
    };
    config.validate("bench")?;
    let sink = config
        .build(SinkContext {
            name: "bench".into(),
            source_type: "bench".into(),
            former_source_names: Vec::new(),
            fence: None,
        })
        .await?;
    let (tx, input) = mpsc::channel(etcdsync_core::pipeline::CHANNEL_CAPACITY);
    let (ack_tx, acked) = watch::channel(None);
    let handle = tokio::spawn(sink.run(SinkIo {
        input,
        acked: ack_tx,
        shutdown: CancellationToken::new(),
        fetcher: None,
    }));
    Ok(Running { tx, acked, handle })
}

async fn wait_for(running: &mut Running, position: &Position) -> BenchResult<()> {
    while running.acked.borrow_and_update().as_ref() != Some(position) {
        running
            .acked
            .changed()
            .await
            .map_err(|_| "the sink stopped")?;
    }
    Ok(())
}

async fn finish(running: Running) -> BenchResult<()> {
    drop(running.tx);
    running.handle.await??;
    Ok(())
}

/// A snapshot of `rows` inserts: from `SnapshotStarted` to the acknowledgement of its end.
async fn sink_snapshot(url: &str, prefix: &str, meta: &str, rows: u64) -> BenchResult<Duration> {
    let mut running = start_sink(url, prefix, meta).await?;
    let table = table();
    let started = Instant::now();
    running
        .tx
        .send(Message::SnapshotStarted {
            tables: vec![table.id.clone()],
        })
        .await?;
    let mut next = 0u64;
    while next < rows {
        let end = (next + CHUNK as u64).min(rows);
        let changes = (next..end)
            .map(|i| Change::insert(table.clone(), row(i)))
            .collect();
        running.tx.send(Message::Changes(changes)).await?;
        next = end;
    }
    let position = Position::new("snapshot-end");
    running
        .tx
        .send(Message::SnapshotFinished {
            position: position.clone(),
        })
        .await?;
    wait_for(&mut running, &position).await?;
    let elapsed = started.elapsed();
    finish(running).await?;
    Ok(elapsed)
}

/// `rows` source transactions of one insert each, sent as fast as the sink takes them.
async fn sink_stream(url: &str, prefix: &str, meta: &str, rows: u64) -> BenchResult<Duration> {
    let mut running = start_sink(url, prefix, meta).await?;
    let before = sink_txn_totals();
    let table = table();
    let started = Instant::now();
    for i in 0..rows {
        running
            .tx
            .send(Message::Changes(vec![Change::insert(
                table.clone(),
                row(i),
            )]))
            .await?;
        let commit = Commit {
            position: Position::new(format!("{i:012}")),
            commit_time: Some(SystemTime::now()),
        };
        running.tx.send(Message::Commit(commit)).await?;
    }
    wait_for(&mut running, &Position::new(format!("{:012}", rows - 1))).await?;
    let elapsed = started.elapsed();
    let after = sink_txn_totals();
    let txns = after.0.saturating_sub(before.0).max(1);
    println!(
        "  sink streaming: {txns} etcd transactions, {:.1} operations per transaction (checkpoint included)",
        (after.1 - before.1) / txns as f64
    );
    finish(running).await?;
    Ok(elapsed)
}

/// Data transactions the sinks of this process applied, and their operations (checkpoint puts
/// included), from the process-wide telemetry.
fn sink_txn_totals() -> (u64, f64) {
    let t = etcdsync_core::telemetry::get();
    let txns = t.sink_txns.with_label_values(&["data"]).get();
    let ops = t
        .sink_batch_ops
        .with_label_values(&[] as &[&str])
        .get_sample_sum();
    (txns, ops)
}
