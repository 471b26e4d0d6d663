//! Streaming: changes grouped into transactions within the store's limits (group commit while
//! `stream_txns_in_flight` are being applied, in order: [`super::chain`]), each closing with the
//! checkpoint of the source transaction it ends; heartbeats, acknowledgements after durability,
//! in order, and the stop.

use super::*;
use std::borrow::Cow;

impl<S: Store> Writer<S> {
    // ---- streaming -------------------------------------------------------------------------

    pub(super) async fn stream_change(&mut self, change: Change) -> Result<(), S::Error> {
        if let Some(replay) = &mut self.replay {
            if replay.holds(change.seq) {
                // Already in the store: applied by a part before the restart.
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
    pub(super) async fn add_open_change(&mut self, change: Change) -> Result<(), S::Error> {
        if change.route.tracked && matches!(change.op, Op::Truncate) {
            return self.truncate_tracked(&change.table.id).await;
        }
        let table = Arc::clone(&change.table);
        // A skipped row (`on_invalid_key: skip`) is counted by its own metric, not as applied.
        let op = (!has_invalid_key(&change)).then(|| change.op_name());
        let unit = self.change_ops(change).await?;
        let limits = self.stream_limits;
        let Err(unit) = self.open.try_add_change(unit, limits, &table.id, op) else {
            return Ok(());
        };
        let unit = if self.open.has_data() {
            // The source transaction is larger than one store transaction, or writes into a range
            // it truncated: apply it in parts, in order; only its last part carries the checkpoint.
            self.submit_open_part().await?;
            let Err(unit) = self.open.try_add_change(unit, limits, &table.id, op) else {
                return Ok(());
            };
            unit
        } else {
            unit
        };
        let rest = self.oversize(&table.id, unit, limits)?;
        if !rest.is_empty() {
            // a skipped key change still deletes the old key
            if let Err(rest) = self.open.try_add(rest, limits) {
                self.submit_open_part().await?;
                self.open.try_add(rest, limits).map_err(|_| {
                    S::Error::from(KitError::Internal(
                        "a delete does not fit an empty store transaction".into(),
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// Sends what the open source transaction has so far as a part of it (no checkpoint), after
    /// the committed transactions waiting before it.
    pub(super) async fn submit_open_part(&mut self) -> Result<(), S::Error> {
        self.submit_ready().await?;
        let part = std::mem::take(&mut self.open);
        tracing::debug!(
            ops = part.len(),
            bytes = part.bytes(),
            changes = self.open_changes,
            "source transaction split across store transactions"
        );
        let marker = PartialMarker {
            after: self.last_position.clone(),
            changes: self.open_changes,
            seq: self.open_last_seq.map(|seq| seq.to_string()),
        };
        self.open_split = true;
        let put = KvOp::Put {
            key: self.settings.partial_key(),
            value: marker.encode(),
        };
        self.submit_with(part, Some(put)).await
    }

    /// Sends `ready` (with the marker's delete when it completes a split transaction).
    pub(super) async fn submit_ready(&mut self) -> Result<(), S::Error> {
        if self.ready.is_empty() {
            return Ok(());
        }
        let ready = std::mem::take(&mut self.ready);
        let clear = std::mem::take(&mut self.ready_clears_partial).then(|| KvOp::Delete {
            key: self.settings.partial_key(),
        });
        self.submit_with(ready, clear).await
    }

    pub(super) async fn commit(&mut self, commit: Commit) -> Result<(), S::Error> {
        if self.snapshot.is_some() {
            return Err(S::Error::from(KitError::Protocol(format!(
                "a Commit (position {}) arrived during a snapshot; a snapshot holds only inserts",
                commit.position
            ))));
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
    pub(super) async fn heartbeat(&mut self, position: Position) -> Result<(), S::Error> {
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

    /// Sends `ready` when it holds data and a slot is free, or when it holds only a checkpoint,
    /// nothing is in flight and `heartbeat_interval` passed since the last checkpoint write.
    pub(super) async fn submit_ready_if_due(&mut self) -> Result<(), S::Error> {
        if self.ready.commit().is_none() {
            return Ok(());
        }
        if self.ready.has_data() {
            if self.in_flight.len() >= self.settings.stream_txns_in_flight {
                return Ok(());
            }
        } else {
            let due = self.in_flight.is_empty()
                && self
                    .last_checkpoint_write
                    .is_none_or(|at| at.elapsed() >= self.settings.heartbeat_interval);
            if !due {
                return Ok(());
            }
        }
        self.submit_ready().await
    }

    /// When a checkpoint-only `ready` becomes due.
    pub(super) fn checkpoint_flush_at(&self) -> Option<tokio::time::Instant> {
        if !self.in_flight.is_empty() || self.ready.has_data() || self.ready.commit().is_none() {
            return None;
        }
        let at = self.last_checkpoint_write? + self.settings.heartbeat_interval;
        Some(tokio::time::Instant::from_std(at))
    }

    /// Starts applying `batch` with its checkpoint and `marker` (the split-transaction marker's
    /// put or delete) after the transactions in flight, waiting while all slots are taken.
    pub(super) async fn submit_with(
        &mut self,
        batch: Batch,
        marker: Option<KvOp>,
    ) -> Result<(), S::Error> {
        if batch.is_empty() && marker.is_none() {
            return Ok(());
        }
        while self.in_flight.len() >= self.settings.stream_txns_in_flight
            || self.in_flight.back().is_some_and(|flight| flight.alone)
        {
            self.wait_and_complete_oldest().await?;
        }
        let end = self.chain_end().await?;
        let commits = batch.commit().is_some();
        // A part of a split source transaction puts the checkpoint it follows again.
        let mark = batch.commit().or(end.mark.as_ref()).cloned();
        if mark.is_none() {
            self.drain_in_flight().await?;
        }
        let writer = mark.as_ref().map(|_| {
            self.chain_seq += 1;
            (Arc::clone(&self.session), self.chain_seq)
        });
        let checkpoint = mark.as_ref().map(|mark| {
            let name = writer
                .as_ref()
                .map(|(session, seq)| format!("{session}:{seq}"));
            encode_checkpoint(&self.source_type, mark, name.as_deref())
        });
        if let Some(mark) = batch.commit() {
            self.last_position = Some(mark.position.to_string());
            self.last_checkpoint_write = Some(Instant::now());
        }
        let alone = writer.is_none();
        let (stage, stage_seen) = watch::channel(chain::Stage::Waiting);
        let link = chain::Link {
            checkpoint_key: self.settings.checkpoint_key(),
            expected: end.value,
            writer,
            predecessor: self.in_flight.back().map(|flight| flight.stage.clone()),
            stage,
        };
        if !alone {
            self.chain = Some(chain::ChainEnd {
                value: checkpoint.clone(),
                mark,
            });
        }
        let data_ops = batch.len();
        let has_data = batch.has_data();
        let position = batch.commit().map(|mark| mark.position.clone());
        tracing::debug!(ops = data_ops, bytes = batch.bytes(), position = ?position, in_flight = self.in_flight.len(), "applying a store transaction");
        if let Some(received) = batch.first_received() {
            etcdsync_core::telemetry::get().batch_waited(received.elapsed());
        }
        let batch = Arc::new(batch);
        let applying = Arc::clone(&batch);
        let store = self.store.clone();
        let checkpoint_key = link.checkpoint_key.clone();
        let apply = async move {
            let build = || {
                let mut ops: Vec<Cow<'_, KvOp>> = applying.ops().collect();
                if let Some(value) = &checkpoint {
                    ops.push(Cow::Owned(KvOp::Put {
                        key: checkpoint_key.clone(),
                        value: value.clone(),
                    }));
                }
                ops.extend(marker.iter().map(Cow::Borrowed));
                ops
            };
            crate::test_hooks::before_stream_txn(&checkpoint_key).await;
            let started = Instant::now();
            let applied = link
                .apply(
                    &store,
                    "apply a data transaction",
                    &build,
                    &events::txn_resent,
                )
                .await;
            applied?;
            let kind = if has_data {
                TxnKind::Data
            } else {
                TxnKind::Checkpoint
            };
            let ops = data_ops + usize::from(checkpoint.is_some());
            events::txn_applied_since(kind, ops, started);
            events::changes_applied(applying.tally());
            if commits {
                events::checkpoint_written();
            }
            events::transactions_applied(applying.commits(), applying.commit_time());
            Ok(position)
        };
        let handle = spawn_started(apply);
        self.in_flight.push_back(InFlight {
            batch,
            handle,
            stage: stage_seen,
            alone,
        });
        Ok(())
    }

    /// The checkpoint key as the newest transaction in flight leaves it, read from the store when
    /// not known (nothing is in flight then). A chain read anew starts a new session.
    async fn chain_end(&mut self) -> Result<chain::ChainEnd, S::Error> {
        if let Some(end) = &self.chain {
            return Ok(end.clone());
        }
        self.drain_in_flight().await?;
        self.session = chain::new_session();
        self.chain_seq = 0;
        let key = self.settings.checkpoint_key();
        let stored = self.store.get(&key).await?;
        let (end, _) =
            chain::ChainEnd::stored(&key, stored.as_ref().map(|(value, _)| value.as_slice()))?;
        self.chain = Some(end.clone());
        Ok(end)
    }

    /// Applies `ops` with the checkpoint of `mark` as the next link of the chain, now (nothing
    /// else in flight): a write outside streaming that moves the checkpoint (a snapshot's end).
    pub(super) async fn apply_chained(
        &mut self,
        op: &'static str,
        mark: CommitMark,
        mut ops: Vec<KvOp>,
    ) -> Result<(), S::Error> {
        let end = self.chain_end().await?;
        self.chain_seq += 1;
        let writer = (Arc::clone(&self.session), self.chain_seq);
        let checkpoint = encode_checkpoint(
            &self.source_type,
            &mark,
            Some(&format!("{}:{}", writer.0, writer.1)),
        );
        let key = self.settings.checkpoint_key();
        ops.push(KvOp::Put {
            key: key.clone(),
            value: checkpoint.clone(),
        });
        crate::test_hooks::before_stream_txn(&key).await;
        let link = chain::Link {
            checkpoint_key: key,
            expected: end.value,
            writer: Some(writer),
            predecessor: None,
            stage: watch::channel(chain::Stage::Waiting).0,
        };
        link.apply(
            &self.store,
            op,
            &|| ops.iter().map(Cow::Borrowed).collect(),
            &events::txn_resent,
        )
        .await?;
        self.chain = Some(chain::ChainEnd {
            value: Some(checkpoint),
            mark: Some(mark),
        });
        Ok(())
    }

    /// Waits for every streaming transaction in flight, acknowledging each in order.
    pub(super) async fn drain_in_flight(&mut self) -> Result<(), S::Error> {
        while !self.in_flight.is_empty() {
            self.wait_and_complete_oldest().await?;
        }
        Ok(())
    }

    async fn wait_and_complete_oldest(&mut self) -> Result<(), S::Error> {
        if let Some(flight) = self.in_flight.front_mut() {
            let done = (&mut flight.handle).await;
            self.complete_oldest(done)?;
        }
        Ok(())
    }

    /// Takes the oldest transaction in flight out with its outcome and acknowledges its
    /// position: every transaction before it is applied too.
    pub(super) fn complete_oldest(
        &mut self,
        done: Result<Result<Option<Position>, S::Error>, JoinError>,
    ) -> Result<(), S::Error> {
        self.in_flight.pop_front();
        match done {
            Ok(Ok(Some(position))) => {
                tracing::trace!(%position, "acknowledged");
                self.acked.send_replace(Some(position));
                Ok(())
            }
            Ok(Ok(None)) => Ok(()),
            Ok(Err(error)) => Err(error),
            Err(error) => Err(S::Error::from(KitError::Internal(format!(
                "a store transaction task failed: {error}"
            )))),
        }
    }

    /// Shutdown: stop reading, apply what is complete (no retries once stopping), return.
    pub(super) async fn stop(&mut self) -> Result<(), S::Error> {
        tracing::info!("sink stopping");
        if self.snapshot.is_none() && self.ready.commit().is_some() {
            self.submit_ready().await?;
        }
        self.drain_in_flight().await
    }

    /// Input closed: flush completed transactions, drop an unfinished trailing one.
    pub(super) async fn finish(&mut self) -> Result<(), S::Error> {
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
    pub fn abort(&mut self) {
        for flight in self.in_flight.drain(..) {
            flight.handle.abort();
        }
        if let Some(mut snapshot) = self.snapshot.take() {
            snapshot.tasks.abort_all();
        }
    }
}

/// Spawns `task` after polling it once here, which hands its request to the connection now: the
/// transactions go out in the order they were submitted. A task spawned without that first poll
/// may run after one spawned later (the runtime runs the newest task first), so its successors
/// would reach the store first, fail their order compare and cost a second round trip each.
fn spawn_started<T: Send + 'static>(
    task: impl std::future::Future<Output = T> + Send + 'static,
) -> JoinHandle<T> {
    let mut task = Box::pin(task);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match task.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(done) => tokio::spawn(async move { done }),
        // The spawned task polls it again at once, with a waker that wakes it.
        std::task::Poll::Pending => tokio::spawn(task),
    }
}
