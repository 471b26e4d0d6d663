//! How the stream follows the synced tables: the publication checked and repaired, tables
//! renamed, dropped or repartitioned noticed, the identity registry kept, and new or changed
//! tables copied in at a consistent point of the stream.

use super::*;

impl Streamer {
    /// The main publication must publish every streamed table, whole, with every operation:
    /// drift is repaired and the tables whose changes it may have filtered out are copied again
    /// (`manage_publication`), or stops the stream naming the fix.
    pub(super) async fn check_publication(&mut self, copying: &[TableId]) -> Result<()> {
        let publication = self.valid.publication.clone();
        let current = publication_tables(&self.catalog, &publication)
            .await?
            .unwrap_or_default();
        let streamed: Vec<TableId> = self
            .keys
            .keys()
            .filter(|id| !self.pending.iter().any(|t| &t.id == *id) && !copying.contains(id))
            .cloned()
            .collect();
        let removed: Vec<TableId> = streamed
            .iter()
            .filter(|id| !current.contains(*id))
            .cloned()
            .collect();
        if !self.valid.manage_publication {
            if let Some(first) = removed.first() {
                let persistence: Option<String> = self
                    .catalog
                    .query_one(
                        "SELECT (SELECT relpersistence::text FROM pg_class WHERE oid = to_regclass($1))",
                        &[&quote_table(first)],
                    )
                    .await
                    .map_err(pg(format!("looking up table {first}")))?
                    .get(0);
                if persistence.as_deref() == Some("u") {
                    let problem = crate::relations::unlogged_problem(std::slice::from_ref(first));
                    return Err(Error::config(format!(
                        "publication {publication} no longer publishes {first}: {}; {}, then run \
                         `etcdsync verify --repair` (its changes while unlogged were not logged)",
                        problem.detail, problem.fix
                    )));
                }
                return Err(Error::config(if persistence.is_some() {
                    format!(
                        "publication {publication} no longer publishes {first}, so its changes would not arrive: \
                         run ALTER PUBLICATION {} ADD TABLE {}; and `etcdsync verify --repair` once it runs again",
                        quote_ident(&publication),
                        quote_table(first)
                    )
                } else {
                    format!(
                        "table {first} was renamed or dropped; with `source.manage_publication: false` etcdsync \
                         does not follow it: run `etcdsync verify --repair --delete-unselected` now (it removes the old name's keys and \
                         copies the table under its new name), then start etcdsync again; or set \
                         `manage_publication: true`, which follows renames and drops"
                    )
                }));
            }
        }
        let published: Vec<TableId> = current.into_iter().collect();
        let mut recopy = crate::publication::enforce(
            &self.catalog,
            &publication,
            &published,
            self.server_version,
            self.valid.manage_publication,
        )
        .await?;
        for id in &removed {
            tracing::warn!(table = %id, publication = %publication, "the table was removed from the publication; copying it again");
        }
        recopy.extend(removed);
        recopy.extend(self.repartitioned(&streamed).await?);
        recopy.append(&mut self.identity.reshaped);
        recopy.retain(|id| streamed.contains(id));
        recopy.sort();
        recopy.dedup();
        if recopy.is_empty() {
            return Ok(());
        }
        let still_published: Vec<String> = recopy
            .iter()
            .filter(|id| published.contains(id))
            .map(quote_table)
            .collect();
        if !still_published.is_empty() {
            // Out of the main publication while the copy runs (it comes back with the copy),
            // so adding it back never meets "already member of publication".
            self.catalog
                .batch_execute(&format!(
                    "ALTER PUBLICATION {} DROP TABLE {}",
                    quote_ident(&publication),
                    still_published.join(", ")
                ))
                .await
                .map_err(pg(format!(
                    "taking tables out of publication {publication} for a new copy"
                )))?;
        }
        for id in &recopy {
            self.keys.remove(id);
        }
        // Found again (and copied) by the refresh.
        Ok(())
    }

