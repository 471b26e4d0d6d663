//! Process-wide telemetry every stage reports into: Prometheus metrics (names below, one
//! registry with a `pipeline` label) and the snapshot progress that the CLI draws and the sink
//! publishes to etcd for `etcdsync status`.

use crate::change::TableId;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime};

/// Changes applied to the sink, by table and op (`insert`, `update`, `delete`, `truncate`).
pub const CHANGES_APPLIED: &str = "etcdsync_changes_applied_total";
/// Sink transactions written, by `kind` (`data`, `snapshot`, `checkpoint`).
pub const SINK_TXNS: &str = "etcdsync_sink_txns_total";
/// Latency of sink transactions, seconds.
pub const SINK_TXN_SECONDS: &str = "etcdsync_sink_txn_duration_seconds";
/// Operations per sink transaction.
pub const SINK_BATCH_OPS: &str = "etcdsync_sink_batch_ops";
/// Rows copied by the snapshot, by table.
pub const SNAPSHOT_ROWS: &str = "etcdsync_snapshot_rows_total";
/// Estimated rows of each table being snapshotted.
pub const SNAPSHOT_ROWS_ESTIMATED: &str = "etcdsync_snapshot_rows_estimated";
/// Seconds between the last applied transaction's commit and its application.
pub const REPLICATION_LAG: &str = "etcdsync_replication_lag_seconds";
pub const COMMIT_LATENCY: &str = "etcdsync_commit_latency_seconds";
/// Unix time of the last checkpoint written.
pub const LAST_CHECKPOINT: &str = "etcdsync_last_checkpoint_timestamp_seconds";
/// Errors, by `kind` (`config`, `transient`, `fatal`) and `stage` (`source`, `sink`, …).
pub const ERRORS: &str = "etcdsync_errors_total";
/// Retries, by `stage`.
pub const RETRIES: &str = "etcdsync_retries_total";
/// 1 while this instance holds the pipeline's leadership, else 0 (DESIGN §7).
pub const LEADER: &str = "etcdsync_leader";
/// Current phase: 0 starting, 1 snapshot, 2 streaming.
pub const PHASE: &str = "etcdsync_phase";
/// Values skipped by `on_oversize: skip`.
pub const OVERSIZE_SKIPPED: &str = "etcdsync_oversize_values_skipped_total";
/// Rows skipped by `on_invalid_key: skip` (a key with an empty component).
pub const INVALID_KEYS_SKIPPED: &str = "etcdsync_invalid_keys_skipped_total";
/// Streaming sink transactions that reached the store before their predecessor and were sent
/// again after it (ordered pipelining).
pub const SINK_TXNS_RESENT: &str = "etcdsync_sink_txns_resent_total";

/// Where the pipeline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Starting = 0,
    Snapshot = 1,
    Streaming = 2,
}

/// Snapshot progress of one table.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableProgress {
    pub rows: u64,
    /// The source's estimate of the table's rows, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_rows: Option<u64>,
    pub done: bool,
}

/// All metric handles plus progress state.
pub struct Telemetry {
    pub registry: Registry,
    pub changes_applied: IntCounterVec,
    pub sink_txns: IntCounterVec,
    pub sink_txn_seconds: HistogramVec,
    pub sink_batch_ops: HistogramVec,
    pub snapshot_rows: IntCounterVec,
    pub snapshot_rows_estimated: IntGaugeVec,
    pub replication_lag: Gauge,
    /// Where a source transaction's time goes, by `stage`: `commit_to_decoded` (from the
    /// source's commit time to the source decoding the commit), `commit_to_received` (to the sink
    /// receiving it: also transforms and queues),
    /// `sink_batch_wait` (from the sink receiving its commit to sending the store transaction
    /// that holds it) and `commit_to_applied` (from the source's commit time to the store
    /// applying it).
    pub commit_latency: HistogramVec,
    pub last_checkpoint: Gauge,
    pub errors: IntCounterVec,
    pub retries: IntCounterVec,
    pub phase: IntGauge,
    pub leader: IntGauge,
    pub oversize_skipped: IntCounterVec,
    pub invalid_keys_skipped: IntCounterVec,
    pub sink_txns_resent: IntCounterVec,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    snapshot: BTreeMap<TableId, TableProgress>,
    last_commit: Option<SystemTime>,
    started: Instant,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// Sets the pipeline label; call once before anything reports. Later calls are ignored.
pub fn init(pipeline: &str) -> &'static Telemetry {
    TELEMETRY.get_or_init(|| Telemetry::new(Some(pipeline)))
}

