//! The writer of a key-value sink (DESIGN §4–6), whatever the store ([`Store`]): streaming
//! keeps a few data transactions in flight, applied in order ([`crate::chain`]), while the next
//! fills (group commit); a snapshot keeps several unordered ones. Every streaming transaction
//! carries the checkpoint; a position is acknowledged only after the store applied it. It reports
//! phase, transactions and changes to core's telemetry ([`crate::events`]).

use crate::batch::{Batch, CommitMark, KvOp, Limits, Lookup};
use crate::chain;
use crate::events::{self, TxnKind};
use crate::index::KeyIndex;
use crate::markers::{encode_checkpoint, PartialMarker, SnapshotMarker, SnapshotState};
use crate::settings::{OnInvalidKey, OnOversize, SinkSettings};
use crate::store::Store;
use crate::KitError;
use etcdsync_core::change::rfc3339;
use etcdsync_core::encode::json::encode_row;
use etcdsync_core::encode::key::{is_valid_relative_key, row_key, table_prefix};
use etcdsync_core::source::RowFetcher;
use etcdsync_core::telemetry::{self, Phase};
use etcdsync_core::{Change, Commit, Message, Op, Position, Row, TableId, TableSchema, Value};
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Where the previous run stopped, as the sink's metadata says.
#[derive(Debug, Default, Clone)]
pub struct Resumed {
    pub position: Option<String>,
    pub partial: Option<PartialMarker>,
    /// The checkpoint key exactly as read: the first transaction of the run compares it, so a
    /// late write of an earlier attempt that lands afterwards is noticed, not built upon.
    pub chain: Option<chain::ChainEnd>,
}

impl Resumed {
    /// Where the previous run stopped, from the values of the checkpoint key and the
    /// split-transaction marker as the store holds them (`None`: absent), and the checkpoint.
    pub fn from_stored(
        settings: &SinkSettings,
        checkpoint: Option<&[u8]>,
        partial: Option<&[u8]>,
    ) -> Result<(Option<etcdsync_core::Checkpoint>, Resumed), KitError> {
        let (chain, checkpoint) = chain::ChainEnd::stored(&settings.checkpoint_key(), checkpoint)?;
        let partial = partial
            .map(|value| PartialMarker::decode(&settings.partial_key(), value))
            .transpose()?;
        let position = checkpoint.as_ref().map(|c| c.position.to_string());
        let partial = partial.filter(|p| {
            let current = p.after == position;
            if !current {
                tracing::warn!(marker = ?p, checkpoint = ?position, "ignoring a split-transaction marker of another checkpoint");
            }
            current
        });
        if let Some(partial) = &partial {
            tracing::info!(
                changes = partial.changes,
                "the transaction after the checkpoint was partly applied; its replay skips what is in the store"
            );
        }
        let resumed = Resumed {
            position,
            partial,
            chain: Some(chain),
        };
        Ok((checkpoint, resumed))
    }
}

/// Replaying the transaction a split-transaction marker describes ([`PartialMarker`]).
#[derive(Debug)]
struct Replay {
    /// The checkpoint the marker follows.
    after: Option<String>,
    /// The `seq` of the last change the applied parts hold, when the source numbers its changes.
    seq: Option<u128>,
    /// Else: how many changes they hold.
    remaining: u64,
}

impl Replay {
    /// Whether the applied parts already hold a change with this `seq`: one of the same
    /// transaction (the high 64 bits), at or before the last applied.
    fn holds(&self, seq: Option<u128>) -> bool {
        match (self.seq, seq) {
            (Some(last), Some(seq)) => seq >> 64 == last >> 64 && seq <= last,
            _ => self.remaining > 0,
        }
    }
}

/// A streaming transaction being applied.
struct InFlight<E> {
    /// Kept for lookups of unchanged TOAST columns: its values are not in the store yet.
    batch: Arc<Batch>,
    handle: JoinHandle<Result<Option<Position>, E>>,
    /// Its stage, for the transaction sent after it.
    stage: watch::Receiver<chain::Stage>,
    /// It does not put the checkpoint key, so nothing may be sent until it is applied.
    alone: bool,
}

/// A snapshot between `SnapshotStarted` and `SnapshotFinished`.
struct SnapshotRun<E> {
    tables: Vec<TableId>,
    start_revision: i64,
    batch: Batch,
    tasks: JoinSet<Result<(), E>>,
    /// The batches of `tasks`, for lookups (key index) until they are applied.
    applying: Vec<(tokio::task::Id, Arc<Batch>)>,
}

