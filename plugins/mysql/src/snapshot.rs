//! The consistent snapshot without mysqldump (DESIGN §6): MariaDB with one worker uses
//! `START TRANSACTION WITH CONSISTENT SNAPSHOT` + `binlog_snapshot_file/position` (no lock);
//! otherwise a brief FLUSH TABLES WITH READ LOCK while every worker opens its snapshot. Rows are
//! streamed (binary protocol) in chunks of `CHANGES_PER_MESSAGE`, never a whole table in memory.
//! Per-table progress goes to `telemetry` (estimate from `information_schema.TABLES.TABLE_ROWS`,
//! rows per chunk sent).

use crate::columns::{read_hints, ColumnHints};
use crate::config::ValidMysql;
use crate::connect::connect;
use crate::decode::{kind_from_information_schema, snapshot_value, with_hint, Kind};
use crate::error::{MysqlError, Result};
use crate::position::{BinlogPos, GtidPos, GtidSet, Gtids, SourcePosition};
use crate::prereq::{Flavour, ServerInfo};
use crate::tablemap::key_column_excluded;
use etcdsync_core::change::Column;
use etcdsync_core::pipeline::Chunk;
use etcdsync_core::tables::TableSelection;
use etcdsync_core::{telemetry, Change, Message, TableId, TableSchema};
use futures::StreamExt;
use mysql_async::prelude::*;
use mysql_async::{Conn, Row};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{mpsc, Mutex};

/// One table to copy.
#[derive(Debug, Clone)]
pub struct SnapshotTable {
    pub schema: Arc<TableSchema>,
    pub kinds: Vec<Kind>,
    /// `SELECT <kept columns> FROM <table>`: the snapshot's statement, which `etcdsync verify`
    /// extends with a key range, order and limit.
    pub select: String,
    /// `information_schema.TABLES.TABLE_ROWS` (an estimate for InnoDB), for progress.
    pub estimated_rows: Option<u64>,
}

pub use crate::statement::{quote_ident, quote_table};

/// Whether a table's primary key can make etcd keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    Usable,
    /// The table has no primary key (`schema.key` is empty).
    Missing,
    /// `exclude_columns` removes this primary-key column (`schema.key` is empty).
    Excluded(String),
}

/// A selected base table and its row estimate, sorted by id.
pub async fn selected_tables(
    conn: &mut Conn,
    selection: &TableSelection,
) -> Result<Vec<(TableId, Option<u64>)>> {
    let all: Vec<(String, String, Option<u64>)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_ROWS FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' \
             AND TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') \
             ORDER BY TABLE_SCHEMA, TABLE_NAME",
        )
        .await
        .map_err(|e| MysqlError::driver("listing tables", e))?;
    let mut tables: Vec<(TableId, Option<u64>)> = all
        .into_iter()
        .map(|(schema, table, rows)| (TableId::new(schema, table), rows))
        .filter(|(id, _)| selection.matches(id))
        .collect();
    tables.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(tables)
}

/// Lists the selected base tables with their columns (excluded ones removed) and primary keys.
/// Tables without a primary key are skipped with a warning (DESIGN §2 needs a key).
pub async fn list_tables(
    conn: &mut Conn,
    selection: &TableSelection,
    flavour: Flavour,
) -> Result<Vec<SnapshotTable>> {
    let mut tables = Vec::new();
    for (id, estimated_rows) in selected_tables(conn, selection).await? {
        let (table, key) = describe(conn, &id, selection, flavour, estimated_rows).await?;
        match key {
            KeyState::Usable => tables.push(table),
            KeyState::Missing => {
                tracing::warn!(table = %id, "table has no primary key; it is not synced (add a PRIMARY KEY or exclude it)");
            }
            KeyState::Excluded(column) => {
                return Err(MysqlError::Config(key_column_excluded(&id, &column)))
            }
        }
    }
    Ok(tables)
}

