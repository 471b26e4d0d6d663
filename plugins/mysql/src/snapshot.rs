//! The consistent snapshot without mysqldump (DESIGN §6): MariaDB with one worker uses
//! `START TRANSACTION WITH CONSISTENT SNAPSHOT` + `binlog_snapshot_file/position` (no lock);
//! otherwise a brief FLUSH TABLES WITH READ LOCK while every worker opens its snapshot. Rows are
//! streamed (binary protocol) in chunks of `CHANGES_PER_MESSAGE`, never a whole table in memory.

use crate::config::ValidMysql;
use crate::decode::{kind_from_information_schema, snapshot_value, Kind};
use crate::error::{MysqlError, Result};
use crate::position::{BinlogPos, SourcePosition};
use crate::prereq::Flavour;
use crate::source::connect;
use etcdsync_core::change::Column;
use etcdsync_core::pipeline::CHANGES_PER_MESSAGE;
use etcdsync_core::tables::TableSelection;
use etcdsync_core::{Change, Message, TableId, TableSchema};
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
    pub select: String,
}

/// Quotes an identifier with backticks.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Lists the selected base tables with their columns (excluded ones removed) and primary keys.
/// Tables without a primary key are skipped with a warning (DESIGN §2 needs a key).
pub async fn list_tables(
    conn: &mut Conn,
    selection: &TableSelection,
) -> Result<Vec<SnapshotTable>> {
    let all: Vec<(String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' \
             AND TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') \
             ORDER BY TABLE_SCHEMA, TABLE_NAME",
        )
        .await
        .map_err(|e| MysqlError::driver("listing tables", e))?;
    let mut tables = Vec::new();
    for (schema, table) in all {
        let id = TableId::new(schema, table);
        if !selection.matches(&id) {
            continue;
        }
        if let Some(t) = describe(conn, &id, selection).await? {
            tables.push(t);
        }
    }
    Ok(tables)
}

async fn describe(
    conn: &mut Conn,
    id: &TableId,
    selection: &TableSelection,
) -> Result<Option<SnapshotTable>> {
    let columns: Vec<(String, String, String)> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (&id.schema, &id.table),
        )
        .await
        .map_err(|e| MysqlError::driver(format!("reading the columns of {id}"), e))?;
    let key: Vec<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' \
             ORDER BY SEQ_IN_INDEX",
            (&id.schema, &id.table),
        )
        .await
        .map_err(|e| MysqlError::driver(format!("reading the primary key of {id}"), e))?;
    if key.is_empty() {
        tracing::warn!(table = %id, "table has no primary key; it is not synced (add a PRIMARY KEY or exclude it)");
        return Ok(None);
    }
    let kept: Vec<&(String, String, String)> = columns
        .iter()
        .filter(|(name, _, _)| !selection.column_excluded(id, name))
        .collect();
    let mut key_index = Vec::with_capacity(key.len());
    for k in &key {
        match kept.iter().position(|(name, _, _)| name == k) {
            Some(i) => key_index.push(i),
            None => {
                return Err(MysqlError::Other(format!(
                    "source.tables.exclude_columns removes primary-key column `{k}` of {id}; key columns cannot be excluded"
                )))
            }
        }
    }
    let kinds: Vec<Kind> = kept
        .iter()
        .map(|(_, data_type, column_type)| kind_from_information_schema(data_type, column_type))
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
        "SELECT {} FROM {}.{}",
        kept.iter()
            .map(|(name, _, _)| quote_ident(name))
            .collect::<Vec<_>>()
            .join(", "),
        quote_ident(&id.schema),
        quote_ident(&id.table)
    );
    Ok(Some(SnapshotTable {
        schema: Arc::new(schema),
        kinds,
        select,
    }))
}

/// The binlog position of the server now (`SHOW MASTER STATUS`, or MySQL ≥ 8.2's
/// `SHOW BINARY LOG STATUS`).
pub async fn current_position(conn: &mut Conn, flavour: Flavour) -> Result<SourcePosition> {
    let statements: &[&str] = match flavour {
        Flavour::MySql => &["SHOW BINARY LOG STATUS", "SHOW MASTER STATUS"],
        Flavour::MariaDb => &["SHOW MASTER STATUS"],
    };
    let mut last_error = None;
    for statement in statements {
        match conn.query_first::<Row, _>(*statement).await {
            Ok(Some(mut row)) => {
                let file: Option<String> = row.take(0);
                let offset: Option<u64> = row.take(1);
                if let (Some(file), Some(offset)) = (file, offset) {
                    return Ok(SourcePosition::new(BinlogPos::new(file, offset)));
                }
            }
            Ok(None) => {
                return Err(MysqlError::Prerequisite(
                    "  - SHOW MASTER STATUS returned nothing: the binary log is off; add `log_bin = mysql-bin` under [mysqld] in my.cnf and restart".into(),
                ))
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(e) => MysqlError::driver("reading the binlog position (SHOW MASTER STATUS)", e),
        None => MysqlError::Other("cannot read the binlog position".into()),
    })
}

/// Opens the snapshot on `workers` connections and returns the matching binlog position.
async fn open_snapshot(
    config: &ValidMysql,
    flavour: Flavour,
    workers: &mut [Conn],
) -> Result<SourcePosition> {
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
                Ok(SourcePosition::new(BinlogPos::new(file, offset)))
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
        current_position(&mut lock, flavour).await
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
    flavour: Flavour,
    output: &mpsc::Sender<Message>,
) -> Result<Option<SourcePosition>> {
    let mut workers = Vec::with_capacity(config.snapshot_workers);
    for _ in 0..config.snapshot_workers {
        workers.push(connect(&config.opts).await?);
    }
    let position = open_snapshot(config, flavour, &mut workers).await?;
    let tables = match workers.first_mut() {
        Some(conn) => list_tables(conn, &config.tables).await?,
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
    let context = |e| {
        let error = MysqlError::driver(format!("reading {id}"), e);
        match error {
            MysqlError::Server { context, source }
                if crate::error::server_code(&source) == Some(1142) =>
            {
                MysqlError::Prerequisite(format!(
                    "  - {context}: {source}; GRANT SELECT ON {}.* TO the etcdsync user",
                    quote_ident(&id.schema)
                ))
            }
            other => other,
        }
    };
    let mut rows = conn
        .exec_stream::<Row, _, _>(table.select.as_str(), ())
        .await
        .map_err(context)?;
    let mut chunk = Vec::with_capacity(CHANGES_PER_MESSAGE);
    let mut count: u64 = 0;
    while let Some(row) = rows.next().await {
        let row = row.map_err(context)?;
        let values = row
            .unwrap_raw()
            .into_iter()
            .zip(&table.kinds)
            .map(|(v, kind)| snapshot_value(kind, v.unwrap_or(mysql_async::Value::NULL)))
            .collect();
        chunk.push(Change::insert(table.schema.clone(), values));
        count += 1;
        if chunk.len() >= CHANGES_PER_MESSAGE {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHANGES_PER_MESSAGE));
            if output.send(Message::Changes(full)).await.is_err() {
                return Ok(false);
            }
        }
    }
    if !chunk.is_empty() && output.send(Message::Changes(chunk)).await.is_err() {
        return Ok(false);
    }
    tracing::info!(table = %id, rows = count, "table copied");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a`b"), "`a``b`");
        assert_eq!(quote_ident("plain"), "`plain`");
    }
}