    /// Removes the keys of dropped (or renamed-out) tables: a snapshot step over their names that
    /// writes nothing, so its clean-up deletes everything under them (index entries included).
    pub(super) async fn retire(&mut self, st: &mut State, out: &Out<'_>) -> Flow {
        let tables = std::mem::take(&mut self.identity.retire_now);
        tracing::info!(tables = ?tables.iter().map(ToString::to_string).collect::<Vec<_>>(), "removing the keys of tables that are gone");
        if let Flow::Stop = out.send(Message::SnapshotStarted { tables }).await {
            return Flow::Stop;
        }
        let position = position::format(st.last);
        if let Flow::Stop = out.send(Message::SnapshotFinished { position }).await {
            return Flow::Stop;
        }
        if self.identity.registry.is_some() {
            self.identity.dirty_at =
                Some(self.identity.dirty_at.map_or(st.last, |at| at.max(st.last)));
        }
        st.last_progress = Instant::now();
        Flow::Continue
    }

    /// Compares the synced tables' OIDs with the catalog (DESIGN §2: identity is the OID).
    pub(super) async fn reconcile_identity(&mut self, st: &mut State) -> Result<()> {
        let Some(registry) = &self.identity.registry else {
            return Ok(());
        };
        let found = registry
            .reconcile(&self.catalog, &self.valid.tables)
            .await?;
        let Some(registry) = &mut self.identity.registry else {
            return Ok(());
        };
        for oid in &found.gone {
            registry.tables.remove(oid);
            self.identity.ignored.insert(*oid);
            st.relations.insert(*oid, None);
        }
        if !found.gone.is_empty() {
            // A table renamed out of the selection leaves the publication too, so it is not
            // taken for a synced table if it comes back under a selected name.
            let still_published: Vec<String> = self
                .catalog
                .query(
                    "SELECT r.prrelid::regclass::text FROM pg_publication_rel r \
                     JOIN pg_publication p ON p.oid = r.prpubid \
                     WHERE p.pubname = $1 AND r.prrelid = ANY($2)",
                    &[&self.valid.publication, &found.gone],
                )
                .await
                .map_err(pg("looking up tables that left the selection"))?
                .into_iter()
                .map(|r| r.get::<_, String>(0))
                .collect();
            if !still_published.is_empty() {
                self.catalog
                    .batch_execute(&format!(
                        "ALTER PUBLICATION {} DROP TABLE {}",
                        quote_ident(&self.valid.publication),
                        still_published.join(", ")
                    ))
                    .await
                    .map_err(pg(
                        "taking tables that left the selection out of the publication",
                    ))?;
            }
        }
        for name in &found.retire {
            tracing::warn!(table = %name, "the table was dropped or renamed out of the selection; removing its keys");
            self.keys.remove(name);
            self.pending.retain(|t| &t.id != name);
        }
        self.identity.retire_now.extend(found.retire);
        for table in found.reshaped {
            if !self.identity.reshaped.contains(&table) && self.keys.contains_key(&table) {
                tracing::warn!(table = %table, "the table's columns changed since its copy; copying it again");
                self.unpublish(&table).await?;
                self.identity.reshaped.push(table);
            }
        }
        let Some(registry) = &mut self.identity.registry else {
            return Ok(());
        };
        for (oid, old, new) in found.renamed {
            tracing::warn!(from = %old, to = %new, "the table was renamed; its keys move to the new name");
            registry.tables.remove(&oid);
            // Its changes wait for the copy under the new name (which holds them).
            st.relations.insert(oid, None);
            // Found again under its new name by the refresh, which copies it; the copy's
            // clean-up removes the old name's keys.
            self.keys.remove(&old);
            self.identity.retire_with_copy.push(old);
        }
        Ok(())
    }

    /// Writes the registry once the sink holds everything it describes.
    pub(super) async fn write_registry_if_settled(&mut self, acked: Lsn, st: &State) -> Result<()> {
        let identity = &self.identity;
        let settled = identity.dirty_at.is_some_and(|at| acked >= at)
            && identity.retire_now.is_empty()
            && identity.retire_with_copy.is_empty()
            && self.pending.is_empty()
            && st.copy.is_none()
            && st.promote.is_none();
        if let (true, Some(registry)) = (settled, &mut self.identity.registry) {
            registry.partitions = self
                .partitions
                .values()
                .filter(|(oid, _)| registry.tables.contains_key(oid))
                .map(|(oid, leaves)| (*oid, leaves.clone()))
                .collect();
            registry
                .write(&self.catalog, &self.valid.publication)
                .await?;
            self.identity.dirty_at = None;
        }
        Ok(())
    }

