//! The kit's store-neutral operations ([`KvOp`], [`Batch`]) as etcd-client transaction
//! operations.

use etcd_client::{DeleteOptions, TxnOp};
use etcdsync_core::encode::key::prefix_range_end;
use etcdsync_sink_kit::batch::{Batch, KvOp};

/// An operation as etcd-client's.
pub fn txn_op(op: &KvOp) -> TxnOp {
    match op {
        KvOp::Put { key, value } => TxnOp::put(key.as_bytes(), value.as_slice(), None),
        KvOp::Delete { key } => TxnOp::delete(key.as_bytes(), None),
        KvOp::DeleteRange { prefix } => TxnOp::delete(
            prefix.as_bytes(),
            Some(DeleteOptions::new().with_range(prefix_range_end(prefix))),
        ),
    }
}

/// A batch's data operations as etcd-client's.
pub fn txn_ops(batch: &Batch) -> Vec<TxnOp> {
    batch.ops().map(|op| txn_op(&op)).collect()
}
