//! `PgxSource`: `build` connects, checks prerequisites (wal_level, REPLICATION, usable keys),
//! keeps the publication in step and decides between snapshot and resume; `run` takes the
//! snapshot on a slot created with an exported snapshot (DESIGN §6) and then streams (§5).

use crate::config::{PgxConfig, SnapshotMode, Valid};
use crate::connect::{connect, replication_config};
use crate::error::{pg, wire};
use crate::identity::IdentityStart;
use crate::identity::Registry;
use crate::position;
use crate::prereq::{server_facts, slot_state, SlotState};
use crate::publication::enforce;
use crate::publication::publication_tables;
use crate::relations::{quote_ident, quote_table, resolve_tables, TableInfo, Types};
use crate::replication::Streamer;
use crate::slot::slot_answer;
use crate::snapshot::copy_tables;
use etcdsync_core::leadership::Fence;
use etcdsync_core::source::{RowFetcher, Source, SourceContext, SourceIo};
use etcdsync_core::telemetry;
use etcdsync_core::{async_trait, Error, Message, Result, TableId};
use pgwire_replication::{Lsn, ReplicationClient};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio_postgres::Client;

/// What `run` starts with.
enum Plan {
    /// No checkpoint: (re)create the slot with an exported snapshot and copy every table.
    Snapshot,
    /// Stream from this position (a checkpoint, or the slot's position with `snapshot: never`).
    Stream { from: Lsn },
}

pub struct PgxSource {
    valid: Valid,
    catalog: Client,
    server_version: i32,
    /// Streamed tables (copied by the initial snapshot, or already published).
    tables: Vec<TableInfo>,
    /// Newly selected tables awaiting their copy.
    pending: Vec<TableInfo>,
    plan: Plan,
    /// The pipeline's leadership, checked before disturbing the slot (DESIGN §7).
    fence: Option<Fence>,
    /// Table identities ([`crate::identity`]) and what they asked for at start.
    identity: IdentityStart,
    /// Each table's columns as read at build ([`crate::relations::table_columns`]).
    shapes: HashMap<TableId, crate::relations::TableColumns>,
    /// Streamed transactions not yet confirmed visible, for the row fetcher.
    commits: std::sync::Arc<crate::visibility::Commits>,
}

pub async fn build(config: &PgxConfig, cx: SourceContext) -> Result<Box<dyn Source>> {
    let valid = config.validated(&cx.name)?;
    let catalog = connect(&valid, "catalog").await?;
    let server_version = check_server(&catalog, &valid).await?;

    let tables = resolve_tables(&catalog, &valid).await?;
    if tables.is_empty() {
        tracing::warn!(include = ?valid.tables.include, "no table matches source.tables; streaming tables created later only");
    }
    let mut slot = slot_state(&catalog, &valid.slot).await?;
    if let Some(problem) = slot.as_ref().and_then(|s| s.foreign_problem(&valid)) {
        return Err(problem.into_error());
    }
    if let (true, Some(fence)) = (
        slot.as_ref().is_some_and(|s| s.held_by_us(&valid)),
        &cx.fence,
    ) {
        slot = take_over_slot(&catalog, &valid, fence).await?;
    }
    let plan = match (&cx.resume, valid.snapshot) {
        (Some(checkpoint), _) => {
            let from = position::parse(&checkpoint.position)?;
            let Some(slot) = slot else {
                return Err(Error::fatal(format!(
                    "replication slot `{}` is gone, so changes after the checkpoint {} are lost to etcdsync; \
                     delete the checkpoint key (under the sink's meta prefix) to take a fresh snapshot",
                    valid.slot, checkpoint.position
                )));
            };
            if let Some(confirmed) = slot.confirmed_flush {
                if confirmed > from {
                    return Err(Error::fatal(format!(
                        "replication slot `{}` has confirmed {} but etcd's checkpoint is only {}: the changes in \
                         between cannot be replayed (was etcd restored from a backup?); delete the checkpoint key \
                         to take a fresh snapshot",
                        valid.slot,
                        confirmed.to_pg_string(),
                        checkpoint.position
                    )));
                }
            }
            Plan::Stream { from }
        }
        (None, SnapshotMode::Initial) => Plan::Snapshot,
        (None, SnapshotMode::Never) => {
            let from = match slot.and_then(|s| s.confirmed_flush) {
                Some(lsn) => lsn,
                None => create_slot_sql(&catalog, &valid.slot).await?,
            };
            Plan::Stream { from }
        }
    };
    let resuming_with_copies = cx.resume.is_some() && valid.snapshot == SnapshotMode::Initial;
    let snapshot_first = matches!(plan, Plan::Snapshot);
    // Read before any copy's export: a column changed after it is seen as a change.
    let mut shapes = HashMap::new();
    for table in &tables {
        let columns = crate::relations::table_columns(&catalog, table.oid).await?;
        shapes.insert(table.id.clone(), columns);
    }
    let (identity, recopy) =
        start_identity(&catalog, &valid, &tables, &shapes, snapshot_first).await?;
    let pending = sync_publications(
        &catalog,
        &valid,
        &tables,
        resuming_with_copies,
        server_version,
        &recopy,
    )
    .await?;
    if !pending.is_empty() {
        let names: Vec<String> = pending.iter().map(|t| t.id.to_string()).collect();
        tracing::info!(tables = ?names, "newly selected tables will be copied, then streamed");
    }
    let tables = tables
        .into_iter()
        .filter(|t| !pending.iter().any(|p| p.id == t.id))
        .collect();
    Ok(Box::new(PgxSource {
        valid,
        catalog,
        server_version,
        tables,
        pending,
        plan,
        fence: cx.fence,
        identity,
        shapes,
        commits: Default::default(),
    }))
}

