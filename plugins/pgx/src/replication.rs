//! Streaming from the slot (DESIGN §1, §5): pgoutput v1 changes become `Changes` … `Commit` per
//! source transaction, transactions at or before the resume position are skipped, acknowledged
//! positions are confirmed upstream (`flush_lsn`), and keepalives while no transaction is open
//! become rate-limited `Heartbeat`s so an idle or filtered database does not retain WAL. Tables
//! selected while running are copied at a temporary slot's consistent point and then streamed.

use crate::config::Valid;
use crate::decode::{decode, LogicalMessage, RelationMessage};
use crate::error::{pg, wire, PgxError};
use crate::identity::IdentityStart;
use crate::identity::Registry;
use crate::position;
use crate::publication::publication_tables;
use crate::relations::{
    message_table, partition_fingerprint, quote_ident, quote_table, selected_tables, table_by_oid,
    table_key, Relation, TableInfo, Types,
};
use crate::snapshot::copy_tables;
use etcdsync_core::pipeline::Chunk;
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
    pub shapes: HashMap<TableId, crate::relations::TableColumns>,
    /// Streamed transactions by commit LSN, for the row fetcher ([`crate::visibility`]).
    pub commits: std::sync::Arc<crate::visibility::Commits>,
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
    /// Its top-level xid, recorded for the row fetcher with its first change.
    xid: Option<u32>,
    skip: bool,
    changes: usize,
    /// The WAL position of the last change record and how many changes it gave so far (a
    /// multi-row insert or a TRUNCATE of several tables is one record).
    last_record: (Lsn, u64),
}

impl Txn {
    fn new(final_lsn: Lsn, xid: u32, skip: bool) -> Self {
        Self {
            final_lsn,
            xid: Some(xid),
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
    batch: Chunk,
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
            batch: Chunk::default(),
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
                        ReplicationEvent::Begin { final_lsn, xid, .. } => {
                            if st.copy.as_ref().is_some_and(|c| final_lsn >= c.point) {
                                if let Flow::Stop = self.insert_copy(&mut st, &out).await? {
                                    break;
                                }
                            }
                            st.txn = Some(Txn::new(final_lsn, xid, final_lsn < self.resume));
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
                            // Only transactions with changes are remembered: reads are for them,
                            // and few are between the stream and the reads at any time.
                            if let Some(xid) = open.xid.take() {
                                self.commits.begun(open.final_lsn.as_u64(), xid);
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
                                if st.batch.push(change) {
                                    let full = st.batch.take();
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
                                    let rest = st.batch.take();
                                    if let Flow::Stop = out.send(Message::Changes(rest)).await {
                                        break;
                                    }
                                }
                                let commit = Commit {
                                    position: position::format(end_lsn),
                                    commit_time: position::pg_time(commit_time_micros),
                                };
                                etcdsync_core::telemetry::get().commit_decoded(commit.commit_time);
                                if let Flow::Stop = out.send(Message::Commit(commit)).await {
                                    break;
                                }
                                st.last = end_lsn;
                                st.last_progress = Instant::now();
                                st.pending_heartbeat = None;
                            } else {
                                st.batch.take();
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
                        tracing::warn!(table = %message_table(rel), "changes of a table dropped since are skipped; run `etcdsync verify --repair --delete-unselected` to remove its keys");
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
                        .is_some_and(|copied| copied.shape != now)
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
        "the table {what}; with `source.manage_publication: false` etcdsync does not copy it again, so etcd keeps keys or columns the table no longer has: run `etcdsync verify --repair --delete-unselected`, or set `manage_publication: true`"
    );
}

mod tables;