/// The process's telemetry (created without a pipeline label if `init` was not called).
pub fn get() -> &'static Telemetry {
    TELEMETRY.get_or_init(|| Telemetry::new(None))
}

fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    // Registration fails only for duplicate names, which the constants above rule out.
    if let Err(error) = registry.register(Box::new(metric.clone())) {
        tracing::error!(error = %error, "metric registration failed");
    }
    metric
}

impl Telemetry {
    fn new(pipeline: Option<&str>) -> Self {
        let labels = pipeline.map(|name| {
            [("pipeline".to_string(), name.to_string())]
                .into_iter()
                .collect()
        });
        let registry = Registry::new_custom(None, labels).unwrap_or_default();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).map(|m| registered(&registry, m))
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &[])
                .map(|m| registered(&registry, m))
        };
        let build = || -> prometheus::Result<Telemetry> {
            Ok(Telemetry {
                changes_applied: counter(
                    CHANGES_APPLIED,
                    "Changes applied to the sink",
                    &["table", "op"],
                )?,
                sink_txns: counter(SINK_TXNS, "Sink transactions written", &["kind"])?,
                sink_txn_seconds: histogram(
                    SINK_TXN_SECONDS,
                    "Sink transaction latency in seconds",
                    prometheus::exponential_buckets(0.0005, 2.0, 16)?,
                )?,
                sink_batch_ops: histogram(
                    SINK_BATCH_OPS,
                    "Operations per sink transaction",
                    prometheus::exponential_buckets(1.0, 2.0, 12)?,
                )?,
                snapshot_rows: counter(SNAPSHOT_ROWS, "Rows copied by the snapshot", &["table"])?,
                snapshot_rows_estimated: IntGaugeVec::new(
                    Opts::new(
                        SNAPSHOT_ROWS_ESTIMATED,
                        "Estimated rows of tables being snapshotted",
                    ),
                    &["table"],
                )
                .map(|m| registered(&registry, m))?,
                commit_latency: HistogramVec::new(
                    HistogramOpts::new(
                        COMMIT_LATENCY,
                        "Latency of source transactions by stage, in seconds",
                    )
                    .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
                    &["stage"],
                )
                .map(|m| registered(&registry, m))?,
                replication_lag: registered(
                    &registry,
                    Gauge::new(
                        REPLICATION_LAG,
                        "Seconds from source commit to sink apply of the last transaction",
                    )?,
                ),
                last_checkpoint: registered(
                    &registry,
                    Gauge::new(LAST_CHECKPOINT, "Unix time of the last checkpoint written")?,
                ),
                errors: counter(ERRORS, "Errors by kind and stage", &["kind", "stage"])?,
                retries: counter(RETRIES, "Retries by stage", &["stage"])?,
                leader: registered(
                    &registry,
                    IntGauge::new(LEADER, "1 while this instance leads the pipeline, else 0")?,
                ),
                phase: registered(
                    &registry,
                    IntGauge::new(PHASE, "0 starting, 1 snapshot, 2 streaming")?,
                ),
                oversize_skipped: counter(
                    OVERSIZE_SKIPPED,
                    "Values skipped by on_oversize: skip",
                    &["table"],
                )?,
                invalid_keys_skipped: counter(
                    INVALID_KEYS_SKIPPED,
                    "Rows skipped by on_invalid_key: skip (a key with an empty component)",
                    &["table"],
                )?,
                sink_txns_resent: counter(
                    SINK_TXNS_RESENT,
                    "Streaming sink transactions that arrived before their predecessor and were sent again after it",
                    &[],
                )?,
                registry: registry.clone(),
                state: Mutex::new(State {
                    phase: Phase::Starting,
                    snapshot: BTreeMap::new(),
                    last_commit: None,
                    started: Instant::now(),
                }),
            })
        };
        match build() {
            Ok(telemetry) => telemetry,
            // Only reachable through invalid metric names or buckets, fixed at compile time.
            Err(error) => panic!("invalid metric definition: {error}"),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %error, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.set(phase as i64);
        self.state().phase = phase;
    }

    pub fn phase_now(&self) -> Phase {
        self.state().phase
    }

    /// A table's snapshot starts; `estimated_rows` from the source's statistics.
    pub fn snapshot_table_started(&self, table: &TableId, estimated_rows: Option<u64>) {
        if let Some(estimate) = estimated_rows {
            let estimate = i64::try_from(estimate).unwrap_or(i64::MAX);
            self.snapshot_rows_estimated
                .with_label_values(&[&table.to_string()])
                .set(estimate);
        }
        self.state().snapshot.insert(
            table.clone(),
            TableProgress {
                rows: 0,
                estimated_rows,
                done: false,
            },
        );
    }

    /// `rows` more rows of `table` were read by the snapshot.
    pub fn snapshot_rows_read(&self, table: &TableId, rows: u64) {
        self.snapshot_rows
            .with_label_values(&[&table.to_string()])
            .inc_by(rows);
        if let Some(progress) = self.state().snapshot.get_mut(table) {
            progress.rows += rows;
        }
    }

    pub fn snapshot_table_done(&self, table: &TableId) {
        if let Some(progress) = self.state().snapshot.get_mut(table) {
            progress.done = true;
        }
    }

    /// Per-table snapshot progress, for progress bars and the status key.
    pub fn snapshot_progress(&self) -> BTreeMap<TableId, TableProgress> {
        self.state().snapshot.clone()
    }

    /// A source transaction committed at `commit_time` is now durable in the sink.
    pub fn transaction_applied(&self, commit_time: Option<SystemTime>) {
        let now = SystemTime::now();
        if let Some(commit) = commit_time {
            if let Ok(lag) = now.duration_since(commit) {
                self.replication_lag.set(lag.as_secs_f64());
                self.commit_latency
                    .with_label_values(&["commit_to_applied"])
                    .observe(lag.as_secs_f64());
            } else {
                self.replication_lag.set(0.0);
            }
            self.state().last_commit = Some(commit);
        }
    }

    /// The source decoded the commit of a transaction committed at `commit_time`: the server's
    /// and the network's share of the latency (WAL sender or binlog dump, decoding).
    pub fn commit_decoded(&self, commit_time: Option<SystemTime>) {
        if let Some(lag) = commit_time.and_then(|at| SystemTime::now().duration_since(at).ok()) {
            self.commit_latency
                .with_label_values(&["commit_to_decoded"])
                .observe(lag.as_secs_f64());
        }
    }

    /// The sink received a commit of a transaction the source committed at `commit_time`: with
    /// [`Self::commit_decoded`] before it, the rest is the pipeline's queues and transforms.
    pub fn commit_received(&self, commit_time: Option<SystemTime>) {
        if let Some(lag) = commit_time.and_then(|at| SystemTime::now().duration_since(at).ok()) {
            self.commit_latency
                .with_label_values(&["commit_to_received"])
                .observe(lag.as_secs_f64());
        }
    }

    /// The sink held a received commit this long before sending the transaction that holds it.
    pub fn batch_waited(&self, waited: std::time::Duration) {
        self.commit_latency
            .with_label_values(&["sink_batch_wait"])
            .observe(waited.as_secs_f64());
    }

    /// A checkpoint was written now.
    pub fn checkpoint_written(&self) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_checkpoint.set(now.as_secs_f64());
    }

    /// Commit time of the last applied transaction.
    pub fn last_commit(&self) -> Option<SystemTime> {
        self.state().last_commit
    }

    /// Seconds since the process started reporting.
    pub fn uptime_seconds(&self) -> f64 {
        self.state().started.elapsed().as_secs_f64()
    }

    pub fn error(&self, kind: crate::ErrorKind, stage: &str) {
        self.errors
            .with_label_values(&[&kind.to_string(), stage])
            .inc();
    }

    pub fn retry(&self, stage: &str) {
        self.retries.with_label_values(&[stage]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_series_and_tracks_progress() {
        let t = get();
        let table = TableId::new("public", "telemetry_test");
        t.snapshot_table_started(&table, Some(10));
        t.snapshot_rows_read(&table, 4);
        t.changes_applied
            .with_label_values(&["public.telemetry_test", "insert"])
            .inc_by(4);
        t.set_phase(Phase::Snapshot);
        let progress = t.snapshot_progress();
        assert_eq!(
            progress.get(&table),
            Some(&TableProgress {
                rows: 4,
                estimated_rows: Some(10),
                done: false
            })
        );
        let text = t.render();
        assert!(
            text.contains("etcdsync_snapshot_rows_total{table=\"public.telemetry_test\"} 4"),
            "{text}"
        );
        assert!(text.contains("etcdsync_phase 1"), "{text}");
        t.snapshot_table_done(&table);
        assert!(t.snapshot_progress()[&table].done);
    }
}
