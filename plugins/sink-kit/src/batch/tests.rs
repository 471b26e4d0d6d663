use super::*;

fn put(key: &str, value: &str) -> KvOp {
    KvOp::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

fn del(key: &str) -> KvOp {
    KvOp::Delete { key: key.into() }
}

fn range(prefix: &str) -> KvOp {
    KvOp::DeleteRange {
        prefix: prefix.into(),
    }
}

const WIDE: Limits = Limits {
    max_ops: 1000,
    max_bytes: 1 << 20,
};

fn ops_of(batch: &Batch) -> Vec<KvOp> {
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
    assert_eq!(b.ops().count(), 0);
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