impl<E: From<KitError> + Send + 'static> SnapshotRun<E> {
    fn new(tables: Vec<TableId>, start_revision: i64) -> Self {
        Self {
            tables,
            start_revision,
            batch: Batch::new(),
            tasks: JoinSet::new(),
            applying: Vec::new(),
        }
    }

    /// Waits for one snapshot transaction; `None` when none runs.
    async fn join_one(&mut self) -> Option<Result<(), E>> {
        let done = self.tasks.join_next_with_id().await?;
        let (id, result) = match done {
            Ok((id, result)) => (id, result),
            Err(error) => (
                error.id(),
                Err(E::from(KitError::Internal(format!(
                    "a snapshot task failed: {error}"
                )))),
            ),
        };
        self.applying.retain(|(task, _)| *task != id);
        Some(result)
    }

    async fn join_all(&mut self) -> Result<(), E> {
        while let Some(done) = self.join_one().await {
            done?;
        }
        Ok(())
    }
}

impl<S: Store> Drop for Writer<S> {
    fn drop(&mut self) {
        self.abort();
    }
}

/// The running sink's state.
pub struct Writer<S: Store> {
    store: S,
    settings: Arc<SinkSettings>,
    source_type: String,
    acked: watch::Sender<Option<Position>>,
    shutdown: CancellationToken,
    stream_limits: Limits,
    snapshot_limits: Limits,
    /// Streaming transactions being applied, oldest first; acknowledged in this order.
    in_flight: VecDeque<InFlight<S::Error>>,
    /// The checkpoint key as the newest of them leaves it; `None` until read (at the start and
    /// after a snapshot wrote the checkpoint).
    chain: Option<chain::ChainEnd>,
    /// This session's name in the checkpoints it puts, and the number of the last one.
    session: Arc<str>,
    chain_seq: u64,
    /// Whole committed source transactions waiting for the in-flight one (group commit).
    ready: Batch,
    /// The current, not yet committed source transaction (or its latest part).
    open: Batch,
    /// Changes of the open source transaction that are in `open` or in parts already sent.
    open_changes: u64,
    /// Whether parts of the open source transaction were sent (its commit clears the marker).
    open_split: bool,
    /// `ready` holds the commit of a split transaction: its write deletes `{meta}/partial`.
    ready_clears_partial: bool,
    /// The position of the last commit sent to the store (or resumed from).
    last_position: Option<String>,
    /// The `seq` of the last change in `open` or in parts already sent.
    open_last_seq: Option<u128>,
    /// The `seq` of the change being turned into operations: a row read for it waits until the
    /// source's other sessions see its transaction ([`RowFetcher::fetch_for`]).
    converting_seq: Option<u128>,
    /// The replay of a transaction whose first parts the store already holds, until it is past them.
    replay: Option<Replay>,
    /// Reads a row from the source when an unchanged TOAST column has no stored value.
    fetcher: Option<Arc<dyn RowFetcher>>,
    /// Tables whose marker (`{meta}/tables/…`) this session has written.
    marked: HashSet<TableId>,
    last_checkpoint_write: Option<Instant>,
    last_committed_at: Option<String>,
    snapshot: Option<SnapshotRun<S::Error>>,
    index: KeyIndex,
    /// The phase this sink reported last (`etcdsync_phase`, the status key).
    phase: Phase,
    /// Told of every phase change (the store's status key, if it keeps one).
    phase_changed: Arc<Notify>,
}

/// What a [`Writer`] starts from.
pub struct WriterParts<S> {
    pub store: S,
    pub settings: Arc<SinkSettings>,
    /// Recorded in every checkpoint.
    pub source_type: String,
    /// What the sink's metadata said at start ([`Resumed`]).
    pub resumed: Resumed,
    /// Tables whose marker (`{meta}/tables/…`) exists: not written again.
    pub marked: HashSet<TableId>,
    /// Where acknowledged positions go.
    pub acked: watch::Sender<Option<Position>>,
    pub shutdown: CancellationToken,
    /// Reads a row from the source when an unchanged value has no stored one.
    pub fetcher: Option<Arc<dyn RowFetcher>>,
    /// Notified of every phase change.
    pub phase_changed: Arc<Notify>,
}

impl<S: Store> Writer<S> {
    pub fn new(parts: WriterParts<S>) -> Self {
        let WriterParts {
            store,
            settings,
            source_type,
            resumed,
            marked,
            acked,
            shutdown,
            fetcher,
            phase_changed,
        } = parts;
        let index = KeyIndex::new(&settings.data_prefix, &settings.meta_prefix);
        Self {
            stream_limits: settings.stream_limits(),
            snapshot_limits: settings.snapshot_limits(),
            store,
            settings,
            source_type,
            acked,
            shutdown,
            in_flight: VecDeque::new(),
            chain: resumed.chain,
            session: chain::new_session(),
            chain_seq: 0,
            ready: Batch::new(),
            open: Batch::new(),
            open_changes: 0,
            open_split: false,
            ready_clears_partial: false,
            last_position: resumed.position,
            open_last_seq: None,
            converting_seq: None,
            fetcher,
            marked,
            replay: resumed.partial.map(|partial| Replay {
                after: partial.after,
                seq: partial.seq.and_then(|seq| seq.parse().ok()),
                remaining: partial.changes,
            }),
            last_checkpoint_write: None,
            last_committed_at: None,
            snapshot: None,
            index,
            phase: Phase::Starting,
            phase_changed,
        }
    }

