//! Packs source transactions into etcd transactions (DESIGN §4): one op per key (last change
//! wins), within `max_txn_ops`/`max_request_bytes`, and never a put inside a range deleted in the
//! same etcd transaction (a truncate closes its table's range for the rest of the batch).

use etcdsync_core::encode::key::prefix_range_end;
use etcdsync_core::{Position, TableId};
use std::collections::HashMap;
use std::time::SystemTime;

/// Bytes counted per operation on top of its key and value: protobuf tags and lengths of the
/// `RequestOp` and its `PutRequest`/`DeleteRangeRequest` (about 16 in practice), with margin.
pub const OP_OVERHEAD: usize = 32;

/// Bytes kept free in every request for the transaction envelope, etcd's internal raft request
/// header and guard compares.
pub const TXN_OVERHEAD: usize = 1024;

/// Bytes kept free in streaming transactions for the checkpoint put (key and JSON).
pub const CHECKPOINT_RESERVE: usize = 8 * 1024;

/// One etcd operation on data keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdOp {
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

impl EtcdOp {
    /// The bytes this op adds to a request.
    pub fn size(&self) -> usize {
        match self {
            EtcdOp::Put { key, value } => key.len() + value.len() + OP_OVERHEAD,
            EtcdOp::Delete { key } => key.len() + OP_OVERHEAD,
            // key plus range_end, which is as long as the prefix
            EtcdOp::DeleteRange { prefix } => 2 * prefix.len() + OP_OVERHEAD,
        }
    }

    /// The key of a single-key op.
    pub fn key(&self) -> Option<&str> {
        match self {
            EtcdOp::Put { key, .. } | EtcdOp::Delete { key } => Some(key),
            EtcdOp::DeleteRange { .. } => None,
        }
    }

    fn is_put(&self) -> bool {
        matches!(self, EtcdOp::Put { .. })
    }

    /// The etcd-client operation.
    pub fn to_txn_op(&self) -> etcd_client::TxnOp {
        match self {
            EtcdOp::Put { key, value } => {
                etcd_client::TxnOp::put(key.as_bytes(), value.as_slice(), None)
            }
            EtcdOp::Delete { key } => etcd_client::TxnOp::delete(key.as_bytes(), None),
            EtcdOp::DeleteRange { prefix } => etcd_client::TxnOp::delete(
                prefix.as_bytes(),
                Some(etcd_client::DeleteOptions::new().with_range(prefix_range_end(prefix))),
            ),
        }
    }
}

/// What one batch may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Data operations per etcd transaction.
    pub max_ops: usize,
    /// Bytes of data operations ([`EtcdOp::size`]) per etcd transaction.
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
/// once the batch is applied (changes, not coalesced etcd operations).
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

/// One etcd transaction being built: single-key ops coalesced by key, delete ranges, and the
/// checkpoint of the last source transaction it completes.
///
/// Invariant: no single-key op lies inside one of the batch's delete ranges.
#[derive(Debug, Default)]
pub struct Batch {
    ops: Vec<EtcdOp>,
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

    /// Bytes of the data operations ([`EtcdOp::size`]).
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

    /// Every data operation: single-key ops, then delete ranges (order within one etcd
    /// transaction does not matter: no key appears twice and no put lies in a deleted range).
    pub fn ops(&self) -> impl Iterator<Item = std::borrow::Cow<'_, EtcdOp>> + '_ {
        self.ops
            .iter()
            .map(std::borrow::Cow::Borrowed)
            .chain(self.ranges.iter().map(|prefix| {
                std::borrow::Cow::Owned(EtcdOp::DeleteRange {
                    prefix: prefix.clone(),
                })
            }))
    }

    /// The etcd-client operations of the data.
    pub fn txn_ops(&self) -> Vec<etcd_client::TxnOp> {
        let mut out = Vec::with_capacity(self.len() + 1);
        out.extend(self.ops.iter().map(EtcdOp::to_txn_op));
        out.extend(self.ranges.iter().map(|prefix| {
            EtcdOp::DeleteRange {
                prefix: prefix.clone(),
            }
            .to_txn_op()
        }));
        out
    }

    /// What this batch does to `key`.
    pub fn lookup(&self, key: &str) -> Lookup<'_> {
        match self.index.get(key).and_then(|&i| self.ops.get(i)) {
            Some(EtcdOp::Put { value, .. }) => Lookup::Value(value),
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
            .map(EtcdOp::size)
    }

