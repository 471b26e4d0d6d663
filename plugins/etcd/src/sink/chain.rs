//! Ordered pipelining of streaming transactions (DESIGN §4): up to `stream_txns_in_flight` are
//! applied at once and etcd still applies them in the order they were sent. Every streaming
//! transaction puts the checkpoint key (a part of a split source transaction puts the value it
//! already holds) and compares its version with the one its predecessor leaves, so one that
//! reaches etcd first fails its compare, waits for its predecessor and is sent again. A failed
//! compare reads the checkpoint and leader keys in the same transaction, which tells a lost
//! leadership, a retry of a transaction etcd had already applied and an early arrival apart.

use crate::client::EtcdClient;
use crate::error::EtcdError;
use crate::events;
use etcd_client::{Compare, CompareOp, TxnOp, TxnOpResponse, TxnResponse};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The checkpoint key as the last streaming transaction sent leaves it.
#[derive(Debug, Clone, Default)]
pub(super) struct ChainEnd {
    /// Its version (0: absent).
    pub version: i64,
    /// Its value, which a part of a split source transaction puts again; `None` while there is
    /// no checkpoint.
    pub checkpoint: Option<Vec<u8>>,
}

/// How a streaming transaction ended, for the one sent after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Pending,
    Applied,
    Failed,
}

/// A streaming transaction's place in the chain.
pub(super) struct Link {
    pub checkpoint_key: String,
    /// The checkpoint key's version before this transaction.
    pub expected_version: i64,
    /// Whether it puts the checkpoint key. One that does not (a part of a split source
    /// transaction before any checkpoint exists) is sent alone: nothing else is in flight.
    pub puts_checkpoint: bool,
    /// The leader key and this instance's token, when writes are fenced.
    pub leader: Option<(String, i64)>,
    /// The outcome of the transaction sent before it, if that was still in flight.
    pub predecessor: Option<watch::Receiver<Outcome>>,
}

impl Link {
    /// Applies `build()` under `guards` in its place: after every transaction sent before it.
    pub(super) async fn apply(
        self,
        client: &EtcdClient,
        op: &str,
        guards: &[Compare],
        build: impl Fn() -> Vec<TxnOp>,
        shutdown: &CancellationToken,
    ) -> Result<(), EtcdError> {
        let mut compares = guards.to_vec();
        compares.push(Compare::version(
            self.checkpoint_key.as_str(),
            CompareOp::Equal,
            self.expected_version,
        ));
        let mut otherwise = vec![TxnOp::get(self.checkpoint_key.as_str(), None)];
        if let Some((leader_key, _)) = &self.leader {
            otherwise.push(TxnOp::get(leader_key.as_str(), None));
        }
        crate::test_hooks::before_stream_txn(&self.checkpoint_key).await;
        let mut predecessor = self.predecessor;
        loop {
            let response = client
                .txn_or_else(op, &compares, &build, otherwise.clone(), shutdown)
                .await?;
            if response.succeeded() {
                return Ok(());
            }
            let (version, leader_token) = seen(&response);
            if let Some((_, token)) = &self.leader {
                if leader_token != Some(*token) {
                    return Err(EtcdError::CompareFailed(op.to_string()));
                }
            }
            if self.puts_checkpoint && version > self.expected_version {
                // Only this chain writes the checkpoint key, and nothing after this transaction
                // applies before it: etcd applied it and the response was lost.
                tracing::debug!(
                    expected_version = self.expected_version,
                    version,
                    "a retried streaming transaction had been applied"
                );
                return Ok(());
            }
            if version < self.expected_version {
                if let Some(mut before) = predecessor.take() {
                    let outcome = before
                        .wait_for(|outcome| *outcome != Outcome::Pending)
                        .await
                        .map(|outcome| *outcome)
                        .unwrap_or(Outcome::Failed);
                    if outcome == Outcome::Applied {
                        events::txn_resent(self.expected_version, version);
                        continue;
                    }
                    return Err(EtcdError::Task(
                        "a streaming transaction was not applied because the one before it failed"
                            .into(),
                    ));
                }
            }
            return Err(EtcdError::ChainBroken {
                key: self.checkpoint_key,
                expected: self.expected_version,
                found: version,
            });
        }
    }
}

/// The checkpoint key's version and the leader key's create revision a failed compare read.
fn seen(response: &TxnResponse) -> (i64, Option<i64>) {
    let mut reads = response.op_responses().into_iter().map(|read| match read {
        TxnOpResponse::Get(range) => range
            .kvs()
            .first()
            .map(|kv| (kv.version(), kv.create_revision())),
        _ => None,
    });
    let version = reads.next().flatten().map_or(0, |(version, _)| version);
    let leader = reads.next().flatten().map(|(_, created)| created);
    (version, leader)
}
