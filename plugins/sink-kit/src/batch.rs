//! Packs source transactions into store transactions (DESIGN §4): one op per key (last change
//! wins), within an op count and a byte size, and never a put inside a range deleted in the same
//! transaction (a truncate closes its table's range for the rest of the batch).

use etcdsync_core::{Position, TableId};
use std::collections::HashMap;
use std::time::SystemTime;

/// Bytes counted per operation on top of its key and value: protobuf tags and lengths of the
/// `RequestOp` and its `PutRequest`/`DeleteRangeRequest` (about 16 in practice), with margin.
pub const OP_OVERHEAD: usize = 32;

/// Bytes kept free in every request for the transaction envelope, etcd's internal raft request
/// header and guard compares.
pub const TXN_OVERHEAD: usize = 1024;

/// Bytes kept free in streaming transactions for what names the position: the checkpoint put,
/// the order compare on the predecessor's checkpoint, the `{meta}/partial` marker (positions such
/// as long MariaDB GTID sets appear in each).
pub const CHECKPOINT_RESERVE: usize = 32 * 1024;

/// One store operation on data keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    Put {
        key: String,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    /// Delete every key starting with `prefix` (a truncated table).
    DeleteRange {
        prefix: String,
    },
}

impl KvOp {
    /// The bytes this op adds to a request.
    pub fn size(&self) -> usize {
        match self {
            KvOp::Put { key, value } => key.len() + value.len() + OP_OVERHEAD,
            KvOp::Delete { key } => key.len() + OP_OVERHEAD,
            // key plus range_end, which is as long as the prefix
            KvOp::DeleteRange { prefix } => 2 * prefix.len() + OP_OVERHEAD,
        }
    }

    /// The key of a single-key op.
    pub fn key(&self) -> Option<&str> {
        match self {
            KvOp::Put { key, .. } | KvOp::Delete { key } => Some(key),
            KvOp::DeleteRange { .. } => None,
        }
    }

    fn is_put(&self) -> bool {
        matches!(self, KvOp::Put { .. })
    }
}

/// What one batch may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Data operations per store transaction.
    pub max_ops: usize,
    /// Bytes of data operations ([`KvOp::size`]) per store transaction.
    pub max_bytes: usize,
}

impl Limits {
    /// Limits for transactions that also carry the checkpoint (and the split-transaction marker).
    pub fn with_checkpoint(max_txn_ops: usize, max_request_bytes: usize) -> Self {
        Self {
            // the checkpoint put and the `{meta}/partial` put or delete
            max_ops: max_txn_ops.saturating_sub(2).max(1),
            max_bytes: max_request_bytes.saturating_sub(TXN_OVERHEAD + CHECKPOINT_RESERVE),
        }
    }

    /// Limits for transactions of data alone (snapshot).
    pub fn without_checkpoint(max_txn_ops: usize, max_request_bytes: usize) -> Self {
        Self {
            max_ops: max_txn_ops.max(1),
            max_bytes: max_request_bytes.saturating_sub(TXN_OVERHEAD),
        }
    }
}

/// The end of a source transaction a batch carries the checkpoint of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitMark {
    pub position: Position,
    /// RFC 3339 commit time, when the source knows it.
    pub committed_at: Option<String>,
}

/// Source changes a batch carries, by table and op: what `etcdsync_changes_applied_total` counts
/// once the batch is applied (changes, not coalesced store operations).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChangeTally {
    counts: HashMap<TableId, [u64; 4]>,
}

/// The op labels of [`ChangeTally`], as `Change::op_name` gives them.
const OPS: [&str; 4] = ["insert", "update", "delete", "truncate"];

impl ChangeTally {
    /// One change of `table`; `op` is `insert`, `update`, `delete` or `truncate`.
    pub fn add(&mut self, table: &TableId, op: &str) {
        let Some(slot) = OPS.iter().position(|o| *o == op) else {
            return;
        };
        match self.counts.get_mut(table) {
            Some(counts) => counts[slot] += 1,
            None => {
                let mut counts = [0; 4];
                counts[slot] = 1;
                self.counts.insert(table.clone(), counts);
            }
        }
    }

    pub fn merge(&mut self, other: ChangeTally) {
        for (table, counts) in other.counts {
            let mine = self.counts.entry(table).or_default();
            for (a, b) in mine.iter_mut().zip(counts) {
                *a += b;
            }
        }
    }

    /// Calls `f(table, op, count)` for every non-zero count (`table` as `schema.table`).
    pub fn for_each(&self, mut f: impl FnMut(&str, &str, u64)) {
        for (table, counts) in &self.counts {
            let name = table.to_string();
            for (op, count) in OPS.iter().zip(counts) {
                if *count > 0 {
                    f(&name, op, *count);
                }
            }
        }
    }

    /// All changes counted.
    pub fn total(&self) -> u64 {
        self.counts.values().flatten().sum()
    }
}

