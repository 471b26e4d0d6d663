//! Changes into store operations: default-layout keys, transform routes, invalid keys, and the
//! values of rows with unchanged (TOAST) columns filled from what the store or the source holds.

use super::*;

impl<S: Store> Writer<S> {
    // ---- changes → store operations --------------------------------------------------------

    /// The store operations of one change: a put, a delete, delete + put for a key change, or a
    /// range delete for a truncate. Transform routes (`route.key`, `route.old_key`) are relative
    /// to the data prefix.
    pub(super) async fn change_ops(&mut self, change: Change) -> Result<Vec<KvOp>, S::Error> {
        self.converting_seq = change.seq;
        // Before its first write in this run, a table's marker records that this pipeline
        // writes its keys — in a transaction of its own, so the data transactions keep their
        // limits; written first, it never misses keys that exist.
        if !self.marked.contains(&change.table.id) {
            let marker = KvOp::Put {
                key: self.settings.table_marker(&change.table.id),
                value: b"1".to_vec(),
            };
            self.store
                .apply("record that the pipeline writes a table", &|| {
                    vec![std::borrow::Cow::Borrowed(&marker)]
                })
                .await?;
            self.marked.insert(change.table.id.clone());
        }
        self.table_change_ops(change).await
    }

    pub(super) async fn table_change_ops(&mut self, change: Change) -> Result<Vec<KvOp>, S::Error> {
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
            Op::Truncate if route.tracked => Err(S::Error::from(KitError::Protocol(format!(
                "a truncate of {} (keys from a transform) inside a snapshot",
                table.id
            )))),
            Op::Truncate => Ok(vec![KvOp::DeleteRange {
                prefix: table_prefix(&prefix, &table.id),
            }]),
            Op::Delete { old } => {
                let key = match old_key.or(key) {
                    Some(key) => key,
                    None => default_key(&prefix, &table, &old)?,
                };
                Ok(vec![KvOp::Delete { key }])
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

    pub(super) async fn put_ops(
        &mut self,
        table: &Arc<TableSchema>,
        key: Option<String>,
        old_key: Option<String>,
        row: Row,
        value: Option<Vec<u8>>,
    ) -> Result<Vec<KvOp>, S::Error> {
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
            unit.push(KvOp::Delete { key: old });
        }
        // `None`: the source no longer has the row; a later change of the stream removes it.
        if let Some(value) = value {
            unit.push(KvOp::Put { key, value });
        }
        Ok(unit)
    }

    /// `{prefix}/{relative}` for a transform's key; `None` when it is not a valid relative key
    /// (empty, a leading `/`, an empty component): no such key is ever written, so none needs
    /// deleting either.
    pub(super) fn routed_key(&self, relative: &str) -> Option<String> {
        is_valid_relative_key(relative).then(|| format!("{}{relative}", self.settings.data_prefix))
    }

    /// A row whose new key from a transform is invalid (`sink.on_invalid_key`): an error naming
    /// table, row and key, or, with `skip`, a warning and the deletes that leave no stale key:
    /// the row's previous key (the transform's old key, or the key index's) with its owner and
    /// index entries.
    pub(super) async fn invalid_key_ops(&mut self, change: Change) -> Result<Vec<KvOp>, S::Error> {
        let Change {
            table, op, route, ..
        } = change;
        let (old, row) = match op {
            Op::Insert { row } => (None, row),
            Op::Update { old, row } => (old, row),
            Op::Delete { .. } | Op::Truncate => {
                return Err(S::Error::from(KitError::Internal(
                    "only a new row version has a key to refuse".into(),
                )))
            }
        };
        let relative = route.key.unwrap_or_default();
        let shown_key = format!("{}{relative}", self.settings.data_prefix);
        let row_text = row_label(&table, &row);
        if self.settings.on_invalid_key == OnInvalidKey::Error {
            return Err(S::Error::from(KitError::InvalidKey {
                table: table.id.to_string(),
                row: row_text,
                key: shown_key,
            }));
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
                unit.push(KvOp::Delete {
                    key: index.entry_key(&previous_id),
                });
            }
            if let Some(previous) = routed_old.or(indexed) {
                self.check_key(&table.id, &previous)?;
                // Another row may have taken the key over (during a snapshot): it stays.
                let owner = self.current_value(&index.owner_key(&previous)).await?;
                if owner.is_none_or(|o| o == previous_id.as_bytes() || o == row_id.as_bytes()) {
                    unit.push(KvOp::Delete {
                        key: index.owner_key(&previous),
                    });
                    unit.push(KvOp::Delete { key: previous });
                }
            }
        } else if let Some(previous) = routed_old {
            self.check_key(&table.id, &previous)?;
            unit.push(KvOp::Delete { key: previous });
        }
        let deleted = unit.iter().any(|op| {
            op.key()
                .is_some_and(|k| !k.starts_with(&self.settings.meta_prefix))
        });
        events::invalid_key_skipped(&table.id.to_string(), &row_text, &shown_key, deleted);
        Ok(unit)
    }

