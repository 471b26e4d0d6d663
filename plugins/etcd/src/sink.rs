//! The etcd sink's run loop (DESIGN §4–6): streaming keeps a few data transactions in flight,
//! applied in order ([`chain`]), while the next fills (group commit); a snapshot keeps several
//! unordered ones. Every streaming
//! transaction carries the checkpoint; a position is acknowledged only after etcd applied it.
//! It reports phase, transactions and changes to core's telemetry ([`crate::events`]) and keeps
//! `{meta}/status` current while it runs ([`crate::status`]).

use crate::batch::{Batch, CommitMark, KvOp, Limits, Lookup};
use crate::checkpoint::{encode_checkpoint, PartialMarker, SnapshotMarker, SnapshotState};
use crate::client::EtcdClient;
use crate::config::{OnInvalidKey, OnOversize, Settings};
use crate::error::EtcdError;
use crate::events::{self, TxnKind};
use crate::index::KeyIndex;
use crate::status::StatusWriter;
use etcd_client::Compare;
use etcdsync_core::change::rfc3339;
use etcdsync_core::encode::json::encode_row;
use etcdsync_core::encode::key::{is_valid_relative_key, row_key, table_prefix};
use etcdsync_core::leadership::Fence;
use etcdsync_core::sink::{Sink, SinkIo};
use etcdsync_core::source::RowFetcher;
use etcdsync_core::telemetry::{self, Phase};
use etcdsync_core::{
    Change, Checkpoint, Commit, Message, Op, Position, Result, Row, TableId, TableSchema, Value,
};
use etcdsync_sink_kit::chain;
use etcdsync_sink_kit::KitError;
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// The etcd sink, connected and ready to run.
pub struct EtcdSink {
    client: EtcdClient,
    settings: Arc<Settings>,
    source_type: String,
    /// The leadership this sink writes under; every transaction compares its token.
    fence: Option<Fence>,
    guards: Arc<Vec<Compare>>,
    /// What [`Sink::checkpoint`] found: the position and a split transaction's progress.
    resumed: Resumed,
    /// Tables whose marker [`Sink::written_tables`] found: not written again this run.
    marked: HashSet<TableId>,
}

/// Where the previous run stopped, as the sink's metadata says.
#[derive(Debug, Default, Clone)]
struct Resumed {
    position: Option<String>,
    partial: Option<PartialMarker>,
    /// The checkpoint key exactly as read: the first transaction of the run compares it, so a
    /// late write of an earlier attempt that lands afterwards is noticed, not built upon.
    chain: Option<chain::ChainEnd>,
}

