//! The etcd sink's run loop (DESIGN §4–6): streaming keeps one ordered data transaction in flight
//! while the next fills (group commit); a snapshot keeps several unordered ones. Every streaming
//! transaction carries the checkpoint; a position is acknowledged only after etcd applied it.
//! It reports phase, transactions and changes to core's telemetry ([`crate::events`]) and keeps
//! `{meta}/status` current while it runs ([`crate::status`]).

use crate::batch::{Batch, CommitMark, EtcdOp, Limits, Lookup};
use crate::checkpoint::{
    decode_checkpoint, encode_checkpoint, PartialMarker, SnapshotMarker, SnapshotState,
};
use crate::client::EtcdClient;
use crate::config::{OnInvalidKey, OnOversize, Settings};
use crate::error::EtcdError;
use crate::events::{self, TxnKind};
use crate::index::KeyIndex;
use crate::status::StatusWriter;
use etcd_client::{Compare, GetOptions, TxnOp};
use etcdsync_core::change::rfc3339;
use etcdsync_core::encode::json::encode_row;
use etcdsync_core::encode::key::{is_valid_relative_key, prefix_range_end, row_key, table_prefix};
use etcdsync_core::leadership::Fence;
use etcdsync_core::sink::{Sink, SinkIo};
use etcdsync_core::source::RowFetcher;
use etcdsync_core::telemetry::{self, Phase};
use etcdsync_core::{
    Change, Checkpoint, Commit, Message, Op, Position, Result, Row, TableId, TableSchema, Value,
};
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Keys per page when a finished snapshot lists a table's keys (keys only) to find stale ones.
pub const STALE_SCAN_PAGE: i64 = 4096;

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
}

/// Where the previous run stopped, as the sink's metadata says.
#[derive(Debug, Default, Clone)]
struct Resumed {
    position: Option<String>,
    partial: Option<PartialMarker>,
}

