//! Tables with transformed keys: the key index (row → key, key → row) kept in the same
//! transactions as the data, key moves and collisions, truncates, and oversized rows.

use super::*;

impl<S: Store> Writer<S> {
    // ---- tables with transformed keys (key index) -----------------------------------------

    /// The operations of a change of a tracked table: the data op plus the key index entry
    /// (`{meta}/index/{row}` → key) and owner (`{meta}/owner/{key}` → row), in one unit.
    pub(super) async fn tracked_ops(&mut self, change: Change) -> Result<Vec<KvOp>, S::Error> {
        let Change {
            table, op, route, ..
        } = change;
        let index = self.index.clone();
        let routed_old = route.old_key.as_deref().and_then(|k| self.routed_key(k));
        let (old, row) = match op {
            Op::Truncate => {
                return Err(S::Error::from(KitError::Internal(
                    "a tracked truncate is not a row change".into(),
                )))
            }
            Op::Delete { old } => {
                let row_id = index.row_id(&table, &old)?;
                let routed = route.key.as_deref().and_then(|k| self.routed_key(k));
                let key = match routed_old.or(routed) {
                    Some(key) => Some(key),
                    None => self.indexed_key(&row_id).await?,
                };
                let mut unit = vec![KvOp::Delete {
                    key: index.entry_key(&row_id),
                }];
                if let Some(key) = key {
                    self.check_key(&table.id, &key)?;
                    unit.push(KvOp::Delete {
                        key: index.owner_key(&key),
                    });
                    unit.push(KvOp::Delete { key });
                }
                return Ok(unit);
            }
            Op::Insert { row } => (None, row),
            Op::Update { old, row } => (old, row),
        };
        let Some(relative) = route.key.as_deref() else {
            return Err(S::Error::from(KitError::Protocol(format!(
                "a change of {} is marked tracked but its transform gave no key",
                table.id
            ))));
        };
        let Some(key) = self.routed_key(relative) else {
            return Err(S::Error::from(KitError::Internal(format!(
                "an invalid key of {} reached the key index",
                table.id
            ))));
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
                return Err(S::Error::from(KitError::KeyCollision {
                    key,
                    row: row_id,
                    other: owner.clone(),
                }));
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
            unit.push(KvOp::Delete {
                key: index.owner_key(old_key),
            });
            unit.push(KvOp::Delete {
                key: old_key.clone(),
            });
        }
        if let Some(old_row_id) = &old_row_id {
            unit.push(KvOp::Delete {
                key: index.entry_key(old_row_id),
            });
        }
        // `None`: the source no longer has the row; a later change of the stream removes it.
        let Some(value) = value else {
            return Ok(unit);
        };
        if rewrite || owner.as_deref() != Some(row_id.as_str()) {
            unit.push(KvOp::Put {
                key: index.owner_key(&key),
                value: row_id.clone().into_bytes(),
            });
        }
        if rewrite || old_row_id.is_some() || indexed.as_deref() != Some(key.as_str()) {
            unit.push(KvOp::Put {
                key: index.entry_key(&row_id),
                value: index.relative(&key).as_bytes().to_vec(),
            });
        }
        unit.push(KvOp::Put { key, value });
        Ok(unit)
    }

    /// The data key the index holds for a row.
    pub(super) async fn indexed_key(&self, row_id: &str) -> Result<Option<String>, S::Error> {
        let entry = self.current_value(&self.index.entry_key(row_id)).await?;
        Ok(entry.map(|relative| self.index.absolute(&String::from_utf8_lossy(&relative))))
    }

    /// Whether the row owning a key still exists: always while streaming; during a snapshot only
    /// if the snapshot wrote it (an owner it did not rewrite is stale and gives the key up).
    pub(super) async fn owner_is_live(&self, owner: &str) -> Result<bool, S::Error> {
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

    /// A truncate of a tracked table: everything before it goes to the store, then each indexed key
    /// of the table is deleted with its entry and owner, a page at a time (the truncate splits
    /// its source transaction, as DESIGN §4 allows).
    pub(super) async fn truncate_tracked(&mut self, table: &TableId) -> Result<(), S::Error> {
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
    pub(super) async fn delete_indexed(
        &self,
        table: &TableId,
        stale_at: Option<i64>,
    ) -> Result<usize, S::Error> {
        let prefix = self.index.table_entries(table);
        let store = self.store.clone();
        let mut after: Option<Vec<u8>> = None;
        let mut ops: Vec<KvOp> = Vec::new();
        let mut deleted = 0;
        let chunk = self.settings.max_txn_ops;
        loop {
            let page = store
                .page(&prefix, after.as_deref(), crate::stale::PAGE, false)
                .await?;
            after = page.entries.last().map(|stored| stored.key.clone());
            for stored in &page.entries {
                if stale_at.is_some_and(|revision| stored.revision > revision) {
                    continue;
                }
                let entry = String::from_utf8_lossy(&stored.key).into_owned();
                let key = self.index.absolute(&String::from_utf8_lossy(&stored.value));
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
                    ops.push(KvOp::Delete { key });
                    ops.push(KvOp::Delete { key: owner_key });
                }
                ops.push(KvOp::Delete { key: entry });
                deleted += 1;
                if ops.len() + 3 > chunk {
                    let batch = std::mem::take(&mut ops);
                    self.delete_indexed_txn(stale_at, batch).await?;
                }
            }
            if !page.more || after.is_none() {
                break;
            }
        }
        if !ops.is_empty() {
            self.delete_indexed_txn(stale_at, ops).await?;
        }
        Ok(deleted)
    }

    /// One transaction of [`Self::delete_indexed`].
    pub(super) async fn delete_indexed_txn(
        &self,
        stale_at: Option<i64>,
        ops: Vec<KvOp>,
    ) -> Result<(), S::Error> {
        let kind = if stale_at.is_some() {
            TxnKind::Snapshot
        } else {
            TxnKind::Data
        };
        let count = ops.len();
        let started = Instant::now();
        self.store
            .apply("delete indexed keys", &|| {
                ops.iter().map(std::borrow::Cow::Borrowed).collect()
            })
            .await?;
        events::txn_applied_since(kind, count, started);
        Ok(())
    }

    /// A unit that does not fit an empty transaction: an error, or with `on_oversize: skip` a
    /// warning; returns what of the unit must still be applied (the delete of a key change).
    pub(super) fn oversize(
        &self,
        table: &TableId,
        unit: Vec<KvOp>,
        limits: Limits,
    ) -> Result<Vec<KvOp>, S::Error> {
        let size: usize = unit.iter().map(KvOp::size).sum();
        let key = unit
            .iter()
            .rev()
            .find_map(|op| match op {
                KvOp::Put { key, .. } => Some(key.clone()),
                _ => None,
            })
            .or_else(|| unit.iter().find_map(|op| op.key().map(str::to_string)))
            .unwrap_or_default();
        match self.settings.on_oversize {
            OnOversize::Error => Err(S::Error::from(KitError::Oversize {
                table: table.to_string(),
                key,
                size,
                limit: limits.max_bytes,
                max_request_bytes: self.settings.max_request_bytes,
                raise: S::RAISE_REQUEST_LIMIT,
            })),
            OnOversize::Skip => {
                events::oversize_skipped(&table.to_string(), &key, size, limits.max_bytes);
                Ok(unit
                    .into_iter()
                    .filter(|op| !matches!(op, KvOp::Put { .. }))
                    .collect())
            }
        }
    }
}