    /// Adds one unit — a single op, or the delete + put of a key change, which must share a
    /// transaction — if the result stays within `limits`; otherwise hands the unit back
    /// unchanged. On an empty batch a refusal means the unit alone exceeds the limits.
    pub fn try_add(&mut self, unit: Vec<EtcdOp>, limits: Limits) -> Result<(), Vec<EtcdOp>> {
        let mut count = self.len();
        let mut bytes = self.bytes;
        for (i, op) in unit.iter().enumerate() {
            match op {
                EtcdOp::DeleteRange { prefix } => {
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
                EtcdOp::Put { key, .. } | EtcdOp::Delete { key } => {
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
                        .map(EtcdOp::size)
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
            self.apply(EtcdOp::DeleteRange { prefix });
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
    fn apply(&mut self, op: EtcdOp) {
        match op {
            EtcdOp::DeleteRange { prefix } => {
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
            EtcdOp::Put { ref key, .. } | EtcdOp::Delete { ref key } => {
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
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> EtcdOp {
        EtcdOp::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn del(key: &str) -> EtcdOp {
        EtcdOp::Delete { key: key.into() }
    }

    fn range(prefix: &str) -> EtcdOp {
        EtcdOp::DeleteRange {
            prefix: prefix.into(),
        }
    }

    const WIDE: Limits = Limits {
        max_ops: 1000,
        max_bytes: 1 << 20,
    };

    fn ops_of(batch: &Batch) -> Vec<EtcdOp> {
        batch.ops().map(|op| op.into_owned()).collect()
    }

    fn mark(position: &str) -> CommitMark {
        CommitMark {
            position: Position::new(position),
            committed_at: None,
        }
    }

    fn recount(batch: &Batch) -> usize {
        batch.ops().map(|op| op.size()).sum()
    }

    #[test]
    fn coalesces_by_key_last_wins_and_put_then_delete_is_delete() {
        let mut b = Batch::new();
        for op in [
            put("/p/a", "1"),
            put("/p/b", "1"),
            put("/p/a", "2"),
            del("/p/b"),
            put("/p/c", "x"),
        ] {
            b.try_add(vec![op], WIDE).expect("fits");
        }
        assert_eq!(
            ops_of(&b),
            vec![put("/p/a", "2"), del("/p/b"), put("/p/c", "x")]
        );
        assert_eq!(b.lookup("/p/a"), Lookup::Value(b"2"));
        assert_eq!(b.lookup("/p/b"), Lookup::Deleted);
        assert_eq!(b.lookup("/p/z"), Lookup::Unknown);
        assert_eq!(b.bytes(), recount(&b));
    }

    #[test]
    fn byte_accounting_counts_key_value_and_overhead() {
        let mut b = Batch::new();
        b.try_add(vec![put("/p/k", "value")], WIDE).expect("fits");
        assert_eq!(b.bytes(), 4 + 5 + OP_OVERHEAD);
        b.try_add(vec![put("/p/k", "v")], WIDE).expect("fits");
        assert_eq!(b.bytes(), 4 + 1 + OP_OVERHEAD);
        b.try_add(vec![del("/p/k")], WIDE).expect("fits");
        assert_eq!(b.bytes(), 4 + OP_OVERHEAD);
        b.try_add(vec![put("/p/t/1", "value")], WIDE).expect("fits");
        assert_eq!(b.bytes(), (4 + OP_OVERHEAD) + (6 + 5 + OP_OVERHEAD));
        // The truncate replaces the put inside its range; the delete outside stays.
        b.try_add(vec![range("/p/t/")], WIDE).expect("fits");
        assert_eq!(b.bytes(), (4 + OP_OVERHEAD) + (2 * 5 + OP_OVERHEAD));
        assert_eq!(b.len(), 2);
        let limits = Limits::with_checkpoint(128, 1_572_864);
        assert_eq!(limits.max_ops, 126);
        assert_eq!(
            limits.max_bytes,
            1_572_864 - TXN_OVERHEAD - CHECKPOINT_RESERVE
        );
        let limits = Limits::without_checkpoint(128, 1_572_864);
        assert_eq!(limits.max_ops, 128);
        assert_eq!(limits.max_bytes, 1_572_864 - TXN_OVERHEAD);
    }

    #[test]
    fn splits_at_the_op_limit_but_a_rewrite_still_fits() {
        let limits = Limits {
            max_ops: 3,
            max_bytes: 1 << 20,
        };
        let mut b = Batch::new();
        for k in ["/p/1", "/p/2", "/p/3"] {
            b.try_add(vec![put(k, "v")], limits).expect("fits");
        }
        let refused = b.try_add(vec![put("/p/4", "v")], limits).expect_err("full");
        assert_eq!(refused, vec![put("/p/4", "v")]);
        b.try_add(vec![put("/p/2", "w")], limits)
            .expect("same key: no new op");
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn splits_at_the_byte_limit() {
        let one = 4 + 10 + OP_OVERHEAD;
        let limits = Limits {
            max_ops: 100,
            max_bytes: 2 * one + 5,
        };
        let mut b = Batch::new();
        b.try_add(vec![put("/p/1", "0123456789")], limits)
            .expect("fits");
        b.try_add(vec![put("/p/2", "0123456789")], limits)
            .expect("fits");
        b.try_add(vec![put("/p/3", "0123456789")], limits)
            .expect_err("over bytes");
        // A bigger value for an existing key is refused when it grows past the limit.
        b.try_add(vec![put("/p/1", "0123456789ABCDEF")], limits)
            .expect_err("grows over");
        b.try_add(vec![put("/p/1", "012345678901234")], limits)
            .expect("grows within");
        // On an empty batch a refusal means the value alone is too big.
        let mut empty = Batch::new();
        let big = "x".repeat(limits.max_bytes);
        empty
            .try_add(vec![put("/p/big", &big)], limits)
            .expect_err("oversize");
        assert!(!empty.has_data());
    }

    #[test]
    fn key_change_is_one_unit() {
        let limits = Limits {
            max_ops: 3,
            max_bytes: 1 << 20,
        };
        let mut b = Batch::new();
        b.try_add(vec![put("/p/1", "a"), put("/p/2", "a")], limits)
            .expect("fits");
        // delete old + put new needs two more ops: refused as a whole, batch untouched.
        let unit = vec![del("/p/5"), put("/p/9", "a")];
        assert_eq!(b.try_add(unit.clone(), limits), Err(unit.clone()));
        assert_eq!(b.len(), 2);
        let mut fresh = Batch::new();
        fresh.try_add(unit, limits).expect("fits a fresh batch");
        assert_eq!(fresh.len(), 2);
        // A key change onto keys already present counts no new op.
        b.try_add(vec![del("/p/1"), put("/p/2", "b")], limits)
            .expect("rewrites only");
        assert_eq!(ops_of(&b), vec![del("/p/1"), put("/p/2", "b")]);
    }

    #[test]
    fn truncate_drops_earlier_ops_of_the_table_and_closes_its_range() {
        let mut b = Batch::new();
        b.try_add(vec![put("/p/s/t/1", "a")], WIDE).expect("fits");
        b.try_add(vec![put("/p/s/t2/1", "a")], WIDE).expect("fits");
        b.try_add(vec![del("/p/s/t/2")], WIDE).expect("fits");
        b.try_add(vec![range("/p/s/t/")], WIDE).expect("fits");
        assert_eq!(ops_of(&b), vec![put("/p/s/t2/1", "a"), range("/p/s/t/")]);
        assert_eq!(b.bytes(), recount(&b));
        assert_eq!(b.lookup("/p/s/t/1"), Lookup::Deleted);
        assert_eq!(b.lookup("/p/s/t2/1"), Lookup::Value(b"a"));
        // A put into the truncated table needs the next etcd transaction...
        b.try_add(vec![put("/p/s/t/3", "b")], WIDE)
            .expect_err("put in deleted range");
        // ...a delete there is already done, and the neighbouring table `t2` goes on.
        b.try_add(vec![del("/p/s/t/4")], WIDE).expect("no-op");
        b.try_add(vec![put("/p/s/t2/2", "b")], WIDE)
            .expect("other table");
        b.try_add(vec![range("/p/s/t/")], WIDE)
            .expect("same truncate again");
        assert_eq!(b.len(), 3);
        assert_eq!(b.bytes(), recount(&b));
    }

    #[test]
    fn merge_appends_a_later_transaction_and_takes_its_checkpoint() {
        let mut ready = Batch::new();
        ready.try_add(vec![put("/p/a", "1")], WIDE).expect("fits");
        ready.try_add(vec![put("/p/b", "1")], WIDE).expect("fits");
        ready.set_commit(mark("1"));
        let mut open = Batch::new();
        open.try_add(vec![put("/p/a", "2")], WIDE).expect("fits");
        open.try_add(vec![del("/p/b")], WIDE).expect("fits");
        open.try_add(vec![put("/p/c", "2")], WIDE).expect("fits");
        open.set_commit(mark("2"));
        ready.try_merge(open, WIDE).expect("fits");
        assert_eq!(
            ops_of(&ready),
            vec![put("/p/a", "2"), del("/p/b"), put("/p/c", "2")]
        );
        assert_eq!(ready.commit(), Some(&mark("2")));
        assert_eq!(ready.bytes(), recount(&ready));
    }

    #[test]
    fn merge_refuses_what_does_not_fit_and_keeps_transactions_whole() {
        let limits = Limits {
            max_ops: 4,
            max_bytes: 1 << 20,
        };
        let mut ready = Batch::new();
        for k in ["/p/1", "/p/2", "/p/3"] {
            ready.try_add(vec![put(k, "v")], limits).expect("fits");
        }
        ready.set_commit(mark("1"));
        let mut open = Batch::new();
        open.try_add(vec![put("/p/3", "w")], limits).expect("fits");
        open.try_add(vec![put("/p/4", "w")], limits).expect("fits");
        open.try_add(vec![put("/p/5", "w")], limits).expect("fits");
        open.set_commit(mark("2"));
        // 3 + 2 new keys = 5 > 4: the whole transaction goes to the next etcd transaction.
        let open = ready.try_merge(open, limits).expect_err("too many ops");
        assert_eq!(ready.len(), 3);
        assert_eq!(ready.commit(), Some(&mark("1")));
        assert_eq!(open.len(), 3);
        // An empty transaction (only a commit) always merges.
        let mut empty = Batch::new();
        empty.set_commit(mark("3"));
        ready.try_merge(empty, limits).expect("commit only");
        assert_eq!(ready.commit(), Some(&mark("3")));
    }

    #[test]
    fn merge_with_truncates() {
        let mut ready = Batch::new();
        ready
            .try_add(vec![put("/p/s/t/1", "a")], WIDE)
            .expect("fits");
        ready
            .try_add(vec![put("/p/s/t2/1", "a")], WIDE)
            .expect("fits");
        let mut open = Batch::new();
        open.try_add(vec![range("/p/s/t/")], WIDE).expect("fits");
        open.try_add(vec![put("/p/s/t2/2", "b")], WIDE)
            .expect("fits");
        ready.try_merge(open, WIDE).expect("fits");
        assert_eq!(
            ops_of(&ready),
            vec![
                put("/p/s/t2/1", "a"),
                put("/p/s/t2/2", "b"),
                range("/p/s/t/")
            ]
        );
        assert_eq!(ready.bytes(), recount(&ready));
        // A later transaction writing into the truncated table cannot join this etcd txn.
        let mut open = Batch::new();
        open.try_add(vec![put("/p/s/t/5", "c")], WIDE)
            .expect("fits");
        let open = ready
            .try_merge(open, WIDE)
            .expect_err("put in deleted range");
        assert_eq!(open.len(), 1);
        // One that only deletes there can.
        let mut open = Batch::new();
        open.try_add(vec![del("/p/s/t/5")], WIDE).expect("fits");
        ready
            .try_merge(open, WIDE)
            .expect("delete in deleted range is a no-op");
        assert_eq!(ready.len(), 3);
    }

    #[test]
    fn a_checkpoint_only_batch_is_not_data() {
        let mut b = Batch::new();
        assert!(b.is_empty());
        b.set_commit(mark("9"));
        assert!(!b.is_empty());
        assert!(!b.has_data());
        assert_eq!(b.txn_ops().len(), 0);
    }

    #[test]
    fn tallies_changes_and_commits_through_merges() {
        let t = TableId::new("s", "t");
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let mut a = Batch::new();
        a.try_add(vec![put("/p/s/t/1", "a")], WIDE).expect("fits");
        a.count_change(&t, "insert");
        a.record_commit(mark("1"), Some(at));
        let mut b = Batch::new();
        b.try_add(vec![put("/p/s/t/1", "b")], WIDE).expect("fits");
        b.count_change(&t, "update");
        b.try_add(vec![del("/p/s/t/1")], WIDE).expect("fits");
        b.count_change(&t, "delete");
        b.record_commit(mark("2"), None);
        a.try_merge(b, WIDE).expect("merges");
        // One coalesced op, but three changes of two transactions.
        assert_eq!(a.len(), 1);
        assert_eq!((a.commits(), a.commit_time()), (2, Some(at)));
        assert_eq!(a.tally().total(), 3);
        let mut seen = Vec::new();
        a.tally()
            .for_each(|table, op, n| seen.push(format!("{table} {op} {n}")));
        seen.sort();
        assert_eq!(seen, vec!["s.t delete 1", "s.t insert 1", "s.t update 1"]);
        // A heartbeat's checkpoint is not a source transaction.
        let mut idle = Batch::new();
        idle.set_commit(mark("3"));
        assert_eq!(idle.commits(), 0);
    }
}
