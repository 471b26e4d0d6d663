//! Streaming from the slot (DESIGN §1, §5): pgoutput v1 changes become `Changes` … `Commit` per
//! source transaction, transactions at or before the resume position are skipped, acknowledged
//! positions are confirmed upstream (`flush_lsn`), and keepalives while no transaction is open
//! become rate-limited `Heartbeat`s so an idle or filtered database does not retain WAL. Tables
//! selected while running are copied at a temporary slot's consistent point and then streamed.

use crate::config::Valid;
use crate::decode::{decode, LogicalMessage, RelationMessage};
use crate::error::{pg, wire, PgxError};
use crate::identity::Registry;
use crate::position;
use crate::relations::{
    message_table, partition_fingerprint, quote_ident, quote_table, selected_tables, table_by_oid,
    table_key, Relation, TableInfo, Types,
};
use crate::snapshot::copy_tables;
use crate::source::publication_tables;
use crate::source::IdentityStart;
use etcdsync_core::pipeline::CHANGES_PER_MESSAGE;
use etcdsync_core::{Change, Commit, Error, Message, Position, Result, TableId};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationEvent};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// What the stream needs besides the replication session.
pub struct Streamer {
    pub client: ReplicationClient,
    /// Catalog connection for Relation messages (types, keys of tables first seen here).
    pub catalog: Client,
    pub types: Types,
    /// Keys of the known tables (streamed, pending or being copied).
    pub keys: HashMap<TableId, Vec<String>>,
    /// Transactions whose commit record starts before this were already applied.
    pub resume: Lsn,
    pub valid: Valid,
    pub server_version: i32,
    /// Tables selected but not copied yet; their changes are skipped until their copy.
    pub pending: Vec<TableInfo>,
    /// Table identities by OID: renames, drops, the registry kept with the publication.
    pub identity: Identity,
    /// Partitioned tables: OID and leaf partitions as last copied ([`partition_fingerprint`]).
    pub partitions: HashMap<TableId, (u32, Vec<(u32, u32)>)>,
    /// The last Relation message of each relid.
    pub raw_relations: HashMap<u32, RelationMessage>,
    /// The columns (name, type) each table was last copied with ([`crate::relations::table_columns`]).
    pub shapes: HashMap<TableId, Vec<(String, u32)>>,
}

/// The stream's side of [`crate::identity`].
pub struct Identity {
    /// `None` when the publication is not managed (nothing is kept).
    registry: Option<Registry>,
    /// The registry changed in memory; it is written once the sink has acknowledged this position
    /// and no step it describes is outstanding.
    dirty_at: Option<Lsn>,
    /// Names whose keys are removed at the next point between transactions.
    retire_now: Vec<TableId>,
    /// Old names of renamed tables, removed by the next copy.
    retire_with_copy: Vec<TableId>,
    /// Dropped tables (or renamed out of the selection): their changes are ignored.
    ignored: HashSet<u32>,
    /// A Relation message named a table under an unknown name: refresh at once.
    refresh_soon: bool,
    /// Tables whose columns changed while streaming: copied again at the next refresh.
    reshaped: Vec<TableId>,
}

impl Identity {
    pub(crate) fn new(start: IdentityStart, from: Lsn) -> Self {
        Self {
            dirty_at: start.registry.as_ref().map(|_| from),
            registry: start.registry,
            retire_now: start.retire_now,
            retire_with_copy: start.retire_with_copy,
            ignored: start.ignored.into_iter().collect(),
            refresh_soon: false,
            reshaped: Vec::new(),
        }
    }
}

/// A copy of newly selected tables: a temporary slot's session holds the exported snapshot
/// until the stream reaches the slot's consistent point, where the copy is inserted.
struct TableCopy {
    point: Lsn,
    snapshot: String,
    session: ReplicationClient,
    tables: Vec<TableInfo>,
    /// Old names of renamed tables: the copy's clean-up removes their keys.
    retire: Vec<TableId>,
}

/// The open transaction.
struct Txn {
    final_lsn: Lsn,
    skip: bool,
    changes: usize,
    /// The WAL position of the last change record and how many changes it gave so far (a
    /// multi-row insert or a TRUNCATE of several tables is one record).
    last_record: (Lsn, u64),
}

