//! Ordered pipelining of streaming transactions (DESIGN §4, §7): up to `stream_txns_in_flight`
//! are applied at once and etcd still applies them in the order they were sent. Every streaming
//! transaction puts the checkpoint key naming its writer — this sink session and the
//! transaction's sequence number — and compares the key's value with exactly what its
//! predecessor puts. One that reaches etcd first fails its compare, waits for its predecessor and
//! is sent again; a write of anyone else (another session's late retry, another instance, an
//! operator) breaks the chain loudly instead of passing for ours. A failed compare reads the
//! checkpoint and leader keys in the same transaction, which tells a lost leadership, a retry of
//! a transaction etcd had already applied and an early arrival apart.

use crate::batch::CommitMark;
use crate::checkpoint::{checkpoint_writer, decode_checkpoint};
use crate::client::EtcdClient;
use crate::error::EtcdError;
use crate::events;
use etcd_client::{Compare, CompareOp, TxnOp, TxnOpResponse, TxnResponse};
use etcdsync_core::Checkpoint;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The checkpoint key as the last streaming transaction sent leaves it.
#[derive(Debug, Clone, Default)]
pub(super) struct ChainEnd {
    /// Its exact value (`None`: absent), which the next transaction compares.
    pub value: Option<Vec<u8>>,
    /// The commit it names, which a part of a split source transaction puts again.
    pub mark: Option<CommitMark>,
}

impl ChainEnd {
    /// The chain's end as the checkpoint key `key` holds `value` (`None`: absent), and the
    /// checkpoint it names.
    pub(super) fn stored(
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(Self, Option<Checkpoint>), EtcdError> {
        let checkpoint = value.map(|v| decode_checkpoint(key, v)).transpose()?;
        let end = ChainEnd {
            value: value.map(<[u8]>::to_vec),
            mark: checkpoint.as_ref().map(|c| CommitMark {
                position: c.position.clone(),
                committed_at: c.committed_at.clone(),
            }),
        };
        Ok((end, checkpoint))
    }
}

/// Where a streaming transaction stands, for the one sent after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Not on its way to etcd: before its first send, or refused for arriving before its
    /// predecessor and waiting for it. The next one holds back too — sent now, it would
    /// arrive before this one and be refused as well.
    Waiting,
    /// Its latest attempt is on its way: the next one may follow.
    Sending,
    Applied,
    Failed,
}

/// Waits until the transaction before reaches `ready` (or is applied); `Failed` when it failed
/// or its task is gone.
async fn reached(before: &mut watch::Receiver<Stage>, ready: &[Stage]) -> Stage {
    before
        .wait_for(|stage| ready.contains(stage) || matches!(stage, Stage::Applied | Stage::Failed))
        .await
        .map(|stage| *stage)
        .unwrap_or(Stage::Failed)
}

/// A name for one sink session's chain, unlike any other session's (process id, time, counter).
pub(super) fn new_session() -> Arc<str> {
    static SESSIONS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = SESSIONS.fetch_add(1, Ordering::Relaxed);
    format!("{:x}.{nanos:x}.{n}", std::process::id()).into()
}

/// A streaming transaction's place in the chain.
pub(super) struct Link {
    pub checkpoint_key: String,
    /// The checkpoint key's value before this transaction (`None`: absent).
    pub expected: Option<Vec<u8>>,
    /// This session and the transaction's number in it, when it puts the checkpoint key. One
    /// that does not (a part of a split source transaction before any checkpoint exists) is
    /// sent alone: nothing else is in flight.
    pub writer: Option<(Arc<str>, u64)>,
    /// The leader key and this instance's token, when writes are fenced.
    pub leader: Option<(String, i64)>,
    /// The stage of the transaction sent before it, if that was still in flight.
    pub predecessor: Option<watch::Receiver<Stage>>,
    /// This transaction's stage (starts `Waiting`; `Applied` or `Failed` when `apply` ends).
    pub stage: watch::Sender<Stage>,
}