impl std::fmt::Debug for EtcdSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSink")
            .field("endpoints", &self.settings.endpoints)
            .field("data_prefix", &self.settings.kv.data_prefix)
            .field("meta_prefix", &self.settings.kv.meta_prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdSink {
    /// Connects with checked settings ([`crate::EtcdConfig::settings`]). `source_type` is
    /// recorded in every checkpoint.
    pub async fn connect(
        settings: Settings,
        source_type: impl Into<String>,
    ) -> Result<Self, EtcdError> {
        let client = EtcdClient::connect(&settings).await?;
        tracing::info!(
            endpoints = ?settings.endpoints,
            prefix = %settings.kv.data_prefix,
            meta_prefix = %settings.kv.meta_prefix,
            "etcd sink connected"
        );
        Ok(Self {
            client,
            settings: Arc::new(settings),
            source_type: source_type.into(),
            fence: None,
            guards: Arc::new(Vec::new()),
            resumed: Resumed::default(),
            marked: HashSet::new(),
        })
    }

    /// Makes every transaction — data, checkpoint, snapshot marker, status, index, clean-up —
    /// carry `CreateRevision(leader key) == fence.token` (DESIGN §7). A refused write cancels the
    /// fence and stops the sink with an error of kind `Fenced`.
    pub fn with_fence(mut self, fence: Option<Fence>) -> Self {
        self.guards = Arc::new(
            fence
                .iter()
                .map(|f| crate::leader::fence_guard(&self.settings, f))
                .collect(),
        );
        self.fence = fence;
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn client(&self) -> &EtcdClient {
        &self.client
    }
}

#[async_trait::async_trait]
impl Sink for EtcdSink {
    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>> {
        let key = self.settings.kv.checkpoint_key();
        let response = self
            .client
            .get("read the checkpoint", key.as_str(), None, None, Some(3))
            .await?;
        let (chain, checkpoint) =
            chain::ChainEnd::stored(&key, response.kvs().first().map(|kv| kv.value()))?;
        let partial_key = self.settings.kv.partial_key();
        let response = self
            .client
            .get(
                "read the split-transaction marker",
                partial_key.as_str(),
                None,
                None,
                Some(3),
            )
            .await?;
        let partial = match response.kvs().first() {
            None => None,
            Some(kv) => Some(PartialMarker::decode(&partial_key, kv.value())?),
        };
        let position = checkpoint.as_ref().map(|c| c.position.to_string());
        self.resumed = Resumed {
            partial: partial.filter(|p| {
                let current = p.after == position;
                if !current {
                    tracing::warn!(marker = ?p, checkpoint = ?position, "ignoring a split-transaction marker of another checkpoint");
                }
                current
            }),
            position,
            chain: Some(chain),
        };
        if let Some(partial) = &self.resumed.partial {
            tracing::info!(
                changes = partial.changes,
                "the transaction after the checkpoint was partly applied; its replay skips what is in etcd"
            );
        }
        Ok(checkpoint)
    }

    async fn written_tables(&mut self) -> Result<Option<HashSet<TableId>>> {
        let mut tables = crate::table_markers::read(&self.client, &self.settings, Some(3)).await?;
        self.marked.clone_from(&tables);
        // A copy that did not finish wrote some of its tables' rows: they count as not written,
        // so a source that copies never-written tables copies them again.
        let key = self.settings.kv.snapshot_key();
        let response = self
            .client
            .get(
                "read the snapshot marker",
                key.as_str(),
                None,
                None,
                Some(3),
            )
            .await?;
        if let Some(kv) = response.kvs().first() {
            let marker: SnapshotMarker = serde_json::from_slice(kv.value()).map_err(|e| {
                EtcdError::Kit(KitError::Malformed {
                    key: key.clone(),
                    reason: e.to_string(),
                })
            })?;
            if marker.state == SnapshotState::Running {
                for table in &marker.tables {
                    tables.remove(table);
                }
            }
        }
        Ok(Some(tables))
    }

    async fn run(self: Box<Self>, io: SinkIo) -> Result<()> {
        let SinkIo {
            input,
            acked,
            shutdown,
            fetcher,
        } = io;
        let fence = self.fence.clone();
        let mut writer = Writer::new(*self, acked, shutdown);
        writer.fetcher = fetcher;
        let result = writer.run(input).await;
        writer.abort();
        if let (Err(EtcdError::CompareFailed(op)), Some(fence)) = (&result, &fence) {
            // Not even the last status write: another instance leads.
            writer.status.stop(false).await;
            return Err(fence.deposed(&format!("etcd refused to {op}")));
        }
        let clean = matches!(result, Ok(()) | Err(EtcdError::Shutdown));
        writer.status.stop(clean).await;
        match result {
            Ok(()) | Err(EtcdError::Shutdown) => Ok(()),
            Err(error) => {
                // counted (etcdsync_errors_total, stage sink) by the pipeline that receives it
                tracing::error!(error = %error, "etcd sink stopped");
                Err(error.into())
            }
        }
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
struct InFlight {
    /// Kept for lookups of unchanged TOAST columns: its values are not in etcd yet.
    batch: Arc<Batch>,
    handle: JoinHandle<Result<Option<Position>, EtcdError>>,
    /// Its stage, for the transaction sent after it.
    stage: watch::Receiver<chain::Stage>,
    /// It does not put the checkpoint key, so nothing may be sent until it is applied.
    alone: bool,
}

/// A snapshot between `SnapshotStarted` and `SnapshotFinished`.
struct SnapshotRun {
    tables: Vec<TableId>,
    start_revision: i64,
    batch: Batch,
    tasks: JoinSet<Result<(), EtcdError>>,
    /// The batches of `tasks`, for lookups (key index) until they are applied.
    applying: Vec<(tokio::task::Id, Arc<Batch>)>,
}

impl SnapshotRun {
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
    async fn join_one(&mut self) -> Option<Result<(), EtcdError>> {
        let done = self.tasks.join_next_with_id().await?;
        let (id, result) = match done {
            Ok((id, result)) => (id, result),
            Err(error) => (
                error.id(),
                Err(EtcdError::from(KitError::Internal(format!(
                    "an etcd snapshot task failed: {error}"
                )))),
            ),
        };
        self.applying.retain(|(task, _)| *task != id);
        Some(result)
    }

    async fn join_all(&mut self) -> Result<(), EtcdError> {
        while let Some(done) = self.join_one().await {
            done?;
        }
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.abort();
    }
}

/// The running sink's state.
struct Writer {
    client: EtcdClient,
    settings: Arc<Settings>,
    source_type: String,
    guards: Arc<Vec<Compare>>,
    acked: watch::Sender<Option<Position>>,
    shutdown: CancellationToken,
    stream_limits: Limits,
    snapshot_limits: Limits,
    /// Streaming transactions being applied, oldest first; acknowledged in this order.
    in_flight: VecDeque<InFlight>,
    /// The checkpoint key as the newest of them leaves it; `None` until read (at the start and
    /// after a snapshot wrote the checkpoint).
    chain: Option<chain::ChainEnd>,
    /// This session's name in the checkpoints it puts, and the number of the last one.
    session: Arc<str>,
    chain_seq: u64,
    /// The leader key and token when writes are fenced (a failed compare checks it).
    leader: Option<(String, i64)>,
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
    /// The position of the last commit sent to etcd (or resumed from).
    last_position: Option<String>,
    /// The `seq` of the last change in `open` or in parts already sent.
    open_last_seq: Option<u128>,
    /// The `seq` of the change being turned into operations: a row read for it waits until the
    /// source's other sessions see its transaction ([`RowFetcher::fetch_for`]).
    converting_seq: Option<u128>,
    /// The replay of a transaction whose first parts etcd already holds, until it is past them.
    replay: Option<Replay>,
    /// Reads a row from the source when an unchanged TOAST column has no stored value.
    fetcher: Option<Arc<dyn RowFetcher>>,
    /// Tables whose marker (`{meta}/tables/…`) this session has written.
    marked: HashSet<TableId>,
    last_checkpoint_write: Option<Instant>,
    last_committed_at: Option<String>,
    snapshot: Option<SnapshotRun>,
    index: KeyIndex,
    /// The phase this sink reported last (`etcdsync_phase`, the status key).
    phase: Phase,
    /// Publishes `{meta}/status` while the sink runs.
    status: StatusWriter,
}

impl Writer {
    fn new(
        sink: EtcdSink,
        acked: watch::Sender<Option<Position>>,
        shutdown: CancellationToken,
    ) -> Self {
        let EtcdSink {
            client,
            settings,
            source_type,
            guards,
            resumed,
            fence,
            marked,
        } = sink;
        let leader = fence.map(|fence| (settings.kv.leader_key(), fence.token));
        let index = KeyIndex::new(&settings.kv.data_prefix, &settings.kv.meta_prefix);
        // Before the status writer starts, so its first write says so.
        telemetry::get().set_phase(Phase::Starting);
        let status = StatusWriter::start(
            client.clone(),
            &settings,
            Arc::clone(&guards),
            shutdown.clone(),
        );
        Self {
            stream_limits: settings.kv.stream_limits(),
            snapshot_limits: settings.kv.snapshot_limits(),
            client,
            settings,
            source_type,
            guards,
            acked,
            shutdown,
            in_flight: VecDeque::new(),
            chain: resumed.chain,
            session: chain::new_session(),
            chain_seq: 0,
            leader,
            ready: Batch::new(),
            open: Batch::new(),
            open_changes: 0,
            open_split: false,
            ready_clears_partial: false,
            last_position: resumed.position,
            open_last_seq: None,
            converting_seq: None,
            fetcher: None,
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
            status,
        }
    }

    /// Reports a phase change (metric and status key).
    fn set_phase(&mut self, phase: Phase) {
        if self.phase != phase {
            tracing::info!(?phase, "etcd sink phase");
        }
        self.phase = phase;
        telemetry::get().set_phase(phase);
        self.status.phase_changed();
    }

    async fn run(&mut self, mut input: mpsc::Receiver<Message>) -> Result<(), EtcdError> {
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

    async fn handle(&mut self, message: Message) -> Result<(), EtcdError> {
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
fn default_key(prefix: &str, table: &TableSchema, row: &[Value]) -> Result<String, EtcdError> {
    if table.key.is_empty() || table.key.iter().any(|&i| row.get(i).is_none()) {
        return Err(EtcdError::from(KitError::Encode {
            table: table.id.to_string(),
            key: String::new(),
            source: etcdsync_core::encode::json::EncodeError::Arity {
                table: table.id.to_string(),
                expected: table.columns.len(),
                got: row.len(),
            },
        }));
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
        return Err(EtcdError::from(KitError::UnresolvedUnchanged {
            table: table.id.to_string(),
            key: row_key(prefix, &table.id, table.key_values(row)),
            column,
            reason: "it is a key column, so the row's key is unknown".into(),
        }));
    }
    Ok(row_key(prefix, &table.id, table.key_values(row)))
}

/// The outcome of the oldest streaming transaction in flight (pending while none is).
async fn wait_oldest(
    in_flight: &mut VecDeque<InFlight>,
) -> Result<Result<Option<Position>, EtcdError>, JoinError> {
    match in_flight.front_mut() {
        Some(flight) => (&mut flight.handle).await,
        None => std::future::pending().await,
    }
}

async fn join_snapshot_task(slot: &mut Option<SnapshotRun>) -> Result<(), EtcdError> {
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