/// One table as the snapshot reads it: kept columns, their kinds, the primary key in index
/// order (empty unless [`KeyState::Usable`]).
pub async fn describe(
    conn: &mut Conn,
    id: &TableId,
    selection: &TableSelection,
    flavour: Flavour,
    estimated_rows: Option<u64>,
) -> Result<(SnapshotTable, KeyState)> {
    let columns: Vec<(String, String, String)> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (&id.schema, &id.table),
        )
        .await
        .map_err(|e| MysqlError::driver(format!("reading the columns of {id}"), e))?;
    let key = if columns.is_empty() {
        Vec::new()
    } else {
        table_key(conn, id).await?
    };
    let kept: Vec<&(String, String, String)> = columns
        .iter()
        .filter(|(name, _, _)| !selection.column_excluded(id, name))
        .collect();
    let mut state = if key.is_empty() {
        KeyState::Missing
    } else {
        KeyState::Usable
    };
    let mut key_index = Vec::with_capacity(key.len());
    for k in &key {
        match kept.iter().position(|(name, _, _)| name == k) {
            Some(i) => key_index.push(i),
            None => {
                state = KeyState::Excluded(k.clone());
                key_index.clear();
                break;
            }
        }
    }
    let hints = match flavour {
        Flavour::MariaDb => read_hints(conn, id).await?,
        Flavour::MySql => ColumnHints::default(),
    };
    let kinds: Vec<Kind> = kept
        .iter()
        .map(|(name, data_type, column_type)| {
            with_hint(
                kind_from_information_schema(data_type, column_type),
                hints.get(name),
            )
        })
        .collect();
    let schema = TableSchema::new(
        id.clone(),
        kept.iter()
            .zip(&kinds)
            .map(|((name, _, _), kind)| Column::new(name.clone(), kind.type_name()))
            .collect(),
        key_index,
    );
    let select = format!(
        "SELECT {} FROM {}",
        kept.iter()
            .map(|(name, _, _)| quote_ident(name))
            .collect::<Vec<_>>()
            .join(", "),
        quote_table(id)
    );
    Ok((
        SnapshotTable {
            schema: Arc::new(schema),
            kinds,
            select,
            estimated_rows,
        },
        state,
    ))
}

/// The columns the server keys the table's rows by, as the binlog's TABLE_MAP reports them: the
/// primary key, else the first UNIQUE index whose columns are all NOT NULL (whole columns, no
/// expression, not a long-unique HASH) — the index the server takes as the primary key (`SHOW INDEX` lists indexes in
/// the server's key order).
pub async fn table_key(conn: &mut Conn, id: &TableId) -> Result<Vec<String>> {
    let rows: Vec<Row> = conn
        .query(format!("SHOW INDEX FROM {}", quote_table(id)))
        .await
        .map_err(|e| MysqlError::driver(format!("reading the keys of {id}"), e))?;
    let text = |row: &Row, name: &str| -> Option<String> {
        let at = row
            .columns_ref()
            .iter()
            .position(|c| c.name_str() == name)?;
        match row.as_ref(at)? {
            mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            mysql_async::Value::Int(n) => Some(n.to_string()),
            mysql_async::Value::UInt(n) => Some(n.to_string()),
            _ => None,
        }
    };
    // Index name → (columns in order, usable as the key).
    let mut indexes: Vec<(String, Vec<String>, bool)> = Vec::new();
    for row in &rows {
        let (Some(name), Some(column)) = (text(row, "Key_name"), text(row, "Column_name")) else {
            continue;
        };
        let unique = text(row, "Non_unique").as_deref() == Some("0");
        let not_null = text(row, "Null").unwrap_or_default().is_empty();
        // MariaDB's long UNIQUE (over a BLOB) is a HASH index on a hidden column: the server
        // does not key the table by it (no primary key in TABLE_MAP).
        let whole = text(row, "Sub_part").is_none()
            && text(row, "Expression").is_none()
            && text(row, "Index_type").as_deref() != Some("HASH");
        match indexes.iter_mut().find(|(n, _, _)| *n == name) {
            Some((_, columns, usable)) => {
                columns.push(column);
                *usable &= unique && not_null && whole;
            }
            None => indexes.push((name, vec![column], unique && not_null && whole)),
        }
    }
    if let Some((_, columns, _)) = indexes.iter().find(|(n, _, _)| n == "PRIMARY") {
        return Ok(columns.clone());
    }
    Ok(indexes
        .into_iter()
        .find(|(_, _, usable)| *usable)
        .map(|(_, columns, _)| columns)
        .unwrap_or_default())
}