    /// Partitioned tables whose partitions were attached, detached or truncated since their copy:
    /// none of these sends row changes, so they are copied again.
    pub(super) async fn repartitioned(&mut self, streamed: &[TableId]) -> Result<Vec<TableId>> {
        let mut changed = Vec::new();
        for (id, (oid, fingerprint)) in self.partitions.iter_mut() {
            if !streamed.contains(id) {
                continue;
            }
            let Some(now) = partition_fingerprint(&self.catalog, *oid).await? else {
                continue;
            };
            if &now != fingerprint {
                tracing::warn!(table = %id, "partitions were attached, detached or truncated; copying the table again");
                *fingerprint = now;
                changed.push(id.clone());
            }
        }
        Ok(changed)
    }

    /// Looks for selected tables that are not known yet and queues them for a copy.
    pub(super) async fn refresh(&mut self) -> Result<()> {
        let mut found = Vec::new();
        for (oid, id, replident) in selected_tables(&self.catalog, &self.valid.tables).await? {
            if self.keys.contains_key(&id) {
                continue;
            }
            let Some(key) = table_key(
                &self.catalog,
                oid,
                &id,
                &replident,
                &self.valid.key_columns,
                &self.valid.tables,
            )
            .await?
            else {
                continue;
            };
            self.keys.insert(id.clone(), key.clone());
            found.push(TableInfo { oid, id, key });
        }
        if found.is_empty() {
            return Ok(());
        }
        let list = found
            .iter()
            .map(|t| quote_table(&t.id))
            .collect::<Vec<_>>()
            .join(", ");
        let publication = self.valid.pending_publication();
        let members = publication_tables(&self.catalog, &publication)
            .await?
            .unwrap_or_default();
        let to_add: Vec<String> = found
            .iter()
            .filter(|t| !members.contains(&t.id))
            .map(|t| quote_table(&t.id))
            .collect();
        if !to_add.is_empty() {
            self.catalog
                .batch_execute(&format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    quote_ident(&publication),
                    to_add.join(", ")
                ))
                .await
                .map_err(pg(format!(
                    "adding new tables to publication {publication}"
                )))?;
        }
        tracing::info!(tables = %list, "new tables selected; they are copied, then streamed");
        self.pending.extend(found);
        Ok(())
    }

    /// Creates the temporary slot whose exported snapshot the pending tables are copied from.
    pub(super) async fn start_copy(&mut self) -> Result<TableCopy> {
        // Columns and partitions are read before the snapshot is exported: a change between
        // the two makes the record older than the copy, so the next check copies again (read
        // after it, a change the copy cannot see would pass for copied).
        for table in &self.pending {
            let columns = crate::relations::table_columns(&self.catalog, table.oid).await?;
            self.shapes.insert(table.id.clone(), columns);
            if let Some(fingerprint) = partition_fingerprint(&self.catalog, table.oid).await? {
                self.partitions
                    .insert(table.id.clone(), (table.oid, fingerprint));
            }
        }
        let config = crate::connect::replication_config(&self.valid, Lsn::ZERO, Lsn::ZERO)?;
        let mut session = ReplicationClient::connect_gated(config)
            .await
            .map_err(wire("opening a replication session for a table copy"))?;
        let slot = self.valid.copy_slot();
        let rows = session
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT"
            ))
            .await
            .map_err(wire(format!("creating temporary slot {slot}")))?;
        let (point, snapshot) = crate::slot::slot_answer(&rows)?;
        let tables = std::mem::take(&mut self.pending);
        let retire = std::mem::take(&mut self.identity.retire_with_copy);
        tracing::info!(point = %point.to_pg_string(), tables = tables.len(), "copy of new tables scheduled");
        Ok(TableCopy {
            point,
            snapshot,
            session,
            tables,
            retire,
        })
    }

    /// Inserts the pending copy into the stream at its consistent point.
    pub(super) async fn insert_copy(&mut self, st: &mut State, out: &Out<'_>) -> Result<Flow> {
        let Some(copy) = st.copy.take() else {
            return Ok(Flow::Continue);
        };
        let ids: Vec<TableId> = copy.tables.iter().map(|t| t.id.clone()).collect();
        // Old names of renamed tables are listed too: nothing is written under them, so the
        // clean-up at the end removes all their keys, after the new names hold the rows.
        let cleaned: Vec<TableId> = ids.iter().chain(&copy.retire).cloned().collect();
        if let Flow::Stop = out.send(Message::SnapshotStarted { tables: cleaned }).await {
            return Ok(Flow::Stop);
        }
        let done = copy_tables(
            &self.valid,
            &copy.tables,
            &copy.snapshot,
            self.server_version,
            out.output,
            out.shutdown,
        )
        .await?;
        drop(copy.session);
        if !done {
            return Ok(Flow::Stop);
        }
        if let Flow::Stop = out
            .send(Message::SnapshotFinished {
                position: position::format(copy.point),
            })
            .await
        {
            return Ok(Flow::Stop);
        }
        st.last = st.last.max(copy.point);
        st.last_progress = Instant::now();
        for table in &copy.tables {
            // A table renamed out of the selection and back in is followed again.
            self.identity.ignored.remove(&table.oid);
        }
        if let Some(registry) = &mut self.identity.registry {
            for table in &copy.tables {
                registry.tables.insert(table.oid, table.id.clone());
                if let Some(columns) = self.shapes.get(&table.id) {
                    let synced = crate::identity::synced_columns(
                        &self.valid.tables,
                        &table.id,
                        columns.clone(),
                    );
                    registry.columns.insert(table.oid, synced);
                }
            }
        }
        // Describe the copied tables again: their changes are streamed under their names now.
        for table in &copy.tables {
            if let Some(raw) = self.raw_relations.get(&table.oid).cloned() {
                let entry = self.describe(&raw).await?;
                st.relations.insert(table.oid, entry);
            }
        }
        if self.identity.registry.is_some() {
            self.identity.dirty_at = Some(copy.point);
        }
        st.promote = Some((copy.point, ids));
        Ok(Flow::Continue)
    }

    /// Moves copied tables from the pending publication into the main one (one transaction);
    /// membership is checked first, so a table already in either place never fails the move.
    pub(super) async fn promote(&self, tables: &[TableId]) -> Result<()> {
        let main = publication_tables(&self.catalog, &self.valid.publication)
            .await?
            .unwrap_or_default();
        let pending = publication_tables(&self.catalog, &self.valid.pending_publication())
            .await?
            .unwrap_or_default();
        let list = |ids: Vec<&TableId>| {
            ids.into_iter()
                .map(quote_table)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let add = list(tables.iter().filter(|t| !main.contains(*t)).collect());
        let drop = list(tables.iter().filter(|t| pending.contains(*t)).collect());
        let mut sql = String::from("BEGIN;");
        if !add.is_empty() {
            sql.push_str(&format!(
                " ALTER PUBLICATION {} ADD TABLE {add};",
                quote_ident(&self.valid.publication)
            ));
        }
        if !drop.is_empty() {
            sql.push_str(&format!(
                " ALTER PUBLICATION {} DROP TABLE {drop};",
                quote_ident(&self.valid.pending_publication())
            ));
        }
        sql.push_str(" COMMIT");
        self.catalog
            .batch_execute(&sql)
            .await
            .map_err(pg("moving copied tables into the publication"))?;
        tracing::info!(tables = %list(tables.iter().collect()), "copied tables are streamed");
        Ok(())
    }

    /// Takes a table out of the main publication, if it is in it.
    pub(super) async fn unpublish(&self, table: &TableId) -> Result<()> {
        let publication = &self.valid.publication;
        let members = publication_tables(&self.catalog, publication)
            .await?
            .unwrap_or_default();
        if members.contains(table) {
            self.catalog
                .batch_execute(&format!(
                    "ALTER PUBLICATION {} DROP TABLE {}",
                    quote_ident(publication),
                    quote_table(table)
                ))
                .await
                .map_err(pg(format!(
                    "taking {table} out of publication {publication} for a new copy"
                )))?;
        }
        Ok(())
    }
}
