//! Notable sink events: each logs and counts in one place. The counters are process-wide so a
//! metrics exporter (and tests) can read them with [`counters`].

use std::sync::atomic::{AtomicU64, Ordering};

static TXNS_APPLIED: AtomicU64 = AtomicU64::new(0);
static OPS_APPLIED: AtomicU64 = AtomicU64::new(0);
static CHECKPOINTS_WRITTEN: AtomicU64 = AtomicU64::new(0);
static RETRIES: AtomicU64 = AtomicU64::new(0);
static OVERSIZE_SKIPPED: AtomicU64 = AtomicU64::new(0);
static STALE_KEYS_DELETED: AtomicU64 = AtomicU64::new(0);

/// A snapshot of the sink's counters (all etcd sinks of this process together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// etcd transactions applied (`etcdsync_txns_applied_total`).
    pub txns_applied: u64,
    /// Data operations applied.
    pub ops_applied: u64,
    /// Checkpoint puts applied.
    pub checkpoints_written: u64,
    /// Retried etcd requests.
    pub retries: u64,
    /// Changes skipped by `on_oversize: skip`.
    pub oversize_skipped: u64,
    /// Keys a snapshot removed because it did not rewrite them.
    pub stale_keys_deleted: u64,
}

pub fn counters() -> Counters {
    Counters {
        txns_applied: TXNS_APPLIED.load(Ordering::Relaxed),
        ops_applied: OPS_APPLIED.load(Ordering::Relaxed),
        checkpoints_written: CHECKPOINTS_WRITTEN.load(Ordering::Relaxed),
        retries: RETRIES.load(Ordering::Relaxed),
        oversize_skipped: OVERSIZE_SKIPPED.load(Ordering::Relaxed),
        stale_keys_deleted: STALE_KEYS_DELETED.load(Ordering::Relaxed),
    }
}

/// An etcd transaction succeeded.
pub fn txn_applied(ops: usize, checkpoint: bool) {
    TXNS_APPLIED.fetch_add(1, Ordering::Relaxed);
    OPS_APPLIED.fetch_add(ops as u64, Ordering::Relaxed);
    if checkpoint {
        CHECKPOINTS_WRITTEN.fetch_add(1, Ordering::Relaxed);
    }
}

/// An etcd request failed transiently and will be retried (logged by the caller with context).
pub fn retry() {
    RETRIES.fetch_add(1, Ordering::Relaxed);
}

/// `on_oversize: skip` dropped a change.
pub fn oversize_skipped(table: &str, key: &str, size: usize, limit: usize) {
    let total = OVERSIZE_SKIPPED.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::warn!(
        table,
        key,
        size,
        limit,
        skipped_total = total,
        "change too large for one etcd request; skipped (sink.on_oversize: skip)"
    );
}

/// A snapshot removed keys it did not rewrite.
pub fn stale_keys_deleted(table: &str, count: usize) {
    STALE_KEYS_DELETED.fetch_add(count as u64, Ordering::Relaxed);
    tracing::info!(table, count, "snapshot removed keys it did not rewrite");
}