    /// Every data key is under the data prefix (the tool writes nothing else, DESIGN §2).
    pub(super) fn check_key(&self, table: &TableId, key: &str) -> Result<(), S::Error> {
        if key.starts_with(self.settings.data_prefix.as_str()) {
            Ok(())
        } else {
            Err(S::Error::from(KitError::KeyOutsidePrefix {
                table: table.to_string(),
                key: key.to_string(),
                prefix: self.settings.data_prefix.clone(),
            }))
        }
    }

    /// The JSON value of a row; unchanged TOAST columns are filled from the row's current value
    /// (pending batches first, then the store), read under `old_key` when the key changed.
    pub(super) async fn encode(
        &mut self,
        table: &TableSchema,
        key: &str,
        old_key: Option<&str>,
        mut row: Row,
    ) -> Result<Option<Vec<u8>>, S::Error> {
        if row.iter().any(|v| matches!(v, Value::Unchanged)) {
            let source_key = old_key.unwrap_or(key);
            let unresolved = |column: &str, reason: String| {
                S::Error::from(KitError::UnresolvedUnchanged {
                    table: table.id.to_string(),
                    key: source_key.to_string(),
                    column: column.to_string(),
                    reason,
                })
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
        encode_row(table, &row).map(Some).map_err(|source| {
            S::Error::from(KitError::Encode {
                table: table.id.to_string(),
                key: key.to_string(),
                source,
            })
        })
    }

    /// Fills the unchanged columns the store could not from the source's current row (a column renamed
    /// or no longer excluded, a row never copied): it may be newer than this change, and the
    /// change that wrote it follows.
    pub(super) async fn fetch_unchanged(
        &self,
        table: &TableSchema,
        row: &mut Row,
        had_stored: bool,
        unresolved: &(dyn Fn(&str, String) -> S::Error + Sync),
    ) -> Result<bool, S::Error> {
        let first = row
            .iter()
            .position(|v| matches!(v, Value::Unchanged))
            .and_then(|i| table.columns.get(i))
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let reason = if had_stored {
            "its stored value has no such column"
        } else {
            "the key holds no value in the store or earlier in the stream"
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
            .fetch_for(table, &key, self.converting_seq)
            .await
            .map_err(|e| S::Error::from(KitError::Fetch {
                message: format!(
                    "table {}: reading a row from the source to fill unchanged column {first} ({reason}) failed: {e}",
                    table.id
                ),
                kind: e.kind(),
            }))?;
        let Some(current) = fetched else {
            // The row is gone at the source: a later change of this stream deletes it.
            return Ok(false);
        };
        if let Some(name) = etcdsync_core::source::fill_from_current(table, row, &current) {
            // The column was renamed, dropped or retyped after this change: a source that
            // follows column changes copies the table again when it meets that change.
            tracing::warn!(
                table = %table.id,
                column = name,
                "an update left a TOASTed column unchanged that the table no longer has ({reason}); \
                 its put is left out: the column change that follows copies the table again where \
                 the source follows column changes (pgx with manage_publication: true); otherwise \
                 run `etcdsync verify --repair`"
            );
            return Ok(false);
        }
        tracing::debug!(table = %table.id, "filled unchanged TOAST columns from the source's current row");
        Ok(true)
    }

    /// The value `key` will hold once everything sent so far is applied.
    pub(super) async fn current_value(&self, key: &str) -> Result<Option<Vec<u8>>, S::Error> {
        let pending = [&self.open, &self.ready]
            .into_iter()
            .chain(self.in_flight.iter().rev().map(|f| f.batch.as_ref()));
        let snapshot = self.snapshot.iter().flat_map(|s| {
            std::iter::once(&s.batch).chain(s.applying.iter().rev().map(|(_, b)| b.as_ref()))
        });
        for batch in pending.chain(snapshot) {
            match batch.lookup(key) {
                Lookup::Value(value) => return Ok(Some(value.to_vec())),
                Lookup::Deleted => return Ok(None),
                Lookup::Unknown => {}
            }
        }
        Ok(self.stored(key).await?.map(|(value, _)| value))
    }

    /// A key's value and the revision it was last written at.
    pub(super) async fn stored(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>, S::Error> {
        self.store.get(key).await
    }
}
