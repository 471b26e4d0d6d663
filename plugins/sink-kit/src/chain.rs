//! Ordered pipelining of streaming writes (DESIGN §4, §7): several are applied at once and the
//! store still applies them in the order they were sent. Every streaming write puts the
//! checkpoint key naming its writer — this sink session and the write's sequence number — and is
//! conditional on the key holding exactly what its predecessor puts ([`Store::apply_if`]). One
//! that reaches the store first finds another value, waits for its predecessor and is sent again;
//! a write of anyone else (another session's late retry, another instance, an operator) breaks
//! the chain loudly instead of passing for ours. A lost leadership is the store's own refusal.

use crate::batch::CommitMark;
use crate::markers::{checkpoint_writer, decode_checkpoint};
use crate::store::{Condition, Ops, Store};
use crate::KitError;
use etcdsync_core::Checkpoint;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// The checkpoint key as the last streaming write sent leaves it.
#[derive(Debug, Clone, Default)]
pub struct ChainEnd {
    /// Its exact value (`None`: absent), which the next write expects.
    pub value: Option<Vec<u8>>,
    /// The commit it names, which a part of a split source transaction puts again.
    pub mark: Option<CommitMark>,
}

impl ChainEnd {
    /// The chain's end as the checkpoint key `key` holds `value` (`None`: absent), and the
    /// checkpoint it names.
    pub fn stored(key: &str, value: Option<&[u8]>) -> Result<(Self, Option<Checkpoint>), KitError> {
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

/// Where a streaming write stands, for the one sent after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Not on its way to the store: before its first send, or refused for arriving before its
    /// predecessor and waiting for it. The next one holds back too — sent now, it would
    /// arrive before this one and be refused as well.
    Waiting,
    /// Its latest attempt is on its way: the next one may follow.
    Sending,
    Applied,
    Failed,
}

/// Waits until the write before reaches `ready` (or is applied); `Failed` when it failed or its
/// task is gone.
async fn reached(before: &mut watch::Receiver<Stage>, ready: &[Stage]) -> Stage {
    before
        .wait_for(|stage| ready.contains(stage) || matches!(stage, Stage::Applied | Stage::Failed))
        .await
        .map(|stage| *stage)
        .unwrap_or(Stage::Failed)
}

/// A name for one sink session's chain, unlike any other session's (process id, time, counter).
pub fn new_session() -> Arc<str> {
    static SESSIONS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = SESSIONS.fetch_add(1, Ordering::Relaxed);
    format!("{:x}.{nanos:x}.{n}", std::process::id()).into()
}

/// A streaming write's place in the chain.
pub struct Link {
    pub checkpoint_key: String,
    /// The checkpoint key's value before this write (`None`: absent).
    pub expected: Option<Vec<u8>>,
    /// This session and the write's number in it, when it puts the checkpoint key. One that
    /// does not (a part of a split source transaction before any checkpoint exists) is sent
    /// alone: nothing else is in flight.
    pub writer: Option<(Arc<str>, u64)>,
    /// The stage of the write sent before it, if that was still in flight.
    pub predecessor: Option<watch::Receiver<Stage>>,
    /// This write's stage (starts `Waiting`; `Applied` or `Failed` when `apply` ends).
    pub stage: watch::Sender<Stage>,
}

impl Link {
    /// Applies `build()` in its place: after every write sent before it. Its stage ends
    /// `Applied` or `Failed` with it. `resent(seq)` counts a write sent again after arriving
    /// before its predecessor.
    pub async fn apply<'a, S: Store>(
        mut self,
        store: &S,
        what: &'static str,
        build: &Ops<'a>,
        resent: &(dyn Fn(u64) + Sync),
    ) -> Result<(), S::Error> {
        let result = self.apply_in_order(store, what, build, resent).await;
        self.stage.send_replace(if result.is_ok() {
            Stage::Applied
        } else {
            Stage::Failed
        });
        result
    }

    async fn apply_in_order<'a, S: Store>(
        &mut self,
        store: &S,
        what: &'static str,
        build: &Ops<'a>,
        resent: &(dyn Fn(u64) + Sync),
    ) -> Result<(), S::Error> {
        let mut predecessor = self.predecessor.take();
        if let Some(before) = predecessor.as_mut() {
            if reached(before, &[Stage::Sending]).await == Stage::Failed {
                return Err(KitError::PredecessorFailed.into());
            }
        }
        loop {
            self.stage.send_replace(Stage::Sending);
            let current = match store
                .apply_if(what, &self.checkpoint_key, self.expected.as_deref(), build)
                .await?
            {
                Condition::Met => return Ok(()),
                Condition::Found(current) => current,
            };
            let found = current.as_deref().and_then(checkpoint_writer);
            if let (Some((session, seq)), Some((found_session, found_seq))) = (&self.writer, &found)
            {
                if **session == *found_session.as_str() && found_seq >= seq {
                    // This write (and maybe later ones) applied; the answer to the attempt
                    // that did it was lost.
                    tracing::debug!(seq, found_seq, "a retried streaming write had been applied");
                    return Ok(());
                }
            }
            // Not applied: if the one before it was still in flight, this one arrived first.
            if let Some(mut before) = predecessor.take() {
                self.stage.send_replace(Stage::Waiting);
                if reached(&mut before, &[]).await == Stage::Applied {
                    resent(self.writer.as_ref().map_or(0, |(_, seq)| *seq));
                    continue;
                }
                return Err(KitError::PredecessorFailed.into());
            }
            return Err(KitError::ChainBroken {
                key: self.checkpoint_key.clone(),
                found: match found {
                    Some((session, seq)) => format!("transaction {seq} of session {session}"),
                    None if current.is_some() => {
                        "a value no streaming session of etcdsync wrote".into()
                    }
                    None => "no checkpoint".into(),
                },
            }
            .into());
        }
    }
}