impl Txn {
    fn new(final_lsn: Lsn, skip: bool) -> Self {
        Self {
            final_lsn,
            skip,
            changes: 0,
            last_record: (Lsn::ZERO, 0),
        }
    }

    /// [`etcdsync_core::Change::seq`]: the transaction's commit LSN, then the change record's
    /// offset before it and the change's index in that record — the same on every replay of
    /// the transaction, whatever is filtered.
    fn next_seq(&mut self, wal_start: Lsn) -> u128 {
        let index = if self.last_record.0 == wal_start {
            self.last_record.1 + 1
        } else {
            0
        };
        self.last_record = (wal_start, index);
        let from_end = self.final_lsn.as_u64().saturating_sub(wal_start.as_u64());
        // Later records are nearer the commit: invert so the place grows along the transaction.
        let offset = (1u64 << 40).saturating_sub(from_end.min((1 << 40) - 1));
        Change::seq_of(
            self.final_lsn.as_u64(),
            (offset << 24) | index.min((1 << 24) - 1),
        )
    }
}

enum Flow {
    Continue,
    /// The sink is gone or shutdown was requested while waiting on it.
    Stop,
}

/// The stream's own bookkeeping.
struct State {
    relations: HashMap<u32, Option<Relation>>,
    txn: Option<Txn>,
    batch: Vec<Change>,
    /// The last position handed to the pipeline (commit end, snapshot point or heartbeat).
    last: Lsn,
    pending_heartbeat: Option<Lsn>,
    last_progress: Instant,
    copy: Option<TableCopy>,
    /// Copied tables to move into the main publication once the copy's position is acknowledged.
    promote: Option<(Lsn, Vec<TableId>)>,
}