/// Reads the table registry of a managed publication and compares it with the catalog: renamed
/// tables are copied again under their new names (returned, to be made pending), dropped ones
/// and ones renamed out of the selection have their keys removed. Without a registry yet, one is
/// started from the tables resolved now.
async fn start_identity(
    catalog: &Client,
    valid: &Valid,
    tables: &[TableInfo],
    shapes: &HashMap<TableId, crate::relations::TableColumns>,
    snapshot_first: bool,
) -> Result<(IdentityStart, Vec<TableId>)> {
    // Without copies (`snapshot: never`) a renamed table's old keys go at once.
    let copies = valid.snapshot == SnapshotMode::Initial;
    if !valid.manage_publication {
        return Ok((IdentityStart::default(), Vec::new()));
    }
    let mut current = Registry {
        tables: tables.iter().map(|t| (t.oid, t.id.clone())).collect(),
        ..Registry::default()
    };
    for table in tables {
        let columns = shapes.get(&table.id).cloned().unwrap_or_default();
        current.columns.insert(
            table.oid,
            crate::identity::synced_columns(&valid.tables, &table.id, columns),
        );
    }
    let Some(mut registry) = Registry::read(catalog, &valid.publication).await? else {
        return Ok((
            IdentityStart {
                registry: Some(current),
                ..IdentityStart::default()
            },
            Vec::new(),
        ));
    };
    let found = registry.reconcile(catalog, &valid.tables).await?;
    let mut start = IdentityStart::default();
    let mut recopy = Vec::new();
    for oid in &found.gone {
        registry.tables.remove(oid);
    }
    for name in &found.retire {
        tracing::warn!(table = %name, "the table was dropped or renamed out of the selection; removing its keys");
    }
    start.retire_now.extend(found.retire);
    start.ignored.extend(found.gone);
    for table in found.reshaped {
        tracing::warn!(table = %table, "the table's columns changed since its copy; copying it again");
        if copies && !snapshot_first && !recopy.contains(&table) {
            recopy.push(table);
        }
    }
    for (oid, old, new) in found.renamed {
        tracing::warn!(from = %old, to = %new, "the table was renamed; its keys move to the new name");
        registry.tables.remove(&oid);
        if snapshot_first || !copies {
            start.retire_now.push(old);
        } else {
            start.retire_with_copy.push(old);
            recopy.push(new);
        }
    }
    // A selected table the registry does not know under its OID (it left the selection and came
    // back while etcdsync was stopped, or its copy was not recorded) is copied again.
    for table in tables {
        if !registry.tables.contains_key(&table.oid)
            && !start.ignored.contains(&table.oid)
            && copies
            && !snapshot_first
            && !recopy.contains(&table.id)
        {
            recopy.push(table.id.clone());
        }
        start.ignored.retain(|oid| *oid != table.oid);
    }
    // Entries from before attnums were kept take them from now on where the columns match.
    for (oid, now) in &current.columns {
        if let Some(recorded) = registry.columns.get_mut(oid) {
            if recorded.attnums.is_empty() && recorded.shape == now.shape {
                recorded.attnums.clone_from(&now.attnums);
            }
        }
    }
    if snapshot_first {
        // The snapshot writes every selected table; the registry is what it copies.
        start
            .retire_now
            .retain(|name| !current.tables.values().any(|t| t == name));
        registry = current;
    }
    start.registry = Some(registry);
    Ok((start, recopy))
}

