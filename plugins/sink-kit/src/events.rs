//! Notable sink events, each logging and counting in one place (STYLE §5), for every sink on the
//! kit. The counts go to the process-wide [`telemetry`] (Prometheus, names in
//! `etcdsync_core::telemetry`); this module keeps no counters of its own except the source
//! transactions applied (see [`transactions_applied`]).
//!
//! Errors: a store request that fails and is retried counts here as an error (by kind, stage
//! `sink`) and a retry; an error the sink returns is counted by whoever receives it (the pipeline,
//! with stage `sink`), so nothing is counted twice.

use crate::batch::ChangeTally;
use etcdsync_core::telemetry;
use etcdsync_core::ErrorKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Source transactions applied by the sinks of this process. Core's telemetry has no counter of
/// source transactions yet (only of sink transactions), and the status key reports this one.
static SOURCE_TXNS_APPLIED: AtomicU64 = AtomicU64::new(0);

/// Label values of the histograms, which have no labels.
const NO_LABELS: &[&str] = &[];

/// What a store transaction of the sink was for: the `kind` label of
/// `etcdsync_sink_txns_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnKind {
    /// Streaming data (with the checkpoint, or a part of a large source transaction), and the
    /// deletes of a truncated table with transformed keys.
    Data,
    /// Snapshot inserts, the snapshot's start marker and its removal of stale keys.
    Snapshot,
    /// Checkpoint-only writes: idle heartbeats and the end of a snapshot.
    Checkpoint,
}

impl TxnKind {
    pub fn label(self) -> &'static str {
        match self {
            TxnKind::Data => "data",
            TxnKind::Snapshot => "snapshot",
            TxnKind::Checkpoint => "checkpoint",
        }
    }
}

/// A store transaction of `ops` operations (checkpoint put included) succeeded `elapsed` after it
/// was first sent (retries included).
pub fn txn_applied(kind: TxnKind, ops: usize, elapsed: Duration) {
    let t = telemetry::get();
    t.sink_txns.with_label_values(&[kind.label()]).inc();
    t.sink_txn_seconds
        .with_label_values(NO_LABELS)
        .observe(elapsed.as_secs_f64());
    t.sink_batch_ops
        .with_label_values(NO_LABELS)
        .observe(ops as f64);
}

/// [`txn_applied`] measured from `started`.
pub fn txn_applied_since(kind: TxnKind, ops: usize, started: Instant) {
    txn_applied(kind, ops, started.elapsed());
}

/// The changes an applied store transaction carried (counted per source change, not per
/// coalesced store operation: a change later overwritten in the same transaction still counts).
pub fn changes_applied(tally: &ChangeTally) {
    let t = telemetry::get();
    tally.for_each(|table, op, count| {
        t.changes_applied
            .with_label_values(&[table, op])
            .inc_by(count);
    });
}

/// The checkpoint put of an applied transaction.
pub fn checkpoint_written() {
    telemetry::get().checkpoint_written();
}

/// `count` source transactions, the last committed at `commit_time`, are durable in the store.
pub fn transactions_applied(count: u64, commit_time: Option<SystemTime>) {
    if count == 0 {
        return;
    }
    SOURCE_TXNS_APPLIED.fetch_add(count, Ordering::Relaxed);
    telemetry::get().transaction_applied(commit_time);
}

/// Source transactions applied by the sinks of this process.
pub fn source_txns_applied() -> u64 {
    SOURCE_TXNS_APPLIED.load(Ordering::Relaxed)
}

/// A failed store request is retried after `backoff`: an error of its kind and a retry.
pub fn retry(
    op: &str,
    attempt: u32,
    error: &dyn std::fmt::Display,
    kind: ErrorKind,
    backoff: Duration,
) {
    let t = telemetry::get();
    t.error(kind, "sink");
    t.retry("sink");
    tracing::warn!(error = %error, op, attempt, retry_in = ?backoff, "sink request failed; retrying");
}

/// A streaming transaction reached etcd before its predecessor: refused by its order compare, it
/// is sent again now that the predecessor is applied.
pub fn txn_resent(seq: u64) {
    telemetry::get()
        .sink_txns_resent
        .with_label_values(NO_LABELS)
        .inc();
    tracing::debug!(
        seq,
        "a streaming transaction arrived before its predecessor; sent again after it"
    );
}

/// A write of `{meta}/status` failed; the status writer tries again at its next interval and
/// never returns the error, so it is counted here.
pub fn status_write_failed(kind: ErrorKind) {
    telemetry::get().error(kind, "sink");
}

/// `on_oversize: skip` dropped a change.
pub fn oversize_skipped(table: &str, key: &str, size: usize, limit: usize) {
    let counter = telemetry::get()
        .oversize_skipped
        .with_label_values(&[table]);
    counter.inc();
    tracing::warn!(
        table,
        key,
        size,
        limit,
        skipped_total = counter.get(),
        "change too large for one store request; skipped (sink.on_oversize: skip)"
    );
}

/// `on_invalid_key: skip` skipped a row whose key has an empty component.
pub fn invalid_key_skipped(table: &str, row: &str, key: &str, previous_key_deleted: bool) {
    let counter = telemetry::get()
        .invalid_keys_skipped
        .with_label_values(&[table]);
    counter.inc();
    tracing::warn!(
        table,
        row,
        key,
        previous_key_deleted,
        skipped_total = counter.get(),
        "row skipped: its key has an empty component (a column of the key template is empty in the row); \
         sink.on_invalid_key: skip"
    );
}

/// A snapshot removed keys it did not rewrite.
pub fn stale_keys_deleted(table: &str, count: usize) {
    tracing::info!(table, count, "snapshot removed keys it did not rewrite");
}