    /// Reports a phase change (metric and status key).
    fn set_phase(&mut self, phase: Phase) {
        if self.phase != phase {
            tracing::info!(?phase, "sink phase");
        }
        self.phase = phase;
        telemetry::get().set_phase(phase);
        self.phase_changed.notify_one();
    }

    /// Applies `input` until it ends (after a clean finish) or `shutdown`; an error stops it.
    pub async fn run(&mut self, mut input: mpsc::Receiver<Message>) -> Result<(), S::Error> {
        let shutdown = self.shutdown.clone();
        loop {
            let flush_at = self.checkpoint_flush_at();
            tokio::select! {
                biased;
                done = wait_oldest(&mut self.in_flight) => {
                    self.complete_oldest(done)?;
                    self.submit_ready_if_due().await?;
                }
                done = join_snapshot_task(&mut self.snapshot) => done?,
                _ = shutdown.cancelled() => return self.stop().await,
                message = input.recv() => match message {
                    Some(message) => self.handle(message).await?,
                    None => return self.finish().await,
                },
                _ = sleep_until(flush_at) => self.submit_ready_if_due().await?,
            }
        }
    }

    async fn handle(&mut self, message: Message) -> Result<(), S::Error> {
        match message {
            Message::Changes(changes) => {
                if self.snapshot.is_some() {
                    for change in changes {
                        self.snapshot_change(change).await?;
                    }
                } else {
                    for change in changes {
                        self.stream_change(change).await?;
                    }
                }
                Ok(())
            }
            Message::Commit(commit) => {
                telemetry::get().commit_received(commit.commit_time);
                self.streaming();
                self.commit(commit).await
            }
            Message::Heartbeat { position } => {
                self.streaming();
                self.heartbeat(position).await
            }
            Message::SnapshotStarted { tables } => {
                self.start_snapshot(tables).await?;
                self.set_phase(Phase::Snapshot);
                Ok(())
            }
            Message::SnapshotFinished { position } => {
                self.finish_snapshot(position).await?;
                self.set_phase(Phase::Streaming);
                Ok(())
            }
        }
    }

    /// A commit or heartbeat outside a snapshot: the pipeline streams.
    fn streaming(&mut self) {
        if self.phase != Phase::Streaming && self.snapshot.is_none() {
            self.set_phase(Phase::Streaming);
        }
    }
}

/// Whether a change puts a row under a transform's key that is not valid
/// ([`is_valid_relative_key`]): `sink.on_invalid_key` decides.
fn has_invalid_key(change: &Change) -> bool {
    matches!(change.op, Op::Insert { .. } | Op::Update { .. })
        && change
            .route
            .key
            .as_deref()
            .is_some_and(|key| !is_valid_relative_key(key))
}

/// A row's key columns for messages: `id = 7, region = eu`.
fn row_label(table: &TableSchema, row: &[Value]) -> String {
    table
        .key
        .iter()
        .map(|&i| {
            let name = table.columns.get(i).map(|c| c.name.as_str()).unwrap_or("?");
            let value = row.get(i).map(Value::to_text).unwrap_or_default();
            format!("{name} = {value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The default key of a row; key columns must carry values.
fn default_key(prefix: &str, table: &TableSchema, row: &[Value]) -> Result<String, KitError> {
    if table.key.is_empty() || table.key.iter().any(|&i| row.get(i).is_none()) {
        return Err(KitError::Encode {
            table: table.id.to_string(),
            key: String::new(),
            source: etcdsync_core::encode::json::EncodeError::Arity {
                table: table.id.to_string(),
                expected: table.columns.len(),
                got: row.len(),
            },
        });
    }
    if let Some(i) = table
        .key
        .iter()
        .copied()
        .find(|&i| matches!(row.get(i), Some(Value::Unchanged | Value::Missing)))
    {
        let column = table
            .columns
            .get(i)
            .map(|c| c.name.clone())
            .unwrap_or_default();
        return Err(KitError::UnresolvedUnchanged {
            table: table.id.to_string(),
            key: row_key(prefix, &table.id, table.key_values(row)),
            column,
            reason: "it is a key column, so the row's key is unknown".into(),
        });
    }
    Ok(row_key(prefix, &table.id, table.key_values(row)))
}

/// The outcome of the oldest streaming transaction in flight (pending while none is).
async fn wait_oldest<E>(
    in_flight: &mut VecDeque<InFlight<E>>,
) -> Result<Result<Option<Position>, E>, JoinError> {
    match in_flight.front_mut() {
        Some(flight) => (&mut flight.handle).await,
        None => std::future::pending().await,
    }
}

async fn join_snapshot_task<E: From<KitError> + Send + 'static>(
    slot: &mut Option<SnapshotRun<E>>,
) -> Result<(), E> {
    match slot {
        Some(snapshot) if !snapshot.tasks.is_empty() => snapshot.join_one().await.unwrap_or(Ok(())),
        _ => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

mod ops;
mod snapshot;
mod stream;
mod tracked;