/// A result row of a table's select list, through the snapshot's conversion (DESIGN §3).
pub fn convert_row(row: Row, kinds: &[Kind]) -> etcdsync_core::Row {
    row.unwrap_raw()
        .into_iter()
        .zip(kinds)
        .map(|(v, kind)| snapshot_value(kind, v.unwrap_or(mysql_async::Value::NULL)))
        .collect()
}

/// The statement that shows the current binlog position: MySQL ≥ 8.2 renamed `SHOW MASTER
/// STATUS` to `SHOW BINARY LOG STATUS` (and 8.4 removed the old name); MariaDB keeps it.
pub fn status_statements(server: &ServerInfo) -> [&'static str; 2] {
    match server.flavour {
        Flavour::MySql if server.version_at_least(8, 2, 0) => {
            ["SHOW BINARY LOG STATUS", "SHOW MASTER STATUS"]
        }
        _ => ["SHOW MASTER STATUS", "SHOW BINARY LOG STATUS"],
    }
}

/// A `SHOW MASTER STATUS` / `SHOW BINARY LOG STATUS` row (`File`, `Position`, …, and on MySQL
/// `Executed_Gtid_Set`, empty when gtid_mode is OFF) as a position.
pub fn position_from_status(
    columns: &[(String, Option<String>)],
    flavour: Flavour,
) -> Result<SourcePosition> {
    let get = |name: &str| {
        columns
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_deref())
    };
    let (Some(file), Some(offset)) = (get("File"), get("Position")) else {
        return Err(MysqlError::Other(format!(
            "the binlog status has no File/Position columns: {:?}",
            columns.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>()
        )));
    };
    let offset = offset.parse().map_err(|_| {
        MysqlError::Other(format!(
            "the binlog status position `{offset}` is not a number"
        ))
    })?;
    let position = SourcePosition::new(BinlogPos::new(file, offset));
    let gtid = match (flavour, get("Executed_Gtid_Set")) {
        (Flavour::MySql, Some(text)) if !text.trim().is_empty() => {
            Gtids::MySql(GtidSet::parse(text).ok_or_else(|| {
                MysqlError::Other(format!("cannot parse Executed_Gtid_Set `{text}`"))
            })?)
        }
        _ => Gtids::None,
    };
    Ok(position.with_gtid(gtid))
}

/// The binlog position of the server now, with its GTID state (MySQL: the executed set;
/// MariaDB: `BINLOG_GTID_POS()` of the same file and offset).
pub async fn current_position(conn: &mut Conn, server: &ServerInfo) -> Result<SourcePosition> {
    let mut last_error = None;
    for statement in status_statements(server) {
        match conn.query_first::<Row, _>(statement).await {
            Ok(Some(row)) => {
                let names: Vec<String> = row
                    .columns_ref()
                    .iter()
                    .map(|c| c.name_str().into_owned())
                    .collect();
                let columns: Vec<(String, Option<String>)> = names
                    .into_iter()
                    .zip(row.unwrap_raw())
                    .map(|(name, value)| {
                        let text = value.and_then(|v| mysql_async::from_value_opt(v).ok());
                        (name, text)
                    })
                    .collect();
                let position = position_from_status(&columns, server.flavour)?;
                return with_mariadb_gtid(conn, server.flavour, position).await;
            }
            Ok(None) => {
                return Err(MysqlError::Prerequisite(format!(
                    "  - {statement} returned nothing: the binary log is off; add `log_bin = mysql-bin` under [mysqld] in my.cnf and restart"
                )))
            }
            Err(e) => last_error = Some((statement, e)),
        }
    }
    Err(match last_error {
        Some((statement, e)) => {
            MysqlError::driver(format!("reading the binlog position ({statement})"), e)
        }
        None => MysqlError::Other("cannot read the binlog position".into()),
    })
}