/// Server prerequisites (`prereq`): the first that fails stops the start with its fix.
/// Returns `server_version_num`.
async fn check_server(client: &Client, valid: &Valid) -> Result<i32> {
    let facts = server_facts(client).await?;
    if let Some(problem) = facts
        .start_problem()
        .or_else(|| facts.sync_standby_problem(&valid.application_name))
    {
        return Err(Error::config(format!(
            "{}: {}: {}",
            valid.display_url, problem.detail, problem.fix
        )));
    }
    if let Some(risk) = facts.sync_standby_risk(&valid.application_name) {
        tracing::warn!("{risk}");
    }
    Ok(facts.version_num)
}

async fn create_slot_sql(client: &Client, slot: &str) -> Result<Lsn> {
    let row = client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .map_err(pg(format!("creating replication slot {slot}")))?;
    let text: String = row.get(0);
    Lsn::parse(&text).map_err(|e| Error::fatal(format!("slot {slot} reported LSN `{text}`: {e}")))
}

/// Ends the session of an earlier instance of this pipeline that still holds the slot (a
/// deposed leader frozen mid-stream, or a connection not yet closed): only the leader builds a
/// fenced source (DESIGN §7), so that session can only be stale. Returns the slot as it is
/// afterwards.
async fn take_over_slot(
    client: &Client,
    valid: &Valid,
    fence: &Fence,
) -> Result<Option<SlotState>> {
    for attempt in 0..50 {
        let state = slot_state(client, &valid.slot).await?;
        let Some(pid) = state
            .as_ref()
            .filter(|s| s.held_by_us(valid))
            .and_then(|s| s.active_pid)
        else {
            return Ok(state);
        };
        if attempt == 0 {
            tracing::warn!(
                slot = %valid.slot,
                pid,
                "the replication slot is held by an earlier session of this pipeline (a deposed leader?); \
                 ending it with pg_terminate_backend"
            );
        }
        telemetry::get().retry("source");
        if attempt % 10 == 0 {
            fence.check("ending the session that holds the replication slot")?;
            client
                .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .map_err(pg(format!(
                    "ending process {pid}, which holds replication slot {} (grant this role pg_signal_backend)",
                    valid.slot
                )))?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::transient(format!(
        "replication slot `{}` is still held by an earlier session of this pipeline 5 s after ending it",
        valid.slot
    )))
}

/// Drops the slot, waiting a little for a previous session of ours that still holds it.
async fn drop_slot(client: &Client, slot: &str) -> Result<()> {
    for attempt in 0..20 {
        match slot_state(client, slot).await? {
            None => return Ok(()),
            Some(state) if state.active => {
                if attempt == 19 {
                    return Err(Error::transient(format!(
                        "replication slot `{slot}` is in use by another session (another etcdsync with the same name?)"
                    )));
                }
                telemetry::get().retry("source");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Some(_) => {
                client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await
                    .map_err(pg(format!(
                        "dropping replication slot {slot} for a fresh snapshot"
                    )))?;
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Partitioned tables' changes are published under the partitioned table's name.
const VIA_ROOT: &str = " WITH (publish_via_partition_root = true)";

/// Creates a publication if missing, or makes its table list equal to `wanted`.
async fn set_publication(client: &Client, name: &str, wanted: &BTreeSet<TableId>) -> Result<()> {
    let list = |set: &BTreeSet<TableId>| set.iter().map(quote_table).collect::<Vec<_>>().join(", ");
    let sql = match publication_tables(client, name).await? {
        None if wanted.is_empty() => format!("CREATE PUBLICATION {}{VIA_ROOT}", quote_ident(name)),
        None => format!(
            "CREATE PUBLICATION {} FOR TABLE {}{VIA_ROOT}",
            quote_ident(name),
            list(wanted)
        ),
        Some(current) if &current == wanted => return Ok(()),
        Some(current) if wanted.is_empty() => {
            format!(
                "ALTER PUBLICATION {} DROP TABLE {}",
                quote_ident(name),
                list(&current)
            )
        }
        Some(_) => format!(
            "ALTER PUBLICATION {} SET TABLE {}",
            quote_ident(name),
            list(wanted)
        ),
    };
    client.batch_execute(&sql).await.map_err(pg(format!(
        "updating publication {name} to the selected tables (or set `source.manage_publication: false`)"
    )))?;
    tracing::info!(publication = %name, tables = wanted.len(), "publication tables set");
    Ok(())
}

/// Brings the publications in step with the selection (issue 3 §2, §5). With a snapshot ahead
/// (or `snapshot: never`) every selected table goes into the publication. When resuming, tables
/// already published stay; newly selected ones go into the pending publication and are returned:
/// they are copied before they are streamed (a crash before that copy is acknowledged leaves
/// them pending, so the copy is redone).
async fn sync_publications(
    client: &Client,
    valid: &Valid,
    tables: &[TableInfo],
    resuming_with_copies: bool,
    server_version: i32,
    recopy: &[TableId],
) -> Result<Vec<TableInfo>> {
    let wanted: BTreeSet<TableId> = tables.iter().map(|t| t.id.clone()).collect();
    if !valid.manage_publication {
        match publication_tables(client, &valid.publication).await? {
            None => set_publication(client, &valid.publication, &wanted).await?,
            Some(current) => {
                let all_tables =
                    crate::publication::is_all_tables(client, &valid.publication).await?;
                if let Some(problem) = crate::publication::unpublished(
                    &valid.publication,
                    &wanted,
                    &current,
                    all_tables,
                ) {
                    return Err(problem.into_error());
                }
                let published: Vec<TableId> = current.into_iter().collect();
                enforce(
                    client,
                    &valid.publication,
                    &published,
                    server_version,
                    false,
                )
                .await?;
            }
        }
        return Ok(Vec::new());
    }
    let published = if resuming_with_copies {
        let current = publication_tables(client, &valid.publication)
            .await?
            .unwrap_or_default();
        current.intersection(&wanted).cloned().collect()
    } else {
        wanted.clone()
    };
    let mut pending: BTreeSet<TableId> = wanted.difference(&published).cloned().collect();
    let mut published = published;
    if resuming_with_copies {
        // Changes a drifted publication filtered out are not in etcd: copy those tables again.
        let current: Vec<TableId> = published.iter().cloned().collect();
        let drifted = enforce(client, &valid.publication, &current, server_version, true).await?;
        for table in drifted.into_iter().chain(recopy.iter().cloned()) {
            if published.remove(&table) {
                pending.insert(table);
            }
        }
    }
    set_publication(client, &valid.pending_publication(), &pending).await?;
    set_publication(client, &valid.publication, &published).await?;
    let pending_now: Vec<TableId> = pending.iter().cloned().collect();
    enforce(
        client,
        &valid.pending_publication(),
        &pending_now,
        server_version,
        true,
    )
    .await?;
    let published_now: Vec<TableId> = published.iter().cloned().collect();
    enforce(
        client,
        &valid.publication,
        &published_now,
        server_version,
        true,
    )
    .await?;
    Ok(tables
        .iter()
        .filter(|t| pending.contains(&t.id))
        .cloned()
        .collect())
}

impl PgxSource {
    /// Creates the slot with an exported snapshot on a replication session that stays open
    /// while the workers copy; returns the consistent point, or `None` when stopped.
    async fn snapshot(&mut self, io: &SourceIo) -> Result<Option<Lsn>> {
        if let Some(fence) = &self.fence {
            fence.check("dropping and re-creating the replication slot for a snapshot")?;
        }
        drop_slot(&self.catalog, &self.valid.slot).await?;
        let config = replication_config(&self.valid, Lsn::ZERO, Lsn::ZERO)?;
        let mut session = ReplicationClient::connect_gated(config)
            .await
            .map_err(wire("opening the replication session"))?;
        let rows = session
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
                self.valid.slot
            ))
            .await
            .map_err(wire(format!(
                "creating replication slot {}",
                self.valid.slot
            )))?;
        let (consistent, snapshot) = slot_answer(&rows)?;
        let point = consistent.to_pg_string();
        tracing::info!(slot = %self.valid.slot, consistent_point = %point, snapshot = %snapshot, tables = self.tables.len(), "snapshot started");

        let tables: Vec<TableId> = self.tables.iter().map(|t| t.id.clone()).collect();
        if io.send(Message::SnapshotStarted { tables }).await.is_err() {
            return Ok(None);
        }
        let done = copy_tables(
            &self.valid,
            &self.tables,
            &snapshot,
            self.server_version,
            &io.output,
            &io.shutdown,
        )
        .await?;
        // The exported snapshot is no longer needed: end the session that holds it.
        drop(session);
        if !done {
            return Ok(None);
        }
        if io
            .send(Message::SnapshotFinished {
                position: position::format(consistent),
            })
            .await
            .is_err()
        {
            return Ok(None);
        }
        tracing::info!(consistent_point = %point, "snapshot finished; streaming");
        Ok(Some(consistent))
    }
}

/// Reads rows by key for the sink ([`RowFetcher`]) on a connection of its own.
struct PgxFetcher {
    inspector: tokio::sync::Mutex<crate::inspect::PgxInspector>,
    commits: std::sync::Arc<crate::visibility::Commits>,
}

#[async_trait]
impl RowFetcher for PgxFetcher {
    async fn fetch(
        &self,
        table: &etcdsync_core::TableSchema,
        key: &[etcdsync_core::Value],
    ) -> Result<Option<Vec<(String, etcdsync_core::Value)>>> {
        self.inspector
            .lock()
            .await
            .fetch_row(&table.id, key, None)
            .await
    }

    async fn fetch_for(
        &self,
        table: &etcdsync_core::TableSchema,
        key: &[etcdsync_core::Value],
        seq: Option<u128>,
    ) -> Result<Option<Vec<(String, etcdsync_core::Value)>>> {
        let mut inspector = self.inspector.lock().await;
        // The high half of a change's seq is its transaction's commit LSN (replication.rs).
        let final_lsn = seq.map(|seq| (seq >> 64) as u64);
        if let Some(final_lsn) = final_lsn {
            if let Some(xid) = self.commits.unconfirmed(final_lsn) {
                inspector.wait_visible(xid).await?;
                self.commits.confirmed(final_lsn);
            }
        }
        inspector.fetch_row(&table.id, key, final_lsn).await
    }
}

#[async_trait]
impl Source for PgxSource {
    fn fetcher(&self) -> Option<std::sync::Arc<dyn RowFetcher>> {
        Some(std::sync::Arc::new(PgxFetcher {
            inspector: tokio::sync::Mutex::new(crate::inspect::PgxInspector::new(
                self.valid.clone(),
            )),
            commits: std::sync::Arc::clone(&self.commits),
        }))
    }

    async fn run(mut self: Box<Self>, io: SourceIo) -> Result<()> {
        // Before the snapshot's export: a partition attached after it is seen as a change.
        let mut partitions = HashMap::new();
        let shapes = std::mem::take(&mut self.shapes);
        for table in self.tables.iter().chain(&self.pending) {
            if let Some(fingerprint) =
                crate::relations::partition_fingerprint(&self.catalog, table.oid).await?
            {
                partitions.insert(table.id.clone(), (table.oid, fingerprint));
            }
        }

        // What the slot may confirm at once: a resumed checkpoint is in the sink already; a
        // fresh snapshot's consistent point is not until the sink acknowledges it (DESIGN §1).
        let (from, durable) = match self.plan {
            Plan::Stream { from } => (from, from),
            Plan::Snapshot => match self.snapshot(&io).await? {
                Some(point) => (point, Lsn::ZERO),
                None => {
                    drop(io.output);
                    let _ = SourceIo::final_ack(io.acked).await;
                    return Ok(());
                }
            },
        };
        let config = replication_config(&self.valid, from, durable)?;
        let client = ReplicationClient::connect(config)
            .await
            .map_err(wire("starting replication"))?;
        let keys: HashMap<TableId, Vec<String>> = self
            .tables
            .iter()
            .chain(&self.pending)
            .map(|t| (t.id.clone(), t.key.clone()))
            .collect();
        let mut identity = self.identity;
        if let (Some(registry), Plan::Snapshot) = (&mut identity.registry, &self.plan) {
            registry.tables = self.tables.iter().map(|t| (t.oid, t.id.clone())).collect();
        }
        let streamer = Streamer {
            client,
            catalog: self.catalog,
            types: Types::default(),
            keys,
            resume: from,
            valid: self.valid.clone(),
            server_version: self.server_version,
            pending: self.pending,
            identity: crate::replication::Identity::new(identity, from),
            partitions,
            raw_relations: HashMap::new(),
            shapes,
            commits: self.commits,
        };
        tracing::info!(slot = %self.valid.slot, from = %from.to_pg_string(), "streaming");
        streamer.run(io.output, io.acked, io.shutdown).await
    }
}