impl std::fmt::Debug for EtcdSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSink")
            .field("endpoints", &self.settings.endpoints)
            .field("data_prefix", &self.settings.data_prefix)
            .field("meta_prefix", &self.settings.meta_prefix)
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
            prefix = %settings.data_prefix,
            meta_prefix = %settings.meta_prefix,
            "etcd sink connected"
        );
        Ok(Self {
            client,
            settings: Arc::new(settings),
            source_type: source_type.into(),
            fence: None,
            guards: Arc::new(Vec::new()),
            resumed: Resumed::default(),
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
        let key = self.settings.checkpoint_key();
        let response = self
            .client
            .get("read the checkpoint", key.as_str(), None, None, Some(3))
            .await?;
        let checkpoint = match response.kvs().first() {
            None => None,
            Some(kv) => Some(decode_checkpoint(&key, kv.value())?),
        };
        let partial_key = self.settings.partial_key();
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
        };
        if let Some(partial) = &self.resumed.partial {
            tracing::info!(
                changes = partial.changes,
                "the transaction after the checkpoint was partly applied; its replay skips what is in etcd"
            );
        }
        Ok(checkpoint)
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

/// The one streaming transaction being applied.
struct InFlight {
    /// Kept for lookups of unchanged TOAST columns: its values are not in etcd yet.
    batch: Arc<Batch>,
    handle: JoinHandle<Result<Option<Position>, EtcdError>>,
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
                Err(EtcdError::Task(format!(
                    "an etcd snapshot task failed: {error}"
                ))),
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
    in_flight: Option<InFlight>,
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
            ..
        } = sink;
        let index = KeyIndex::new(&settings);
        // Before the status writer starts, so its first write says so.
        telemetry::get().set_phase(Phase::Starting);
        let status = StatusWriter::start(
            client.clone(),
            &settings,
            Arc::clone(&guards),
            shutdown.clone(),
        );
        Self {
            stream_limits: settings.stream_limits(),
            snapshot_limits: settings.snapshot_limits(),
            client,
            settings,
            source_type,
            guards,
            acked,
            shutdown,
            in_flight: None,
            ready: Batch::new(),
            open: Batch::new(),
            open_changes: 0,
            open_split: false,
            ready_clears_partial: false,
            last_position: resumed.position,
            open_last_seq: None,
            fetcher: None,
            marked: HashSet::new(),
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
                done = wait_in_flight(&mut self.in_flight) => {
                    self.complete_in_flight(done)?;
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

    // ---- streaming -------------------------------------------------------------------------

    async fn stream_change(&mut self, change: Change) -> Result<(), EtcdError> {
        if let Some(replay) = &mut self.replay {
            if replay.holds(change.seq) {
                // Already in etcd: applied by a part before the restart.
                replay.remaining = replay.remaining.saturating_sub(1);
                self.open_changes += 1;
                self.open_split = true;
                self.open_last_seq = change.seq.or(self.open_last_seq);
                return Ok(());
            }
            self.replay = None;
        }
        let seq = change.seq;
        self.add_open_change(change).await?;
        self.open_changes += 1;
        self.open_last_seq = seq.or(self.open_last_seq);
        Ok(())
    }

    /// Adds one change of the open source transaction, sending earlier parts when it does not
    /// fit.
    async fn add_open_change(&mut self, change: Change) -> Result<(), EtcdError> {
        if change.route.tracked && matches!(change.op, Op::Truncate) {
            return self.truncate_tracked(&change.table.id).await;
        }
        let table = Arc::clone(&change.table);
        // A skipped row (`on_invalid_key: skip`) is counted by its own metric, not as applied.
        let op = (!has_invalid_key(&change)).then(|| change.op_name());
        let unit = self.change_ops(change).await?;
        let limits = self.stream_limits;
        let unit = match self.open.try_add(unit, limits) {
            Ok(()) => {
                if let Some(op) = op {
                    self.open.count_change(&table.id, op);
                }
                return Ok(());
            }
            Err(unit) => unit,
        };
        let unit = if self.open.has_data() {
            // The source transaction is larger than one etcd transaction, or writes into a range
            // it truncated: apply it in parts, in order; only its last part carries the checkpoint.
            self.submit_open_part().await?;
            match self.open.try_add(unit, limits) {
                Ok(()) => {
                    if let Some(op) = op {
                        self.open.count_change(&table.id, op);
                    }
                    return Ok(());
                }
                Err(unit) => unit,
            }
        } else {
            unit
        };
        let rest = self.oversize(&table.id, unit, limits)?;
        if !rest.is_empty() {
            // a skipped key change still deletes the old key
            if let Err(rest) = self.open.try_add(rest, limits) {
                self.submit_open_part().await?;
                self.open.try_add(rest, limits).map_err(|_| {
                    EtcdError::Task("a delete does not fit an empty etcd transaction".into())
                })?;
            }
        }
        Ok(())
    }

    /// Sends what the open source transaction has so far as a part of it (no checkpoint), after
    /// the committed transactions waiting before it.
    async fn submit_open_part(&mut self) -> Result<(), EtcdError> {
        self.submit_ready().await?;
        let part = std::mem::take(&mut self.open);
        tracing::debug!(
            ops = part.len(),
            bytes = part.bytes(),
            changes = self.open_changes,
            "source transaction split across etcd transactions"
        );
        let marker = PartialMarker {
            after: self.last_position.clone(),
            changes: self.open_changes,
            seq: self.open_last_seq.map(|seq| seq.to_string()),
        };
        self.open_split = true;
        let put = TxnOp::put(self.settings.partial_key(), marker.encode(), None);
        self.submit_with(part, Some(put)).await
    }

    /// Sends `ready` (with the marker's delete when it completes a split transaction).
    async fn submit_ready(&mut self) -> Result<(), EtcdError> {
        if self.ready.is_empty() {
            return Ok(());
        }
        let ready = std::mem::take(&mut self.ready);
        let clear = std::mem::take(&mut self.ready_clears_partial)
            .then(|| TxnOp::delete(self.settings.partial_key(), None));
        self.submit_with(ready, clear).await
    }

    async fn commit(&mut self, commit: Commit) -> Result<(), EtcdError> {
        if self.snapshot.is_some() {
            return Err(EtcdError::Protocol(format!(
                "a Commit (position {}) arrived during a snapshot; a snapshot holds only inserts",
                commit.position
            )));
        }
        let committed_at = commit.commit_time.map(rfc3339);
        if committed_at.is_some() {
            self.last_committed_at.clone_from(&committed_at);
        }
        if let Some(replay) = self.replay.take() {
            if replay.seq.is_none() && replay.remaining > 0 {
                tracing::warn!(
                    position = %commit.position,
                    missing = replay.remaining,
                    "the replayed transaction had fewer changes than its applied parts (was the configuration changed?)"
                );
            }
        }
        let split = std::mem::take(&mut self.open_split);
        self.open_changes = 0;
        self.open_last_seq = None;
        let mut open = std::mem::take(&mut self.open);
        open.record_commit(
            CommitMark {
                position: commit.position,
                committed_at,
            },
            commit.commit_time,
        );
        if self.ready.is_empty() {
            self.ready = open;
        } else if let Err(open) = self.ready.try_merge(open, self.stream_limits) {
            self.submit_ready().await?;
            self.ready = open;
        }
        self.ready_clears_partial |= split;
        self.submit_ready_if_due().await
    }

    /// Records an idle position: it rides with the data waiting (if any) or is written alone,
    /// at most once per `heartbeat_interval`.
    async fn heartbeat(&mut self, position: Position) -> Result<(), EtcdError> {
        if self.replay.is_some() {
            // The partly applied transaction has not been replayed yet: a checkpoint now would
            // leave its marker behind (it names the checkpoint it follows).
            tracing::debug!(%position, "heartbeat ignored until the partly applied transaction replays");
            return Ok(());
        }
        if self.snapshot.is_some() || self.open.has_data() {
            tracing::debug!(%position, "heartbeat ignored inside a transaction or snapshot");
            return Ok(());
        }
        self.ready.set_commit(CommitMark {
            position,
            committed_at: self.last_committed_at.clone(),
        });
        self.submit_ready_if_due().await
    }

    /// Sends `ready` when nothing is in flight: at once when it holds data, after
    /// `heartbeat_interval` since the last checkpoint write when it holds only a checkpoint.
    async fn submit_ready_if_due(&mut self) -> Result<(), EtcdError> {
        if self.in_flight.is_some() || self.ready.commit().is_none() {
            return Ok(());
        }
        if !self.ready.has_data() {
            let due = self
                .last_checkpoint_write
                .is_none_or(|at| at.elapsed() >= self.settings.heartbeat_interval);
            if !due {
                return Ok(());
            }
        }
        self.submit_ready().await
    }

    /// When a checkpoint-only `ready` becomes due.
    fn checkpoint_flush_at(&self) -> Option<tokio::time::Instant> {
        if self.in_flight.is_some() || self.ready.has_data() || self.ready.commit().is_none() {
            return None;
        }
        let at = self.last_checkpoint_write? + self.settings.heartbeat_interval;
        Some(tokio::time::Instant::from_std(at))
    }

    /// Waits for the in-flight transaction, then starts applying `batch` with its checkpoint and
    /// `marker` (the split-transaction marker's put or delete).
    async fn submit_with(&mut self, batch: Batch, marker: Option<TxnOp>) -> Result<(), EtcdError> {
        self.drain_in_flight().await?;
        if batch.is_empty() && marker.is_none() {
            return Ok(());
        }
        if let Some(mark) = batch.commit() {
            self.last_position = Some(mark.position.to_string());
        }
        let data_ops = batch.len();
        let has_data = batch.has_data();
        let position = batch.commit().map(|mark| mark.position.clone());
        let checkpoint = batch.commit().map(|mark| {
            self.last_checkpoint_write = Some(Instant::now());
            (
                self.settings.checkpoint_key(),
                encode_checkpoint(&self.source_type, mark),
            )
        });
        tracing::debug!(ops = data_ops, bytes = batch.bytes(), position = ?position, "applying etcd transaction");
        let batch = Arc::new(batch);
        let applying = Arc::clone(&batch);
        let client = self.client.clone();
        let guards = Arc::clone(&self.guards);
        let shutdown = self.shutdown.clone();
        let handle = tokio::spawn(async move {
            let build = || {
                let mut ops = applying.txn_ops();
                if let Some((key, value)) = &checkpoint {
                    ops.push(TxnOp::put(key.as_str(), value.as_slice(), None));
                }
                ops.extend(marker.iter().cloned());
                ops
            };
            let started = Instant::now();
            client
                .txn_with("apply a data transaction", &guards, build, &shutdown)
                .await?;
            let kind = if has_data {
                TxnKind::Data
            } else {
                TxnKind::Checkpoint
            };
            let ops = data_ops + usize::from(checkpoint.is_some());
            events::txn_applied_since(kind, ops, started);
            events::changes_applied(applying.tally());
            if checkpoint.is_some() {
                events::checkpoint_written();
            }
            events::transactions_applied(applying.commits(), applying.commit_time());
            Ok(position)
        });
        self.in_flight = Some(InFlight { batch, handle });
        Ok(())
    }

    async fn drain_in_flight(&mut self) -> Result<(), EtcdError> {
        if let Some(flight) = self.in_flight.as_mut() {
            let done = (&mut flight.handle).await;
            self.complete_in_flight(done)?;
        }
        Ok(())
    }

    fn complete_in_flight(
        &mut self,
        done: Result<Result<Option<Position>, EtcdError>, JoinError>,
    ) -> Result<(), EtcdError> {
        self.in_flight = None;
        match done {
            Ok(Ok(Some(position))) => {
                tracing::trace!(%position, "acknowledged");
                self.acked.send_replace(Some(position));
                Ok(())
            }
            Ok(Ok(None)) => Ok(()),
            Ok(Err(error)) => Err(error),
            Err(error) => Err(EtcdError::Task(format!(
                "the etcd transaction task failed: {error}"
            ))),
        }
    }

    /// Shutdown: stop reading, apply what is complete (no retries once stopping), return.
    async fn stop(&mut self) -> Result<(), EtcdError> {
        tracing::info!("etcd sink stopping");
        if self.snapshot.is_none() && self.ready.commit().is_some() {
            self.submit_ready().await?;
        }
        self.drain_in_flight().await
    }

    /// Input closed: flush completed transactions, drop an unfinished trailing one.
    async fn finish(&mut self) -> Result<(), EtcdError> {
        if let Some(mut snapshot) = self.snapshot.take() {
            tracing::info!("input closed during a snapshot; it starts over on the next run");
            snapshot.join_all().await?;
        }
        if self.open.has_data() {
            tracing::debug!(
                ops = self.open.len(),
                "input closed inside a transaction; its tail is dropped and replays on restart"
            );
        }
        self.open = Batch::new();
        if self.ready.commit().is_some() {
            self.submit_ready().await?;
        }
        self.drain_in_flight().await
    }

    /// Stops the in-flight and snapshot transactions where they are (also when the pipeline
    /// aborts the sink's task: see `Drop`).
    fn abort(&mut self) {
        if let Some(flight) = self.in_flight.take() {
            flight.handle.abort();
        }
        if let Some(mut snapshot) = self.snapshot.take() {
            snapshot.tasks.abort_all();
        }
    }

    // ---- changes → etcd operations ---------------------------------------------------------

    /// The etcd operations of one change: a put, a delete, delete + put for a key change, or a
    /// range delete for a truncate. Transform routes (`route.key`, `route.old_key`) are relative
    /// to the data prefix.
    async fn change_ops(&mut self, change: Change) -> Result<Vec<EtcdOp>, EtcdError> {
        // The first write of a table in this session records that the pipeline owns its keys.
        let table = change.table.id.clone();
        let mut ops = self.table_change_ops(change).await?;
        if !self.marked.contains(&table) {
            ops.push(EtcdOp::Put {
                key: self.settings.table_marker(&table),
                value: b"1".to_vec(),
            });
            self.marked.insert(table);
        }
        Ok(ops)
    }

    async fn table_change_ops(&mut self, change: Change) -> Result<Vec<EtcdOp>, EtcdError> {
        if has_invalid_key(&change) {
            return self.invalid_key_ops(change).await;
        }
        if change.route.tracked && !matches!(change.op, Op::Truncate) {
            return self.tracked_ops(change).await;
        }
        let Change {
            table, op, route, ..
        } = change;
        let prefix = self.settings.prefix.clone();
        let key = route.key.as_deref().and_then(|k| self.routed_key(k));
        let old_key = route.old_key.as_deref().and_then(|k| self.routed_key(k));
        match op {
            Op::Truncate if route.tracked => Err(EtcdError::Protocol(format!(
                "a truncate of {} (keys from a transform) inside a snapshot",
                table.id
            ))),
            Op::Truncate => Ok(vec![EtcdOp::DeleteRange {
                prefix: table_prefix(&prefix, &table.id),
            }]),
            Op::Delete { old } => {
                let key = match old_key.or(key) {
                    Some(key) => key,
                    None => default_key(&prefix, &table, &old)?,
                };
                Ok(vec![EtcdOp::Delete { key }])
            }
            Op::Insert { row } => self.put_ops(&table, key, None, row, route.value).await,
            Op::Update { old, row } => {
                let old_key = match (old_key, &old) {
                    (Some(old_key), _) => Some(old_key),
                    // A transform leaves `old_key` empty when the key did not move.
                    (None, Some(_)) if route.tracked || key.is_some() => None,
                    (None, Some(old)) => default_key(&prefix, &table, old).ok(),
                    (None, None) => None,
                };
                self.put_ops(&table, key, old_key, row, route.value).await
            }
        }
    }

    async fn put_ops(
        &mut self,
        table: &Arc<TableSchema>,
        key: Option<String>,
        old_key: Option<String>,
        row: Row,
        value: Option<Vec<u8>>,
    ) -> Result<Vec<EtcdOp>, EtcdError> {
        let key = match key {
            Some(key) => key,
            None => default_key(&self.settings.prefix, table, &row)?,
        };
        self.check_key(&table.id, &key)?;
        let old_key = old_key.filter(|old| *old != key);
        if let Some(old) = &old_key {
            self.check_key(&table.id, old)?;
        }
        let value = match value {
            Some(value) => Some(value),
            None => self.encode(table, &key, old_key.as_deref(), row).await?,
        };
        let mut unit = Vec::with_capacity(2);
        if let Some(old) = old_key {
            unit.push(EtcdOp::Delete { key: old });
        }
        // `None`: the source no longer has the row; a later change of the stream removes it.
        if let Some(value) = value {
            unit.push(EtcdOp::Put { key, value });
        }
        Ok(unit)
    }

    /// `{prefix}/{relative}` for a transform's key; `None` when it is not a valid relative key
    /// (empty, a leading `/`, an empty component): no such key is ever written, so none needs
    /// deleting either.
    fn routed_key(&self, relative: &str) -> Option<String> {
        is_valid_relative_key(relative).then(|| format!("{}{relative}", self.settings.data_prefix))
    }

    /// A row whose new key from a transform is invalid (`sink.on_invalid_key`): an error naming
    /// table, row and key, or, with `skip`, a warning and the deletes that leave no stale key:
    /// the row's previous key (the transform's old key, or the key index's) with its owner and
    /// index entries.
    async fn invalid_key_ops(&mut self, change: Change) -> Result<Vec<EtcdOp>, EtcdError> {
        let Change {
            table, op, route, ..
        } = change;
        let (old, row) = match op {
            Op::Insert { row } => (None, row),
            Op::Update { old, row } => (old, row),
            Op::Delete { .. } | Op::Truncate => {
                return Err(EtcdError::Task(
                    "only a new row version has a key to refuse".into(),
                ))
            }
        };
        let relative = route.key.unwrap_or_default();
        let shown_key = format!("{}{relative}", self.settings.data_prefix);
        let row_text = row_label(&table, &row);
        if self.settings.on_invalid_key == OnInvalidKey::Error {
            return Err(EtcdError::InvalidKey {
                table: table.id.to_string(),
                row: row_text,
                key: shown_key,
            });
        }
        let routed_old = route.old_key.as_deref().and_then(|k| self.routed_key(k));
        let mut unit = Vec::new();
        if route.tracked {
            let index = self.index.clone();
            let row_id = index.row_id(&table, &row)?;
            let previous_id = old
                .as_deref()
                .and_then(|old| index.row_id(&table, old).ok())
                .unwrap_or_else(|| row_id.clone());
            let indexed = self.indexed_key(&previous_id).await?;
            if indexed.is_some() {
                unit.push(EtcdOp::Delete {
                    key: index.entry_key(&previous_id),
                });
            }
            if let Some(previous) = routed_old.or(indexed) {
                self.check_key(&table.id, &previous)?;
                // Another row may have taken the key over (during a snapshot): it stays.
                let owner = self.current_value(&index.owner_key(&previous)).await?;
                if owner.is_none_or(|o| o == previous_id.as_bytes() || o == row_id.as_bytes()) {
                    unit.push(EtcdOp::Delete {
                        key: index.owner_key(&previous),
                    });
                    unit.push(EtcdOp::Delete { key: previous });
                }
            }
        } else if let Some(previous) = routed_old {
            self.check_key(&table.id, &previous)?;
            unit.push(EtcdOp::Delete { key: previous });
        }
        let deleted = unit.iter().any(|op| {
            op.key()
                .is_some_and(|k| !k.starts_with(&self.settings.meta_prefix))
        });
        events::invalid_key_skipped(&table.id.to_string(), &row_text, &shown_key, deleted);
        Ok(unit)
    }

    /// Every data key is under the data prefix (the tool writes nothing else, DESIGN §2).
    fn check_key(&self, table: &TableId, key: &str) -> Result<(), EtcdError> {
        if key.starts_with(self.settings.data_prefix.as_str()) {
            Ok(())
        } else {
            Err(EtcdError::KeyOutsidePrefix {
                table: table.to_string(),
                key: key.to_string(),
                prefix: self.settings.data_prefix.clone(),
            })
        }
    }

    /// The JSON value of a row; unchanged TOAST columns are filled from the row's current value
    /// (pending batches first, then etcd), read under `old_key` when the key changed.
    async fn encode(
        &mut self,
        table: &TableSchema,
        key: &str,
        old_key: Option<&str>,
        mut row: Row,
    ) -> Result<Option<Vec<u8>>, EtcdError> {
        if row.iter().any(|v| matches!(v, Value::Unchanged)) {
            let source_key = old_key.unwrap_or(key);
            let unresolved = |column: &str, reason: String| EtcdError::UnresolvedUnchanged {
                table: table.id.to_string(),
                key: source_key.to_string(),
                column: column.to_string(),
                reason,
            };
            let stored = self.current_value(source_key).await?;
            let columns: HashMap<String, Box<RawValue>> = match &stored {
                Some(stored) => serde_json::from_slice(stored).unwrap_or_default(),
                None => HashMap::new(),
            };
            for (i, value) in row.iter_mut().enumerate() {
                if !matches!(value, Value::Unchanged) {
                    continue;
                }
                let name = table.columns.get(i).map(|c| c.name.as_str()).unwrap_or("?");
                if let Some(raw) = columns.get(name) {
                    *value = Value::Json(raw.get().to_string());
                }
            }
            if row.iter().any(|v| matches!(v, Value::Unchanged))
                && !self
                    .fetch_unchanged(table, &mut row, stored.is_some(), &unresolved)
                    .await?
            {
                tracing::debug!(table = %table.id, key, "the source no longer has the row; its put is left out (a later change removes it)");
                return Ok(None);
            }
        }
        encode_row(table, &row)
            .map(Some)
            .map_err(|source| EtcdError::Encode {
                table: table.id.to_string(),
                key: key.to_string(),
                source,
            })
    }

    /// Fills the unchanged columns etcd could not from the source's current row (a column renamed
    /// or no longer excluded, a row never copied): it may be newer than this change, and the
    /// change that wrote it follows.
    async fn fetch_unchanged(
        &self,
        table: &TableSchema,
        row: &mut Row,
        had_stored: bool,
        unresolved: &(dyn Fn(&str, String) -> EtcdError + Sync),
    ) -> Result<bool, EtcdError> {
        let first = row
            .iter()
            .position(|v| matches!(v, Value::Unchanged))
            .and_then(|i| table.columns.get(i))
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let reason = if had_stored {
            "its stored value has no such column"
        } else {
            "the key holds no value in etcd or earlier in the stream"
        };
        let Some(fetcher) = &self.fetcher else {
            return Err(unresolved(&first, reason.into()));
        };
        let key: Vec<Value> = table
            .key
            .iter()
            .filter_map(|&i| row.get(i).cloned())
            .collect();
        let fetched = fetcher
            .fetch(table, &key)
            .await
            .map_err(|e| EtcdError::Fetch {
                message: format!(
                    "table {}: reading a row from the source to fill unchanged column {first} ({reason}) failed: {e}",
                    table.id
                ),
                kind: e.kind(),
            })?;
        let Some(current) = fetched else {
            // The row is gone at the source: a later change of this stream deletes it.
            return Ok(false);
        };
        for (i, value) in row.iter_mut().enumerate() {
            if !matches!(value, Value::Unchanged) {
                continue;
            }
            let name = table.columns.get(i).map(|c| c.name.as_str()).unwrap_or("?");
            match current.iter().find(|(column, _)| column == name) {
                Some((_, fresh)) => *value = fresh.clone(),
                None => {
                    return Err(unresolved(
                        name,
                        format!("{reason}, and the source's row has no such column"),
                    ))
                }
            }
        }
        tracing::debug!(table = %table.id, "filled unchanged TOAST columns from the source's current row");
        Ok(true)
    }

    /// The value `key` will hold once everything sent so far is applied.
    async fn current_value(&self, key: &str) -> Result<Option<Vec<u8>>, EtcdError> {
        let pending = [
            Some(&self.open),
            Some(&self.ready),
            self.in_flight.as_ref().map(|f| f.batch.as_ref()),
        ];
        let snapshot = self.snapshot.iter().flat_map(|s| {
            std::iter::once(&s.batch).chain(s.applying.iter().rev().map(|(_, b)| b.as_ref()))
        });
        for batch in pending.into_iter().flatten().chain(snapshot) {
            match batch.lookup(key) {
                Lookup::Value(value) => return Ok(Some(value.to_vec())),
                Lookup::Deleted => return Ok(None),
                Lookup::Unknown => {}
            }
        }
        Ok(self.stored(key).await?.map(|(value, _)| value))
    }

    /// A key's value and mod_revision in etcd.
    async fn stored(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>, EtcdError> {
        let response = self
            .client
            .get(
                "read a key's current value",
                key,
                None,
                Some(&self.shutdown),
                None,
            )
            .await?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
    }

    // ---- tables with transformed keys (key index) -----------------------------------------

    /// The operations of a change of a tracked table: the data op plus the key index entry
    /// (`{meta}/index/{row}` → key) and owner (`{meta}/owner/{key}` → row), in one unit.
    async fn tracked_ops(&mut self, change: Change) -> Result<Vec<EtcdOp>, EtcdError> {
        let Change {
            table, op, route, ..
        } = change;
        let index = self.index.clone();
        let routed_old = route.old_key.as_deref().and_then(|k| self.routed_key(k));
        let (old, row) = match op {
            Op::Truncate => {
                return Err(EtcdError::Task(
                    "a tracked truncate is not a row change".into(),
                ))
            }
            Op::Delete { old } => {
                let row_id = index.row_id(&table, &old)?;
                let routed = route.key.as_deref().and_then(|k| self.routed_key(k));
                let key = match routed_old.or(routed) {
                    Some(key) => Some(key),
                    None => self.indexed_key(&row_id).await?,
                };
                let mut unit = vec![EtcdOp::Delete {
                    key: index.entry_key(&row_id),
                }];
                if let Some(key) = key {
                    self.check_key(&table.id, &key)?;
                    unit.push(EtcdOp::Delete {
                        key: index.owner_key(&key),
                    });
                    unit.push(EtcdOp::Delete { key });
                }
                return Ok(unit);
            }
            Op::Insert { row } => (None, row),
            Op::Update { old, row } => (old, row),
        };
        let Some(relative) = route.key.as_deref() else {
            return Err(EtcdError::Protocol(format!(
                "a change of {} is marked tracked but its transform gave no key",
                table.id
            )));
        };
        let Some(key) = self.routed_key(relative) else {
            return Err(EtcdError::Task(format!(
                "an invalid key of {} reached the key index",
                table.id
            )));
        };
        let row_id = index.row_id(&table, &row)?;
        let old_row_id = old
            .as_deref()
            .and_then(|old| index.row_id(&table, old).ok())
            .filter(|id| *id != row_id);
        let previous_id = old_row_id.clone().unwrap_or_else(|| row_id.clone());
        let indexed = self.indexed_key(&previous_id).await?;
        let mut old_key = routed_old.or_else(|| indexed.clone()).filter(|k| *k != key);
        if let Some(moved_from) = &old_key {
            self.check_key(&table.id, moved_from)?;
            // During a snapshot another row may have taken the old key over already.
            let owner = self.current_value(&index.owner_key(moved_from)).await?;
            if owner.is_some_and(|o| o != previous_id.as_bytes() && o != row_id.as_bytes()) {
                old_key = None;
            }
        }

        let owner = self
            .current_value(&index.owner_key(&key))
            .await?
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        if let Some(owner) = &owner {
            if *owner != row_id
                && Some(owner) != old_row_id.as_ref()
                && self.owner_is_live(owner).await?
            {
                return Err(EtcdError::KeyCollision {
                    key,
                    row: row_id,
                    other: owner.clone(),
                });
            }
        }
        let value = match route.value {
            Some(value) => Some(value),
            None => self.encode(&table, &key, old_key.as_deref(), row).await?,
        };
        // A snapshot rewrites every entry, so those it does not rewrite can be found stale.
        let rewrite = self.snapshot.is_some();
        let mut unit = Vec::with_capacity(6);
        if let Some(old_key) = &old_key {
            unit.push(EtcdOp::Delete {
                key: index.owner_key(old_key),
            });
            unit.push(EtcdOp::Delete {
                key: old_key.clone(),
            });
        }
        if let Some(old_row_id) = &old_row_id {
            unit.push(EtcdOp::Delete {
                key: index.entry_key(old_row_id),
            });
        }
        // `None`: the source no longer has the row; a later change of the stream removes it.
        let Some(value) = value else {
            return Ok(unit);
        };
        if rewrite || owner.as_deref() != Some(row_id.as_str()) {
            unit.push(EtcdOp::Put {
                key: index.owner_key(&key),
                value: row_id.clone().into_bytes(),
            });
        }
        if rewrite || old_row_id.is_some() || indexed.as_deref() != Some(key.as_str()) {
            unit.push(EtcdOp::Put {
                key: index.entry_key(&row_id),
                value: index.relative(&key).as_bytes().to_vec(),
            });
        }
        unit.push(EtcdOp::Put { key, value });
        Ok(unit)
    }

    /// The data key the index holds for a row.
    async fn indexed_key(&self, row_id: &str) -> Result<Option<String>, EtcdError> {
        let entry = self.current_value(&self.index.entry_key(row_id)).await?;
        Ok(entry.map(|relative| self.index.absolute(&String::from_utf8_lossy(&relative))))
    }

    /// Whether the row owning a key still exists: always while streaming; during a snapshot only
    /// if the snapshot wrote it (an owner it did not rewrite is stale and gives the key up).
    async fn owner_is_live(&self, owner: &str) -> Result<bool, EtcdError> {
        let Some(snapshot) = &self.snapshot else {
            return Ok(true);
        };
        let entry = self.index.entry_key(owner);
        let pending = std::iter::once(&snapshot.batch)
            .chain(snapshot.applying.iter().map(|(_, b)| b.as_ref()));
        for batch in pending {
            match batch.lookup(&entry) {
                Lookup::Value(_) => return Ok(true),
                Lookup::Deleted => return Ok(false),
                Lookup::Unknown => {}
            }
        }
        Ok(self
            .stored(&entry)
            .await?
            .is_some_and(|(_, revision)| revision > snapshot.start_revision))
    }

    /// A truncate of a tracked table: everything before it goes to etcd, then each indexed key
    /// of the table is deleted with its entry and owner, a page at a time (the truncate splits
    /// its source transaction, as DESIGN §4 allows).
    async fn truncate_tracked(&mut self, table: &TableId) -> Result<(), EtcdError> {
        if self.open.has_data() {
            self.submit_open_part().await?;
        } else if !self.ready.is_empty() {
            self.submit_ready().await?;
        }
        self.drain_in_flight().await?;
        let deleted = self.delete_indexed(table, None).await?;
        let mut tally = crate::batch::ChangeTally::default();
        tally.add(table, "truncate");
        events::changes_applied(&tally);
        tracing::debug!(%table, deleted, "truncated a table with transformed keys");
        Ok(())
    }

    /// Deletes the indexed rows of `table` (with `stale_at`: only entries a snapshot starting
    /// after that revision did not rewrite), their keys (while they still own them) and owners.
    async fn delete_indexed(
        &self,
        table: &TableId,
        stale_at: Option<i64>,
    ) -> Result<usize, EtcdError> {
        let prefix = self.index.table_entries(table);
        let end = prefix_range_end(&prefix);
        let mut from = prefix.into_bytes();
        let mut ops: Vec<TxnOp> = Vec::new();
        let mut deleted = 0;
        let chunk = self.settings.max_txn_ops;
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(STALE_SCAN_PAGE);
            let response = self
                .client
                .get(
                    "list a table's key index",
                    from.clone(),
                    Some(options),
                    Some(&self.shutdown),
                    None,
                )
                .await?;
            let kvs = response.kvs();
            for kv in kvs {
                if stale_at.is_some_and(|revision| kv.mod_revision() > revision) {
                    continue;
                }
                let entry = String::from_utf8_lossy(kv.key()).into_owned();
                let key = self.index.absolute(&String::from_utf8_lossy(kv.value()));
                let owner_key = self.index.owner_key(&key);
                let row_id = self
                    .index
                    .row_id_of_entry(&entry)
                    .unwrap_or_default()
                    .to_string();
                let owned = match stale_at {
                    None => true,
                    Some(_) => self
                        .stored(&owner_key)
                        .await?
                        .is_some_and(|(owner, _)| owner == row_id.as_bytes()),
                };
                if owned && key.starts_with(self.settings.data_prefix.as_str()) {
                    ops.push(TxnOp::delete(key, None));
                    ops.push(TxnOp::delete(owner_key, None));
                }
                ops.push(TxnOp::delete(entry, None));
                deleted += 1;
                if ops.len() + 3 > chunk {
                    let batch = std::mem::take(&mut ops);
                    self.delete_indexed_txn(stale_at, batch).await?;
                }
            }
            let more = response.more() && !kvs.is_empty();
            if let Some(last) = kvs.last() {
                from = last.key().to_vec();
                from.push(0);
            }
            if !more {
                break;
            }
        }
        if !ops.is_empty() {
            self.delete_indexed_txn(stale_at, ops).await?;
        }
        Ok(deleted)
    }

    /// One transaction of [`Self::delete_indexed`].
    async fn delete_indexed_txn(
        &self,
        stale_at: Option<i64>,
        ops: Vec<TxnOp>,
    ) -> Result<(), EtcdError> {
        let kind = if stale_at.is_some() {
            TxnKind::Snapshot
        } else {
            TxnKind::Data
        };
        let count = ops.len();
        let started = Instant::now();
        self.client
            .txn("delete indexed keys", &self.guards, ops, &self.shutdown)
            .await?;
        events::txn_applied_since(kind, count, started);
        Ok(())
    }

    /// A unit that does not fit an empty transaction: an error, or with `on_oversize: skip` a
    /// warning; returns what of the unit must still be applied (the delete of a key change).
    fn oversize(
        &self,
        table: &TableId,
        unit: Vec<EtcdOp>,
        limits: Limits,
    ) -> Result<Vec<EtcdOp>, EtcdError> {
        let size: usize = unit.iter().map(EtcdOp::size).sum();
        let key = unit
            .iter()
            .rev()
            .find_map(|op| match op {
                EtcdOp::Put { key, .. } => Some(key.clone()),
                _ => None,
            })
            .or_else(|| unit.iter().find_map(|op| op.key().map(str::to_string)))
            .unwrap_or_default();
        match self.settings.on_oversize {
            OnOversize::Error => Err(EtcdError::Oversize {
                table: table.to_string(),
                key,
                size,
                limit: limits.max_bytes,
                max_request_bytes: self.settings.max_request_bytes,
            }),
            OnOversize::Skip => {
                events::oversize_skipped(&table.to_string(), &key, size, limits.max_bytes);
                Ok(unit
                    .into_iter()
                    .filter(|op| !matches!(op, EtcdOp::Put { .. }))
                    .collect())
            }
        }
    }

    // ---- snapshot --------------------------------------------------------------------------

    async fn start_snapshot(&mut self, tables: Vec<TableId>) -> Result<(), EtcdError> {
        if self.snapshot.is_some() {
            return Err(EtcdError::Protocol(
                "SnapshotStarted while a snapshot is running".into(),
            ));
        }
        if self.open.has_data() {
            return Err(EtcdError::Protocol(
                "SnapshotStarted inside an open source transaction".into(),
            ));
        }
        if !self.ready.is_empty() {
            self.submit_ready().await?;
        }
        self.drain_in_flight().await?;
        let key = self.settings.snapshot_key();
        let response = self
            .client
            .get(
                "read the revision a snapshot starts at",
                key.as_str(),
                Some(GetOptions::new().with_count_only()),
                Some(&self.shutdown),
                None,
            )
            .await?;
        let start_revision = response
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| EtcdError::Task("etcd answered without a response header".into()))?;
        let marker = SnapshotMarker::new(SnapshotState::Running, start_revision, &tables);
        let started = Instant::now();
        self.client
            .txn(
                "record the snapshot start",
                &self.guards,
                vec![TxnOp::put(key, marker.to_json(), None)],
                &self.shutdown,
            )
            .await?;
        events::txn_applied_since(TxnKind::Snapshot, 1, started);
        tracing::info!(tables = tables.len(), start_revision, "snapshot started");
        self.snapshot = Some(SnapshotRun::new(tables, start_revision));
        Ok(())
    }

    async fn snapshot_change(&mut self, change: Change) -> Result<(), EtcdError> {
        if matches!(change.op, Op::Delete { .. } | Op::Truncate) {
            return Err(EtcdError::Protocol(format!(
                "a {} of {} arrived during a snapshot; a snapshot holds only inserts",
                change.op_name(),
                change.table.id
            )));
        }
        let table = Arc::clone(&change.table);
        let op = (!has_invalid_key(&change)).then(|| change.op_name());
        let unit = self.change_ops(change).await?;
        let limits = self.snapshot_limits;
        let Some(snapshot) = self.snapshot.as_mut() else {
            return Ok(());
        };
        let unit = match snapshot.batch.try_add(unit, limits) {
            Ok(()) => {
                if let Some(op) = op {
                    snapshot.batch.count_change(&table.id, op);
                }
                return Ok(());
            }
            Err(unit) => unit,
        };
        let unit = if snapshot.batch.has_data() {
            let full = std::mem::take(&mut snapshot.batch);
            self.launch_snapshot_batch(full).await?;
            let Some(snapshot) = self.snapshot.as_mut() else {
                return Ok(());
            };
            match snapshot.batch.try_add(unit, limits) {
                Ok(()) => {
                    if let Some(op) = op {
                        snapshot.batch.count_change(&table.id, op);
                    }
                    return Ok(());
                }
                Err(unit) => unit,
            }
        } else {
            unit
        };
        let rest = self.oversize(&table.id, unit, limits)?;
        if !rest.is_empty() {
            if let Some(snapshot) = self.snapshot.as_mut() {
                let _ = snapshot.batch.try_add(rest, limits);
            }
        }
        Ok(())
    }

    /// Starts applying a snapshot batch, first waiting while `snapshot_txns_in_flight` run.
    async fn launch_snapshot_batch(&mut self, batch: Batch) -> Result<(), EtcdError> {
        let max = self.settings.snapshot_txns_in_flight;
        let Some(snapshot) = self.snapshot.as_mut() else {
            return Ok(());
        };
        while snapshot.tasks.len() >= max {
            if let Some(done) = snapshot.join_one().await {
                done?;
            }
        }
        let batch = Arc::new(batch);
        let applying = Arc::clone(&batch);
        let count = batch.len();
        let client = self.client.clone();
        let guards = Arc::clone(&self.guards);
        let shutdown = self.shutdown.clone();
        let task = snapshot.tasks.spawn(async move {
            let started = Instant::now();
            client
                .txn_with(
                    "apply a snapshot transaction",
                    &guards,
                    || applying.txn_ops(),
                    &shutdown,
                )
                .await?;
            events::txn_applied_since(TxnKind::Snapshot, count, started);
            events::changes_applied(applying.tally());
            Ok(())
        });
        snapshot.applying.push((task.id(), batch));
        Ok(())
    }

    async fn finish_snapshot(&mut self, position: Position) -> Result<(), EtcdError> {
        if self.snapshot.as_ref().is_some_and(|s| s.batch.has_data()) {
            let last = self
                .snapshot
                .as_mut()
                .map(|s| std::mem::take(&mut s.batch))
                .unwrap_or_default();
            self.launch_snapshot_batch(last).await?;
        }
        let Some(mut snapshot) = self.snapshot.take() else {
            return Err(EtcdError::Protocol(format!(
                "SnapshotFinished (position {position}) without SnapshotStarted"
            )));
        };
        snapshot.join_all().await?;
        let cleanup_started = Instant::now();
        for table in &snapshot.tables {
            // Nothing can be stale under a prefix that held no key when the snapshot began
            // (a first snapshot): no scan at all.
            let data = table_prefix(&self.settings.prefix, table);
            if self.held_keys_at(&data, snapshot.start_revision).await != Some(0) {
                self.delete_stale(table, snapshot.start_revision).await?;
            }
            let entries = self.index.table_entries(table);
            if self.held_keys_at(&entries, snapshot.start_revision).await != Some(0) {
                let stale = self
                    .delete_indexed(table, Some(snapshot.start_revision))
                    .await?;
                if stale > 0 {
                    events::stale_keys_deleted(&table.to_string(), stale);
                }
            }
        }
        let mark = CommitMark {
            position: position.clone(),
            committed_at: None,
        };
        let marker = SnapshotMarker::new(
            SnapshotState::Done,
            snapshot.start_revision,
            &snapshot.tables,
        );
        let mut ops = vec![
            TxnOp::put(
                self.settings.checkpoint_key(),
                encode_checkpoint(&self.source_type, &mark),
                None,
            ),
            TxnOp::put(self.settings.snapshot_key(), marker.to_json(), None),
        ];
        // A split-transaction marker outlives only a step at its own checkpoint (removing a
        // dropped table's keys before the transaction replays); after a snapshot that moved
        // the checkpoint it describes nothing any more.
        let position_text = position.to_string();
        if self
            .replay
            .as_ref()
            .is_none_or(|replay| replay.after.as_deref() != Some(position_text.as_str()))
        {
            self.replay = None;
            ops.push(TxnOp::delete(self.settings.partial_key(), None));
        }
        let started = Instant::now();
        let ops_count = ops.len();
        self.client
            .txn(
                "record the snapshot's end and checkpoint",
                &self.guards,
                ops,
                &self.shutdown,
            )
            .await?;
        events::txn_applied_since(TxnKind::Checkpoint, ops_count, started);
        events::checkpoint_written();
        self.last_checkpoint_write = Some(Instant::now());
        self.last_position = Some(position.to_string());
        self.last_committed_at = None;
        tracing::info!(
            %position,
            tables = snapshot.tables.len(),
            stale_scan = ?cleanup_started.elapsed(),
            "snapshot finished"
        );
        self.acked.send_replace(Some(position));
        Ok(())
    }

    /// How many keys `prefix` held at `revision` (a count, no keys read); `None` when etcd cannot
    /// say (the revision was compacted): the caller scans.
    async fn held_keys_at(&self, prefix: &str, revision: i64) -> Option<i64> {
        let options = GetOptions::new()
            .with_range(prefix_range_end(prefix))
            .with_count_only()
            .with_revision(revision);
        match self
            .client
            .get(
                "count the keys a prefix held when the snapshot began",
                prefix,
                Some(options),
                Some(&self.shutdown),
                Some(1),
            )
            .await
        {
            Ok(response) => Some(response.count()),
            Err(error) => {
                tracing::debug!(%error, prefix, revision, "cannot count at the snapshot's start revision; scanning");
                None
            }
        }
    }

    /// Deletes the keys under `table`'s prefix that the snapshot did not rewrite (mod_revision
    /// at or below its start revision), a page at a time.
    async fn delete_stale(&self, table: &TableId, start_revision: i64) -> Result<(), EtcdError> {
        let prefix = table_prefix(&self.settings.prefix, table);
        let end = prefix_range_end(&prefix);
        let mut from = prefix.into_bytes();
        let mut stale: Vec<Vec<u8>> = Vec::new();
        let mut deleted = 0;
        let chunk = self.settings.max_txn_ops;
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_keys_only()
                .with_limit(STALE_SCAN_PAGE);
            let response = self
                .client
                .get(
                    "list a snapshotted table's keys",
                    from.clone(),
                    Some(options),
                    Some(&self.shutdown),
                    None,
                )
                .await?;
            let kvs = response.kvs();
            stale.extend(
                kvs.iter()
                    .filter(|kv| kv.mod_revision() <= start_revision)
                    .map(|kv| kv.key().to_vec()),
            );
            let more = response.more() && !kvs.is_empty();
            if let Some(last) = kvs.last() {
                from = last.key().to_vec();
                from.push(0);
            }
            while stale.len() >= chunk || (!more && !stale.is_empty()) {
                let take = stale.len().min(chunk);
                let ops: Vec<TxnOp> = stale
                    .drain(..take)
                    .map(|key| TxnOp::delete(key, None))
                    .collect();
                deleted += ops.len();
                let count = ops.len();
                let started = Instant::now();
                self.client
                    .txn(
                        "delete keys a snapshot did not rewrite",
                        &self.guards,
                        ops,
                        &self.shutdown,
                    )
                    .await?;
                events::txn_applied_since(TxnKind::Snapshot, count, started);
            }
            if !more {
                break;
            }
        }
        if deleted > 0 {
            events::stale_keys_deleted(&table.to_string(), deleted);
        }
        Ok(())
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
        return Err(EtcdError::Encode {
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
        return Err(EtcdError::UnresolvedUnchanged {
            table: table.id.to_string(),
            key: row_key(prefix, &table.id, table.key_values(row)),
            column,
            reason: "it is a key column, so the row's key is unknown".into(),
        });
    }
    Ok(row_key(prefix, &table.id, table.key_values(row)))
}

async fn wait_in_flight(
    slot: &mut Option<InFlight>,
) -> Result<Result<Option<Position>, EtcdError>, JoinError> {
    match slot {
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