/// Adds MariaDB's GTID position at `position` (`BINLOG_GTID_POS(file, offset)`), so streaming
/// can resume by GTID. Without it (NULL, or an older server) the position stays file/offset.
pub async fn with_mariadb_gtid(
    conn: &mut Conn,
    flavour: Flavour,
    position: SourcePosition,
) -> Result<SourcePosition> {
    if flavour != Flavour::MariaDb {
        return Ok(position);
    }
    let gtid: Option<Option<String>> = conn
        .exec_first(
            "SELECT BINLOG_GTID_POS(?, ?)",
            (&position.binlog.file, position.binlog.offset),
        )
        .await
        .map_err(|e| {
            MysqlError::driver(
                format!(
                    "reading the GTID position at {} (BINLOG_GTID_POS)",
                    position.binlog
                ),
                e,
            )
        })?;
    match gtid.flatten().as_deref().map(GtidPos::parse) {
        Some(Some(gtid)) => Ok(position.with_gtid(Gtids::MariaDb(gtid))),
        Some(None) => Err(MysqlError::Other(format!(
            "BINLOG_GTID_POS at {} returned an unreadable GTID position",
            position.binlog
        ))),
        None => {
            tracing::warn!(position = %position, "the server has no GTID position for the snapshot; resuming will use file and offset");
            Ok(position)
        }
    }
}