/// What a batch says about a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The batch writes this value.
    Value(&'a [u8]),
    /// The batch deletes the key (or a range that holds it).
    Deleted,
    /// The batch does not touch the key.
    Unknown,
}

/// One store transaction being built: single-key ops coalesced by key, delete ranges, and the
/// checkpoint of the last source transaction it completes.
///
/// Invariant: no single-key op lies inside one of the batch's delete ranges.
#[derive(Debug, Default)]
pub struct Batch {
    ops: Vec<KvOp>,
    index: HashMap<String, usize>,
    ranges: Vec<String>,
    bytes: usize,
    commit: Option<CommitMark>,
    /// The source changes the batch carries (for metrics).
    tally: ChangeTally,
    /// Source transactions the batch completes (0 for a heartbeat's checkpoint alone).
    commits: u64,
    /// Commit time of the last of them, when the source knows it.
    commit_time: Option<SystemTime>,
    /// When the sink received the first of them (the batch-wait metric).
    first_received: Option<std::time::Instant>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Data operations (single-key ops and delete ranges).
    pub fn len(&self) -> usize {
        self.ops.len() + self.ranges.len()
    }

    /// No data and no checkpoint.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.commit.is_none()
    }

    pub fn has_data(&self) -> bool {
        !self.ops.is_empty() || !self.ranges.is_empty()
    }

    /// Bytes of the data operations ([`KvOp::size`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn commit(&self) -> Option<&CommitMark> {
        self.commit.as_ref()
    }

    /// Records that the batch completes the source transaction ending at `mark`.
    pub fn set_commit(&mut self, mark: CommitMark) {
        self.commit = Some(mark);
    }

    /// [`Self::set_commit`] for a source transaction's `Commit` (not a heartbeat): also counts it.
    pub fn record_commit(&mut self, mark: CommitMark, commit_time: Option<SystemTime>) {
        self.commit = Some(mark);
        self.commits += 1;
        self.first_received
            .get_or_insert_with(std::time::Instant::now);
        if commit_time.is_some() {
            self.commit_time = commit_time;
        }
    }

    /// Counts one source change added with [`Self::try_add`] (for metrics).
    pub fn count_change(&mut self, table: &TableId, op: &str) {
        self.tally.add(table, op);
    }

    /// [`Self::try_add`] of one source change's operations, counting the change (`op`, when it
    /// counts as applied) once they are in.
    pub fn try_add_change(
        &mut self,
        unit: Vec<KvOp>,
        limits: Limits,
        table: &TableId,
        op: Option<&str>,
    ) -> Result<(), Vec<KvOp>> {
        self.try_add(unit, limits)?;
        if let Some(op) = op {
            self.count_change(table, op);
        }
        Ok(())
    }

    pub fn tally(&self) -> &ChangeTally {
        &self.tally
    }

    /// Source transactions the batch completes.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Commit time of the last source transaction the batch completes.
    pub fn commit_time(&self) -> Option<SystemTime> {
        self.commit_time
    }

    /// When the sink received the first source commit the batch completes.
    pub fn first_received(&self) -> Option<std::time::Instant> {
        self.first_received
    }

    /// Every data operation: single-key ops, then delete ranges (order within one store
    /// transaction does not matter: no key appears twice and no put lies in a deleted range).
    pub fn ops(&self) -> impl Iterator<Item = std::borrow::Cow<'_, KvOp>> + '_ {
        self.ops
            .iter()
            .map(std::borrow::Cow::Borrowed)
            .chain(self.ranges.iter().map(|prefix| {
                std::borrow::Cow::Owned(KvOp::DeleteRange {
                    prefix: prefix.clone(),
                })
            }))
    }

    /// What this batch does to `key`.
    pub fn lookup(&self, key: &str) -> Lookup<'_> {
        match self.index.get(key).and_then(|&i| self.ops.get(i)) {
            Some(KvOp::Put { value, .. }) => Lookup::Value(value),
            Some(_) => Lookup::Deleted,
            None if self.in_range(key) => Lookup::Deleted,
            None => Lookup::Unknown,
        }
    }

    fn in_range(&self, key: &str) -> bool {
        self.ranges.iter().any(|p| key.starts_with(p.as_str()))
    }

    fn size_of(&self, key: &str) -> Option<usize> {
        self.index
            .get(key)
            .and_then(|&i| self.ops.get(i))
            .map(KvOp::size)
    }

    /// Adds one unit — a single op, or the delete + put of a key change, which must share a
    /// transaction — if the result stays within `limits`; otherwise hands the unit back
    /// unchanged. On an empty batch a refusal means the unit alone exceeds the limits.
    pub fn try_add(&mut self, unit: Vec<KvOp>, limits: Limits) -> Result<(), Vec<KvOp>> {
        let mut count = self.len();
        let mut bytes = self.bytes;
        for (i, op) in unit.iter().enumerate() {
            match op {
                KvOp::DeleteRange { prefix } => {
                    if self.ranges.iter().any(|p| p == prefix) {
                        continue;
                    }
                    for existing in &self.ops {
                        if existing
                            .key()
                            .is_some_and(|k| k.starts_with(prefix.as_str()))
                        {
                            count -= 1;
                            bytes -= existing.size();
                        }
                    }
                    count += 1;
                    bytes += op.size();
                }
                KvOp::Put { key, .. } | KvOp::Delete { key } => {
                    if self.in_range(key) {
                        if op.is_put() {
                            return Err(unit);
                        }
                        continue;
                    }
                    // An earlier op of the same unit on this key (not expected; kept correct).
                    let previous = unit[..i]
                        .iter()
                        .rev()
                        .find(|o| o.key() == Some(key.as_str()))
                        .map(KvOp::size)
                        .or_else(|| self.size_of(key));
                    match previous {
                        Some(size) => bytes = bytes - size + op.size(),
                        None => {
                            count += 1;
                            bytes += op.size();
                        }
                    }
                }
            }
        }
        if count > limits.max_ops || bytes > limits.max_bytes {
            return Err(unit);
        }
        for op in unit {
            self.apply(op);
        }
        debug_assert_eq!(self.bytes, bytes);
        Ok(())
    }

    /// Appends every op and the checkpoint of `other` (a later, complete source transaction) if
    /// the result stays within `limits`; otherwise hands `other` back unchanged.
    #[allow(clippy::result_large_err)] // hands the batch back by move; nothing is copied
    pub fn try_merge(&mut self, other: Batch, limits: Limits) -> Result<(), Batch> {
        if other
            .ops
            .iter()
            .any(|op| op.is_put() && op.key().is_some_and(|k| self.in_range(k)))
        {
            return Err(other);
        }
        let mut count = self.len();
        let mut bytes = self.bytes;
        let new_ranges: Vec<&String> = other
            .ranges
            .iter()
            .filter(|p| !self.ranges.contains(p))
            .collect();
        for existing in &self.ops {
            if existing
                .key()
                .is_some_and(|k| new_ranges.iter().any(|p| k.starts_with(p.as_str())))
            {
                count -= 1;
                bytes -= existing.size();
            }
        }
        for prefix in &new_ranges {
            count += 1;
            bytes += 2 * prefix.len() + OP_OVERHEAD;
        }
        for op in &other.ops {
            let Some(key) = op.key() else { continue };
            if self.in_range(key) {
                continue; // a delete inside a range this batch already deletes
            }
            match self.size_of(key) {
                // not inside `new_ranges`: `other` holds no op inside its own ranges
                Some(size) => bytes = bytes - size + op.size(),
                None => {
                    count += 1;
                    bytes += op.size();
                }
            }
        }
        if count > limits.max_ops || bytes > limits.max_bytes {
            return Err(other);
        }
        let Batch {
            ops,
            ranges,
            commit,
            tally,
            commits,
            commit_time,
            first_received,
            ..
        } = other;
        for prefix in ranges {
            self.apply(KvOp::DeleteRange { prefix });
        }
        for op in ops {
            self.apply(op);
        }
        if commit.is_some() {
            self.commit = commit;
        }
        self.tally.merge(tally);
        self.commits += commits;
        if commit_time.is_some() {
            self.commit_time = commit_time;
        }
        self.first_received = match (self.first_received, first_received) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        debug_assert_eq!((self.len(), self.bytes), (count, bytes));
        Ok(())
    }

    /// Applies one op unconditionally (limits already checked), keeping the invariant.
    fn apply(&mut self, op: KvOp) {
        match op {
            KvOp::DeleteRange { prefix } => {
                if self.ranges.contains(&prefix) {
                    return;
                }
                if self
                    .ops
                    .iter()
                    .any(|o| o.key().is_some_and(|k| k.starts_with(prefix.as_str())))
                {
                    let mut removed = 0;
                    self.ops.retain(|o| {
                        let inside = o.key().is_some_and(|k| k.starts_with(prefix.as_str()));
                        if inside {
                            removed += o.size();
                        }
                        !inside
                    });
                    self.bytes -= removed;
                    self.index = self
                        .ops
                        .iter()
                        .enumerate()
                        .filter_map(|(i, o)| o.key().map(|k| (k.to_string(), i)))
                        .collect();
                }
                self.bytes += 2 * prefix.len() + OP_OVERHEAD;
                self.ranges.push(prefix);
            }
            KvOp::Put { ref key, .. } | KvOp::Delete { ref key } => {
                if self.in_range(key) {
                    // a delete inside a deleted range is a no-op (puts never get here)
                    return;
                }
                let size = op.size();
                match self.index.get(key.as_str()).copied() {
                    Some(i) => {
                        if let Some(slot) = self.ops.get_mut(i) {
                            self.bytes = self.bytes - slot.size() + size;
                            *slot = op;
                        }
                    }
                    None => {
                        self.index.insert(key.clone(), self.ops.len());
                        self.bytes += size;
                        self.ops.push(op);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
