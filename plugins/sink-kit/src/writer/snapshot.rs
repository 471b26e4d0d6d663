//! Snapshots: the start marker, inserts batched with several transactions in flight, and the
//! end — keys of the snapshot's tables it did not rewrite are deleted, then the checkpoint.

use super::*;

impl<S: Store> Writer<S> {
    // ---- snapshot --------------------------------------------------------------------------

    pub(super) async fn start_snapshot(&mut self, tables: Vec<TableId>) -> Result<(), S::Error> {
        if self.snapshot.is_some() {
            return Err(S::Error::from(KitError::Protocol(
                "SnapshotStarted while a snapshot is running".into(),
            )));
        }
        if self.open.has_data() {
            return Err(S::Error::from(KitError::Protocol(
                "SnapshotStarted inside an open source transaction".into(),
            )));
        }
        if !self.ready.is_empty() {
            self.submit_ready().await?;
        }
        self.drain_in_flight().await?;
        let start_revision = self
            .store
            .revision("read the revision a snapshot starts at")
            .await?;
        let marker = SnapshotMarker::new(SnapshotState::Running, start_revision, &tables);
        let started = Instant::now();
        let put = KvOp::Put {
            key: self.settings.snapshot_key(),
            value: marker.to_json(),
        };
        self.store
            .apply("record the snapshot start", &|| {
                vec![std::borrow::Cow::Borrowed(&put)]
            })
            .await?;
        events::txn_applied_since(TxnKind::Snapshot, 1, started);
        tracing::info!(tables = tables.len(), start_revision, "snapshot started");
        self.snapshot = Some(SnapshotRun::new(tables, start_revision));
        Ok(())
    }

    pub(super) async fn snapshot_change(&mut self, change: Change) -> Result<(), S::Error> {
        if matches!(change.op, Op::Delete { .. } | Op::Truncate) {
            return Err(S::Error::from(KitError::Protocol(format!(
                "a {} of {} arrived during a snapshot; a snapshot holds only inserts",
                change.op_name(),
                change.table.id
            ))));
        }
        let table = Arc::clone(&change.table);
        let op = (!has_invalid_key(&change)).then(|| change.op_name());
        let unit = self.change_ops(change).await?;
        let limits = self.snapshot_limits;
        let Some(snapshot) = self.snapshot.as_mut() else {
            return Ok(());
        };
        let Err(unit) = snapshot.batch.try_add_change(unit, limits, &table.id, op) else {
            return Ok(());
        };
        let unit = if snapshot.batch.has_data() {
            let full = std::mem::take(&mut snapshot.batch);
            self.launch_snapshot_batch(full).await?;
            let Some(snapshot) = self.snapshot.as_mut() else {
                return Ok(());
            };
            let Err(unit) = snapshot.batch.try_add_change(unit, limits, &table.id, op) else {
                return Ok(());
            };
            unit
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
    pub(super) async fn launch_snapshot_batch(&mut self, batch: Batch) -> Result<(), S::Error> {
        let max = self.settings.snapshot_txns_in_flight;
        let store = self.store.clone();
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
        let task = snapshot.tasks.spawn(async move {
            let started = Instant::now();
            store
                .apply("apply a snapshot transaction", &|| applying.ops().collect())
                .await?;
            events::txn_applied_since(TxnKind::Snapshot, count, started);
            events::changes_applied(applying.tally());
            Ok(())
        });
        snapshot.applying.push((task.id(), batch));
        Ok(())
    }

    pub(super) async fn finish_snapshot(&mut self, position: Position) -> Result<(), S::Error> {
        if self.snapshot.as_ref().is_some_and(|s| s.batch.has_data()) {
            let last = self
                .snapshot
                .as_mut()
                .map(|s| std::mem::take(&mut s.batch))
                .unwrap_or_default();
            self.launch_snapshot_batch(last).await?;
        }
        let Some(mut snapshot) = self.snapshot.take() else {
            return Err(S::Error::from(KitError::Protocol(format!(
                "SnapshotFinished (position {position}) without SnapshotStarted"
            ))));
        };
        snapshot.join_all().await?;
        let cleanup_started = Instant::now();
        for table in &snapshot.tables {
            // Nothing can be stale under a prefix that held no key when the snapshot began
            // (a first snapshot): no scan at all.
            let data = table_prefix(&self.settings.prefix, table);
            let deleted = crate::stale::delete_stale(
                &self.store,
                &data,
                snapshot.start_revision,
                self.settings.max_txn_ops,
                |count, started| events::txn_applied_since(TxnKind::Snapshot, count, started),
            )
            .await?;
            if deleted > 0 {
                events::stale_keys_deleted(&table.to_string(), deleted);
            }
            let entries = self.index.table_entries(table);
            if self.store.count_at(&entries, snapshot.start_revision).await != Some(0) {
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
        let mut ops = vec![KvOp::Put {
            key: self.settings.snapshot_key(),
            value: marker.to_json(),
        }];
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
            ops.push(KvOp::Delete {
                key: self.settings.partial_key(),
            });
        }
        let started = Instant::now();
        let ops_count = ops.len() + 1;
        self.apply_chained("record the snapshot's end and checkpoint", mark, ops)
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
}