/// Opens the snapshot on `workers` connections and returns the matching binlog position.
async fn open_snapshot(
    config: &ValidMysql,
    server: &ServerInfo,
    workers: &mut [Conn],
) -> Result<SourcePosition> {
    let flavour = server.flavour;
    const BEGIN: &str = "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY";
    for conn in workers.iter_mut() {
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(|e| MysqlError::driver("setting the snapshot isolation level", e))?;
    }
    if let (Flavour::MariaDb, [conn]) = (flavour, &mut *workers) {
        conn.query_drop(BEGIN)
            .await
            .map_err(|e| MysqlError::driver("starting the consistent snapshot", e))?;
        let rows: Vec<(String, String)> = conn
            .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
            .await
            .map_err(|e| MysqlError::driver("reading binlog_snapshot_file/position", e))?;
        let get = |name: &str| {
            rows.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        return match (get("binlog_snapshot_file"), get("binlog_snapshot_position")) {
            (Some(file), Some(offset)) if !file.is_empty() => {
                let offset = offset.parse().map_err(|_| {
                    MysqlError::Other(format!("binlog_snapshot_position `{offset}` is not a number"))
                })?;
                let position = SourcePosition::new(BinlogPos::new(file, offset));
                with_mariadb_gtid(conn, flavour, position).await
            }
            _ => Err(MysqlError::Prerequisite(
                "  - binlog_snapshot_file is empty: the binary log is off; add `log_bin = mysql-bin` under [mysqld] in my.cnf and restart".into(),
            )),
        };
    }
    // Several workers (or MySQL): all snapshots open under one brief global read lock.
    let mut lock = connect(&config.opts).await?;
    lock.query_drop("FLUSH TABLES WITH READ LOCK")
        .await
        .map_err(|e| {
            MysqlError::driver(
                "FLUSH TABLES WITH READ LOCK (needs the RELOAD privilege)",
                e,
            )
        })?;
    let result = async {
        for conn in workers.iter_mut() {
            conn.query_drop(BEGIN)
                .await
                .map_err(|e| MysqlError::driver("starting the consistent snapshot", e))?;
        }
        current_position(&mut lock, server).await
    }
    .await;
    let unlocked = lock.query_drop("UNLOCK TABLES").await;
    let position = result?;
    unlocked.map_err(|e| MysqlError::driver("UNLOCK TABLES", e))?;
    drop(lock);
    Ok(position)
}

/// Runs the whole snapshot: `SnapshotStarted`, the rows, `SnapshotFinished`. Returns `None` when
/// the pipeline's sink has gone away.
pub async fn run(
    config: &ValidMysql,
    server: &ServerInfo,
    output: &mpsc::Sender<Message>,
) -> Result<Option<SourcePosition>> {
    let mut workers = Vec::with_capacity(config.snapshot_workers);
    for _ in 0..config.snapshot_workers {
        workers.push(connect(&config.opts).await?);
    }
    let position = open_snapshot(config, server, &mut workers).await?;
    let tables = match workers.first_mut() {
        Some(conn) => list_tables(conn, &config.tables, server.flavour).await?,
        None => Vec::new(),
    };
    tracing::info!(tables = tables.len(), position = %position, workers = workers.len(), "snapshot started");
    let ids = tables.iter().map(|t| t.schema.id.clone()).collect();
    if output
        .send(Message::SnapshotStarted { tables: ids })
        .await
        .is_err()
    {
        return Ok(None);
    }
    let queue = Arc::new(Mutex::new(tables.into_iter().collect::<VecDeque<_>>()));
    let copies = workers.into_iter().map(|conn| {
        let queue = queue.clone();
        let output = output.clone();
        async move { copy_tables(conn, queue, output).await }
    });
    let finished = futures::future::try_join_all(copies).await?;
    if finished.iter().any(|open| !open) {
        return Ok(None);
    }
    if output
        .send(Message::SnapshotFinished {
            position: etcdsync_core::Position::new(position.to_string()),
        })
        .await
        .is_err()
    {
        return Ok(None);
    }
    tracing::info!(position = %position, "snapshot finished");
    Ok(Some(position))
}

/// What [`copy_while_streaming`] did.
pub struct Copied {
    /// Where the copy's consistent read stands in the binlog.
    pub position: SourcePosition,
    pub copied: Vec<TableId>,
    /// Names whose keys were removed: gone, renamed away, or without a usable key now.
    pub retired: Vec<TableId>,
}

/// Copies `copy` again while streaming, as one snapshot step that also removes every key under
/// `retire` (DESIGN §6: keys of the step's tables it does not write are deleted when it ends).
/// The step's checkpoint is `at`, the stream's position: a restart before the next commit
/// replays from there, which converges. `None` when the sink has gone away.
pub async fn copy_while_streaming(
    config: &ValidMysql,
    server: &ServerInfo,
    copy: &[TableId],
    retire: &[TableId],
    at: etcdsync_core::Position,
    output: &mpsc::Sender<Message>,
) -> Result<Option<Copied>> {
    let mut workers = vec![connect(&config.opts).await?];
    let position = open_snapshot(config, server, &mut workers).await?;
    let mut conn = workers.remove(0);
    let mut tables = Vec::new();
    let mut retired: Vec<TableId> = retire.to_vec();
    for id in copy {
        let (table, key) = describe(&mut conn, id, &config.tables, server.flavour, None).await?;
        match key {
            // A discarded tablespace (`ALTER TABLE … DISCARD TABLESPACE`) keeps its keys as they
            // are until `IMPORT TABLESPACE` copies it (its rows are expected back, and none
            // change meanwhile): neither copied nor removed, and the stream is not held up.
            KeyState::Usable if probe_row(&mut conn, id).await? == RowProbe::Discarded => {
                tracing::info!(table = %id, "the table's tablespace is discarded; its keys are kept until IMPORT TABLESPACE copies it again");
            }
            KeyState::Usable => tables.push(table),
            KeyState::Missing => {
                if !table.schema.columns.is_empty() {
                    tracing::warn!(table = %id, "table has no primary key; it is not synced (add a PRIMARY KEY or exclude it)");
                }
                retired.push(id.clone());
            }
            KeyState::Excluded(column) => {
                return Err(MysqlError::Config(key_column_excluded(id, &column)))
            }
        }
    }
    let copied: Vec<TableId> = tables.iter().map(|t| t.schema.id.clone()).collect();
    let step: Vec<TableId> = copied.iter().chain(&retired).cloned().collect();
    if step.is_empty() {
        return Ok(Some(Copied {
            position,
            copied,
            retired,
        }));
    }
    if output
        .send(Message::SnapshotStarted { tables: step })
        .await
        .is_err()
    {
        return Ok(None);
    }
    // A table altered after the copy's snapshot began cannot be read in it (error 1412): copy
    // again from a new snapshot. Rows already written are overwritten; the copy counts as read
    // at the first attempt's position, so the events after it replay over the copy and remove
    // what an earlier attempt wrote and a newer snapshot no longer has.
    let mut attempt = 1;
    loop {
        match copy_in_snapshot(&mut conn, &tables, output).await {
            Ok(true) => break,
            Ok(false) => return Ok(None),
            Err(MysqlError::Connection { source, .. })
                if crate::error::server_code(&source)
                    == Some(crate::error::TABLE_DEFINITION_CHANGED)
                    && attempt < COPY_ATTEMPTS =>
            {
                attempt += 1;
                tracing::info!(
                    attempt,
                    "a table changed under the copy's snapshot; copying again from a new one"
                );
                let mut workers = vec![connect(&config.opts).await?];
                open_snapshot(config, server, &mut workers).await?;
                conn = workers.remove(0);
                let mut again = Vec::with_capacity(tables.len());
                for table in &tables {
                    let id = &table.schema.id;
                    let (table, key) =
                        describe(&mut conn, id, &config.tables, server.flavour, None).await?;
                    if key == KeyState::Usable {
                        again.push(table);
                    }
                }
                tables = again;
            }
            Err(error) => return Err(error),
        }
    }
    if output
        .send(Message::SnapshotFinished { position: at })
        .await
        .is_err()
    {
        return Ok(None);
    }
    tracing::info!(position = %position, tables = copied.len(), removed = retired.len(), "tables copied again");
    Ok(Some(Copied {
        position,
        copied,
        retired,
    }))
}

/// What reading one row of a table finds (in the connection's snapshot, if it has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowProbe {
    Row,
    Empty,
    /// The tablespace is discarded (error 1814; `LIMIT 0` would not read a row to tell).
    Discarded,
    /// The table changed under the connection's snapshot (error 1412): a copy meets it too and
    /// starts over.
    Redefined,
}