impl Link {
    /// Applies `build()` under `guards` in its place: after every transaction sent before it.
    /// Its stage ends `Applied` or `Failed` with it.
    pub(super) async fn apply(
        mut self,
        client: &EtcdClient,
        op: &str,
        guards: &[Compare],
        build: impl Fn() -> Vec<TxnOp>,
        shutdown: &CancellationToken,
    ) -> Result<(), EtcdError> {
        let result = self
            .apply_in_order(client, op, guards, build, shutdown)
            .await;
        self.stage.send_replace(if result.is_ok() {
            Stage::Applied
        } else {
            Stage::Failed
        });
        result
    }

    async fn apply_in_order(
        &mut self,
        client: &EtcdClient,
        op: &str,
        guards: &[Compare],
        build: impl Fn() -> Vec<TxnOp>,
        shutdown: &CancellationToken,
    ) -> Result<(), EtcdError> {
        let key = self.checkpoint_key.as_str();
        let mut compares = guards.to_vec();
        compares.push(match &self.expected {
            Some(value) => Compare::value(key, CompareOp::Equal, value.as_slice()),
            None => Compare::version(key, CompareOp::Equal, 0),
        });
        let mut otherwise = vec![TxnOp::get(key, None)];
        if let Some((leader_key, _)) = &self.leader {
            otherwise.push(TxnOp::get(leader_key.as_str(), None));
        }
        crate::test_hooks::before_stream_txn(key).await;
        let failed_before = || {
            EtcdError::Task(
                "a streaming transaction was not applied because the one before it failed".into(),
            )
        };
        let mut predecessor = self.predecessor.take();
        if let Some(before) = predecessor.as_mut() {
            if reached(before, &[Stage::Sending]).await == Stage::Failed {
                return Err(failed_before());
            }
        }
        loop {
            self.stage.send_replace(Stage::Sending);
            let response = client
                .txn_or_else(op, &compares, &build, otherwise.clone(), shutdown)
                .await?;
            if response.succeeded() {
                return Ok(());
            }
            let (current, leader_token) = seen(&response);
            if let Some((_, token)) = &self.leader {
                if leader_token != Some(*token) {
                    return Err(EtcdError::CompareFailed(op.to_string()));
                }
            }
            let found = current.as_deref().and_then(checkpoint_writer);
            if let (Some((session, seq)), Some((found_session, found_seq))) = (&self.writer, &found)
            {
                if **session == *found_session.as_str() && found_seq >= seq {
                    // This transaction (and maybe later ones) applied; the response to the
                    // attempt that did it was lost.
                    tracing::debug!(
                        seq,
                        found_seq,
                        "a retried streaming transaction had been applied"
                    );
                    return Ok(());
                }
            }
            // Not applied: if the one before it was still in flight, this one arrived first.
            if let Some(mut before) = predecessor.take() {
                self.stage.send_replace(Stage::Waiting);
                if reached(&mut before, &[]).await == Stage::Applied {
                    events::txn_resent(self.writer.as_ref().map_or(0, |(_, seq)| *seq));
                    continue;
                }
                return Err(failed_before());
            }
            return Err(EtcdError::ChainBroken {
                key: self.checkpoint_key.clone(),
                found: match found {
                    Some((session, seq)) => format!("transaction {seq} of session {session}"),
                    None if current.is_some() => {
                        "a value no streaming session of etcdsync wrote".into()
                    }
                    None => "no checkpoint".into(),
                },
            });
        }
    }
}

/// The checkpoint key's value and the leader key's create revision a failed compare read.
fn seen(response: &TxnResponse) -> (Option<Vec<u8>>, Option<i64>) {
    let mut reads = response.op_responses().into_iter().map(|read| match read {
        TxnOpResponse::Get(range) => range
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.create_revision())),
        _ => None,
    });
    let checkpoint = reads.next().flatten().map(|(value, _)| value);
    let leader = reads.next().flatten().map(|(_, created)| created);
    (checkpoint, leader)
}