impl Streamer {
    pub async fn run(
        mut self,
        output: mpsc::Sender<Message>,
        mut acked: watch::Receiver<Option<Position>>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let mut st = State {
            relations: HashMap::new(),
            txn: None,
            batch: Vec::with_capacity(CHANGES_PER_MESSAGE),
            last: self.resume,
            pending_heartbeat: None,
            last_progress: Instant::now(),
            copy: None,
            promote: None,
        };
        let out = Out {
            output: &output,
            shutdown: &shutdown,
        };
        let refresh_every = self.valid.table_refresh_interval;
        let mut next_refresh = Instant::now() + refresh_every;
        'stream: loop {
            if std::mem::take(&mut self.identity.refresh_soon) {
                next_refresh = Instant::now();
            }
            if st.txn.is_none() && !self.identity.retire_now.is_empty() {
                if let Flow::Stop = self.retire(&mut st, &out).await {
                    break;
                }
            }
            if st.txn.is_none() && st.copy.is_none() && !self.pending.is_empty() {
                st.copy = Some(self.start_copy().await?);
            }
            let heartbeat_due = st.last_progress + self.valid.heartbeat_interval;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                changed = acked.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let position = acked.borrow_and_update().clone();
                    if let Some(position) = position {
                        let lsn = position::parse(&position)?;
                        self.client.update_applied_lsn(lsn);
                        if st.promote.as_ref().is_some_and(|(point, _)| lsn >= *point) {
                            if let Some((_, tables)) = st.promote.take() {
                                self.promote(&tables).await?;
                            }
                        }
                        self.write_registry_if_settled(lsn, &st).await?;
                    }
                }
                _ = tokio::time::sleep_until(next_refresh), if st.txn.is_none() => {
                    let copying: Vec<TableId> = st.copy.iter().flat_map(|c| c.tables.iter().map(|t| t.id.clone()))
                        .chain(st.promote.iter().flat_map(|(_, tables)| tables.iter().cloned()))
                        .collect();
                    self.check_publication(&copying).await?;
                    if self.valid.manage_publication {
                        self.reconcile_identity(&mut st).await?;
                        self.refresh().await?;
                        if self.pending.is_empty() && st.copy.is_none() {
                            // A renamed table that cannot be copied (no key yet): its old keys go now.
                            let old = std::mem::take(&mut self.identity.retire_with_copy);
                            self.identity.retire_now.extend(old);
                        }
                    }
                    next_refresh = Instant::now() + refresh_every;
                }
                _ = tokio::time::sleep_until(heartbeat_due), if st.pending_heartbeat.is_some() && st.txn.is_none() => {
                    if let Some(lsn) = st.pending_heartbeat.take().filter(|lsn| *lsn > st.last) {
                        if let Flow::Stop = out.send(Message::Heartbeat { position: position::format(lsn) }).await {
                            break;
                        }
                        st.last = lsn;
                    }
                    st.last_progress = Instant::now();
                }
                event = self.client.recv() => {
                    let event = event.map_err(wire("reading the replication stream"))?;
                    let Some(event) = event else {
                        return Err(Error::transient("the server ended the replication stream"));
                    };
                    match event {
                        ReplicationEvent::Begin { final_lsn, .. } => {
                            if st.copy.as_ref().is_some_and(|c| final_lsn >= c.point) {
                                if let Flow::Stop = self.insert_copy(&mut st, &out).await? {
                                    break;
                                }
                            }
                            st.txn = Some(Txn::new(final_lsn, final_lsn < self.resume));
                        }
                        ReplicationEvent::XLogData { data, wal_start, .. } => {
                            let message = decode(data).map_err(|e| Error::from(PgxError::Protocol(e.to_string())))?;
                            let mut changes = self.apply(message, &mut st.relations).await?;
                            if let Some(open) = st.txn.as_mut() {
                                for change in changes.iter_mut() {
                                    change.seq = Some(open.next_seq(wal_start));
                                }
                            }
                            let Some(open) = st.txn.as_mut() else { continue };
                            if open.skip || changes.is_empty() {
                                continue;
                            }
                            // tables awaiting their copy: the copy will hold these changes
                            let copy_point = st.copy.as_ref().map(|c| (c.point, &c.tables));
                            changes.retain(|c| {
                                let id = &c.table.id;
                                let pending = self.pending.iter().any(|t| &t.id == id);
                                let copying = copy_point.is_some_and(|(point, tables)| {
                                    open.final_lsn < point && tables.iter().any(|t| &t.id == id)
                                });
                                !pending && !copying
                            });
                            open.changes += changes.len();
                            for change in changes {
                                st.batch.push(change);
                                if st.batch.len() >= CHANGES_PER_MESSAGE {
                                    let full = std::mem::replace(&mut st.batch, Vec::with_capacity(CHANGES_PER_MESSAGE));
                                    if let Flow::Stop = out.send(Message::Changes(full)).await {
                                        break 'stream;
                                    }
                                }
                            }
                        }
                        ReplicationEvent::Commit { end_lsn, commit_time_micros, .. } => {
                            let open = st.txn.take();
                            let applied = open.as_ref().is_some_and(|t| !t.skip && t.changes > 0) && end_lsn > st.last;
                            if applied {
                                if !st.batch.is_empty() {
                                    let rest = std::mem::take(&mut st.batch);
                                    if let Flow::Stop = out.send(Message::Changes(rest)).await {
                                        break;
                                    }
                                }
                                let commit = Commit {
                                    position: position::format(end_lsn),
                                    commit_time: position::pg_time(commit_time_micros),
                                };
                                if let Flow::Stop = out.send(Message::Commit(commit)).await {
                                    break;
                                }
                                st.last = end_lsn;
                                st.last_progress = Instant::now();
                                st.pending_heartbeat = None;
                            } else {
                                st.batch.clear();
                                if end_lsn > st.last {
                                    st.pending_heartbeat = Some(end_lsn);
                                }
                            }
                        }
                        ReplicationEvent::KeepAlive { wal_end, .. } => {
                            if st.txn.is_none() {
                                if st.copy.as_ref().is_some_and(|c| wal_end >= c.point) {
                                    if let Flow::Stop = self.insert_copy(&mut st, &out).await? {
                                        break;
                                    }
                                }
                                if wal_end > st.last && st.pending_heartbeat.is_none_or(|p| wal_end > p) {
                                    st.pending_heartbeat = Some(wal_end);
                                }
                            }
                        }
                        ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
                    }
                }
            }
        }
        self.finish(output, acked).await
    }

    /// Shutdown (source contract): stop reading, close the output, wait for the sink's last
    /// acknowledgement, confirm it upstream, end the session.
    async fn finish(
        mut self,
        output: mpsc::Sender<Message>,
        acked: watch::Receiver<Option<Position>>,
    ) -> Result<()> {
        drop(output);
        if let Some(last) = etcdsync_core::source::SourceIo::final_ack(acked).await {
            let lsn = position::parse(&last)?;
            self.client.update_applied_lsn(lsn);
            let metrics = self.client.metrics();
            let deadline = Instant::now() + Duration::from_secs(3);
            while metrics.last_applied_lsn() < lsn
                && Instant::now() < deadline
                && self.client.is_running()
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tracing::info!(position = %last, "confirmed the last acknowledged position");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.client.shutdown()).await;
        Ok(())
    }

    /// The main publication must publish every streamed table, whole, with every operation:
    /// drift is repaired and the tables whose changes it may have filtered out are copied again
    /// (`manage_publication`), or stops the stream naming the fix.
    async fn check_publication(&mut self, copying: &[TableId]) -> Result<()> {
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
                let exists = self
                    .catalog
                    .query_one("SELECT to_regclass($1) IS NOT NULL", &[&quote_table(first)])
                    .await
                    .map_err(pg(format!("looking up table {first}")))?
                    .get::<_, bool>(0);
                return Err(Error::config(if exists {
                    format!(
                        "publication {publication} no longer publishes {first}, so its changes would not arrive: \
                         run ALTER PUBLICATION {} ADD TABLE {}; and `etcdsync verify --repair` once it runs again",
                        quote_ident(&publication),
                        quote_table(first)
                    )
                } else {
                    format!(
                        "table {first} was renamed or dropped; with `source.manage_publication: false` etcdsync \
                         does not follow it: run `etcdsync verify --repair` now (it removes the old name's keys and \
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
    async fn retire(&mut self, st: &mut State, out: &Out<'_>) -> Flow {
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
    async fn reconcile_identity(&mut self, st: &mut State) -> Result<()> {
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
    async fn write_registry_if_settled(&mut self, acked: Lsn, st: &State) -> Result<()> {
        let identity = &self.identity;
        let settled = identity.dirty_at.is_some_and(|at| acked >= at)
            && identity.retire_now.is_empty()
            && identity.retire_with_copy.is_empty()
            && self.pending.is_empty()
            && st.copy.is_none()
            && st.promote.is_none();
        if let (true, Some(registry)) = (settled, &identity.registry) {
            registry
                .write(&self.catalog, &self.valid.publication)
                .await?;
            self.identity.dirty_at = None;
        }
        Ok(())
    }

    /// Partitioned tables whose partitions were attached, detached or truncated since their copy:
    /// none of these sends row changes, so they are copied again.
    async fn repartitioned(&mut self, streamed: &[TableId]) -> Result<Vec<TableId>> {
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
    async fn refresh(&mut self) -> Result<()> {
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
    async fn start_copy(&mut self) -> Result<TableCopy> {
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
        let (point, snapshot) = crate::source::slot_answer(&rows)?;
        let tables = std::mem::take(&mut self.pending);
        for table in &tables {
            let columns = crate::relations::table_columns(&self.catalog, table.oid).await?;
            self.shapes.insert(table.id.clone(), columns);
            if let Some(fingerprint) = partition_fingerprint(&self.catalog, table.oid).await? {
                self.partitions
                    .insert(table.id.clone(), (table.oid, fingerprint));
            }
        }
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
    async fn insert_copy(&mut self, st: &mut State, out: &Out<'_>) -> Result<Flow> {
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
    async fn promote(&self, tables: &[TableId]) -> Result<()> {
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
    async fn unpublish(&self, table: &TableId) -> Result<()> {
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

    /// What a Relation message means for the stream: the table its changes are synced as, or
    /// `None` when they are ignored (a dropped table) or wait for a copy (a new name).
    async fn describe(&mut self, rel: &RelationMessage) -> Result<Option<Relation>> {
        if self.identity.ignored.contains(&rel.relid) {
            return Ok(None);
        }
        // Identity is the OID: until a renamed table is copied under its new name, its changes
        // stay with the name its keys have (the copy's clean-up removes them).
        let registered = self
            .identity
            .registry
            .as_ref()
            .and_then(|registry| registry.tables.get(&rel.relid))
            .cloned();
        let id = match registered {
            Some(id) => id,
            // No registry with an unmanaged publication: the table's name now (a Relation
            // message has the name as of the change), so a replay over a rename writes under
            // the name `verify --repair` left the rows at.
            None if !self.valid.manage_publication => {
                match table_by_oid(&self.catalog, rel.relid).await? {
                    Some((id, _)) => id,
                    None => {
                        // Dropped since: its changes have nowhere to go; `verify --repair`
                        // removes the keys it left.
                        tracing::warn!(table = %message_table(rel), "changes of a table dropped since are skipped; run `etcdsync verify --repair` to remove its keys");
                        return Ok(None);
                    }
                }
            }
            None => message_table(rel),
        };
        let key = match self.keys.get(&id) {
            Some(key) => Some(key.clone()),
            // A managed publication holds only known tables: an unknown name is a table renamed
            // while streaming. Its changes wait for its copy under the new name.
            None if self.valid.manage_publication => {
                tracing::debug!(table = %id, relid = rel.relid, "a published table under a new name; looking at the catalog now");
                self.identity.refresh_soon = true;
                None
            }
            None if self.valid.tables.matches(&id) => {
                let replident = match table_by_oid(&self.catalog, rel.relid).await? {
                    Some((_, replident)) => replident,
                    None => (rel.replica_identity as char).to_string(),
                };
                let key = table_key(
                    &self.catalog,
                    rel.relid,
                    &id,
                    &replident,
                    &self.valid.key_columns,
                    &self.valid.tables,
                )
                .await?;
                match &key {
                    Some(key) => {
                        self.keys.insert(id.clone(), key.clone());
                    }
                    None => {
                        return Err(Error::config(format!(
                            "table {id} has no usable key; with `source.manage_publication: false` etcdsync \
                             cannot copy it once it has one, so add a primary key and restart, or exclude it"
                        )))
                    }
                }
                key
            }
            None => None,
        };
        let Some(key) = key else {
            return Ok(None);
        };
        Ok(Some(
            Relation::from_message(
                rel,
                id,
                &key,
                &self.valid.tables,
                &mut self.types,
                &self.catalog,
            )
            .await?,
        ))
    }

    /// Turns one pgoutput message into changes of selected tables.
    async fn apply(
        &mut self,
        message: LogicalMessage,
        relations: &mut HashMap<u32, Option<Relation>>,
    ) -> Result<Vec<Change>> {
        let lookup =
            |relations: &HashMap<u32, Option<Relation>>, relid: u32| -> Result<Option<Relation>> {
                match relations.get(&relid) {
                    Some(found) => Ok(found.clone()),
                    None => Err(Error::fatal(format!(
                        "pgoutput sent a change of relation {relid} before describing it"
                    ))),
                }
            };
        Ok(match message {
            LogicalMessage::Relation(rel) => {
                let relid = rel.relid;
                let entry = self.describe(&rel).await?;
                // The columns as this message has them, against those the table was copied with.
                let now: Vec<(String, u32)> = rel
                    .columns
                    .iter()
                    .map(|c| (c.name.clone(), c.type_oid))
                    .collect();
                let reshaped = entry.as_ref().is_some_and(|described| {
                    self.shapes
                        .get(&described.schema.id)
                        .is_some_and(|copied| *copied != now)
                });
                let entry = match (reshaped, entry) {
                    // Columns added, dropped, renamed or retyped: the rows etcd holds have the old
                    // shape and no row change will rewrite them, so the table is copied again (its
                    // changes wait for the copy, which holds them).
                    (true, Some(rel)) if self.valid.manage_publication => {
                        tracing::warn!(table = %rel.schema.id, "the table's columns changed; copying it again");
                        // Out of the publication at once: a restart before the copy finds the
                        // table unpublished and copies it then.
                        self.unpublish(&rel.schema.id).await?;
                        self.identity.reshaped.push(rel.schema.id.clone());
                        self.identity.refresh_soon = true;
                        None
                    }
                    (reshaped, entry) => {
                        if !self.valid.manage_publication {
                            warn_unfollowed(self.raw_relations.get(&relid), &rel, reshaped);
                        }
                        entry
                    }
                };
                // Kept to describe the relation again when its table is copied (after a rename,
                // or back into the selection): pgoutput sends it only once per definition.
                self.raw_relations.insert(relid, rel);
                relations.insert(relid, entry);
                Vec::new()
            }
            LogicalMessage::Insert { relid, new } => match lookup(relations, relid)? {
                Some(rel) => vec![Change::insert(
                    rel.schema.clone(),
                    rel.row(&new, false, false)?,
                )],
                None => Vec::new(),
            },
            LogicalMessage::Update { relid, old, new } => match lookup(relations, relid)? {
                Some(rel) => {
                    let old = match old {
                        Some(old) => Some(rel.row(&old.values, true, !old.full)?),
                        None => None,
                    };
                    let mut row = rel.row(&new, false, false)?;
                    if let Some(old) = &old {
                        fill_unchanged_from_old(&mut row, old);
                    }
                    if let Some(&column) = rel
                        .schema
                        .key
                        .iter()
                        .find(|&&i| matches!(row.get(i), Some(etcdsync_core::Value::Unchanged)))
                    {
                        // A key value stored out of line (over ~2 kB) is sent as "unchanged" and
                        // the row cannot be found by it.
                        return Err(Error::config(format!(
                            "table {}: an update left key column {} TOASTed and unsent, so the row's key is \
                             unknown; run ALTER TABLE {} REPLICA IDENTITY FULL (updates then carry the old row \
                             whole), then take a fresh snapshot (delete the checkpoint key) to get past this one",
                            rel.schema.id,
                            rel.schema.columns[column].name,
                            quote_table(&rel.schema.id)
                        )));
                    }
                    vec![Change::update(rel.schema.clone(), old, row)]
                }
                None => Vec::new(),
            },
            LogicalMessage::Delete { relid, old } => match lookup(relations, relid)? {
                Some(rel) => vec![Change::delete(
                    rel.schema.clone(),
                    rel.row(&old.values, true, !old.full)?,
                )],
                None => Vec::new(),
            },
            LogicalMessage::Truncate { relids, .. } => {
                let mut out = Vec::new();
                for relid in relids {
                    if let Some(rel) = lookup(relations, relid)? {
                        out.push(Change::truncate(rel.schema.clone()));
                    }
                }
                out
            }
            LogicalMessage::Begin { .. }
            | LogicalMessage::Commit { .. }
            | LogicalMessage::Origin { .. }
            | LogicalMessage::Type { .. }
            | LogicalMessage::Message { .. } => Vec::new(),
        })
    }
}

/// Unchanged TOASTed columns of an update take the old tuple's value when pgoutput sent one
/// (REPLICA IDENTITY FULL logs the old row whole), so the sink needs no stored value for them.
fn fill_unchanged_from_old(row: &mut [etcdsync_core::Value], old: &[etcdsync_core::Value]) {
    use etcdsync_core::Value;
    for (new, old) in row.iter_mut().zip(old) {
        if matches!(new, Value::Unchanged) && !matches!(old, Value::Missing | Value::Unchanged) {
            *new = old.clone();
        }
    }
}

/// Sends to the pipeline without blocking shutdown.
struct Out<'a> {
    output: &'a mpsc::Sender<Message>,
    shutdown: &'a CancellationToken,
}

impl Out<'_> {
    async fn send(&self, message: Message) -> Flow {
        tokio::select! {
            sent = self.output.send(message) => if sent.is_ok() { Flow::Continue } else { Flow::Stop },
            _ = self.shutdown.cancelled() => Flow::Stop,
        }
    }
}

/// With an unmanaged publication a rename or a column change is not followed by a copy: the
/// keys etcd holds keep the old name or columns until `verify --repair` (docs/operations.md).
fn warn_unfollowed(before: Option<&RelationMessage>, now: &RelationMessage, reshaped: bool) {
    let renamed = before.filter(|b| b.namespace != now.namespace || b.name != now.name);
    if renamed.is_none() && !reshaped {
        return;
    }
    let what = match renamed {
        Some(b) => format!("was renamed from {}.{}", b.namespace, b.name),
        None => "had its columns changed".into(),
    };
    tracing::warn!(
        table = %message_table(now),
        "the table {what}; with `source.manage_publication: false` etcdsync does not copy it again, so etcd keeps keys or columns the table no longer has: run `etcdsync verify --repair`, or set `manage_publication: true`"
    );
}