pub(crate) async fn probe_row(conn: &mut Conn, id: &TableId) -> Result<RowProbe> {
    let probe = format!("SELECT 1 FROM {} LIMIT 1", quote_table(id));
    match conn.query_first::<u8, _>(probe).await {
        Ok(row) => Ok(if row.is_some() {
            RowProbe::Row
        } else {
            RowProbe::Empty
        }),
        Err(e) => match crate::error::server_code(&e) {
            Some(crate::error::TABLESPACE_DISCARDED) => Ok(RowProbe::Discarded),
            Some(crate::error::TABLE_DEFINITION_CHANGED) => Ok(RowProbe::Redefined),
            _ => Err(crate::error::read_error(id, e)),
        },
    }
}

/// Tries a copy while streaming makes before giving up (error 1412 each time).
const COPY_ATTEMPTS: usize = 5;

/// Copies `tables` in the connection's snapshot transaction and ends it; `false` when output
/// closed.
async fn copy_in_snapshot(
    conn: &mut Conn,
    tables: &[SnapshotTable],
    output: &mpsc::Sender<Message>,
) -> Result<bool> {
    for table in tables {
        if !copy_table(conn, table, output).await? {
            return Ok(false);
        }
    }
    conn.query_drop("COMMIT")
        .await
        .map_err(|e| MysqlError::driver("ending the copy's snapshot transaction", e))?;
    Ok(true)
}

/// One worker: copies tables from the queue until it is empty. `false` when output closed.
async fn copy_tables(
    mut conn: Conn,
    queue: Arc<Mutex<VecDeque<SnapshotTable>>>,
    output: mpsc::Sender<Message>,
) -> Result<bool> {
    loop {
        let Some(table) = queue.lock().await.pop_front() else {
            break;
        };
        if !copy_table(&mut conn, &table, &output).await? {
            return Ok(false);
        }
    }
    conn.query_drop("COMMIT")
        .await
        .map_err(|e| MysqlError::driver("ending the snapshot transaction", e))?;
    Ok(true)
}

async fn copy_table(
    conn: &mut Conn,
    table: &SnapshotTable,
    output: &mpsc::Sender<Message>,
) -> Result<bool> {
    let id = &table.schema.id;
    let telemetry = telemetry::get();
    telemetry.snapshot_table_started(id, table.estimated_rows);
    let context = |e| crate::error::read_error(id, e);
    let mut rows = conn
        .exec_stream::<Row, _, _>(table.select.as_str(), ())
        .await
        .map_err(context)?;
    let mut chunk = Chunk::default();
    let mut count: u64 = 0;
    while let Some(row) = rows.next().await {
        let row = row.map_err(context)?;
        let full = chunk.push(Change::insert(
            table.schema.clone(),
            convert_row(row, &table.kinds),
        ));
        if full {
            let full = chunk.take();
            let n = full.len() as u64;
            if output.send(Message::Changes(full)).await.is_err() {
                return Ok(false);
            }
            count += n;
            telemetry.snapshot_rows_read(id, n);
        }
    }
    if !chunk.is_empty() {
        let n = chunk.len() as u64;
        if output.send(Message::Changes(chunk.take())).await.is_err() {
            return Ok(false);
        }
        count += n;
        telemetry.snapshot_rows_read(id, n);
    }
    telemetry.snapshot_table_done(id);
    tracing::info!(table = %id, rows = count, "table copied");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(flavour: Flavour, version: &str) -> ServerInfo {
        ServerInfo {
            flavour,
            version: version.into(),
            server_id: 1,
        }
    }

    #[test]
    fn status_statement_by_flavour_and_version() {
        assert_eq!(
            status_statements(&server(Flavour::MySql, "8.4.3"))[0],
            "SHOW BINARY LOG STATUS"
        );
        assert_eq!(
            status_statements(&server(Flavour::MySql, "8.2.0"))[0],
            "SHOW BINARY LOG STATUS"
        );
        assert_eq!(
            status_statements(&server(Flavour::MySql, "8.0.36"))[0],
            "SHOW MASTER STATUS"
        );
        assert_eq!(
            status_statements(&server(Flavour::MariaDb, "10.11.6-MariaDB-log"))[0],
            "SHOW MASTER STATUS"
        );
    }

    fn status(gtids: Option<&str>) -> Vec<(String, Option<String>)> {
        let mut columns = vec![
            ("File".to_string(), Some("binlog.000007".to_string())),
            ("Position".to_string(), Some("157".to_string())),
            ("Binlog_Do_DB".to_string(), Some(String::new())),
            ("Binlog_Ignore_DB".to_string(), Some(String::new())),
        ];
        if let Some(g) = gtids {
            columns.push(("Executed_Gtid_Set".to_string(), Some(g.to_string())));
        }
        columns
    }

    #[test]
    fn status_rows_become_positions() {
        let uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let pos = position_from_status(
            &status(Some(&format!("{uuid}:1-5,\n{uuid}:7"))),
            Flavour::MySql,
        )
        .expect("mysql");
        assert_eq!(
            pos.to_string(),
            format!("binlog.000007:157 gtid={uuid}:1-5:7")
        );
        let off = position_from_status(&status(Some("")), Flavour::MySql).expect("gtid off");
        assert_eq!(off.to_string(), "binlog.000007:157");
        let maria = position_from_status(&status(None), Flavour::MariaDb).expect("mariadb");
        assert_eq!(maria.gtid, Gtids::None);
        assert!(position_from_status(&status(Some("garbage")), Flavour::MySql).is_err());
        assert!(position_from_status(&[], Flavour::MySql).is_err());
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a`b"), "`a``b`");
        assert_eq!(quote_ident("plain"), "`plain`");
    }
}
