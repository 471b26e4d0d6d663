//! The initial snapshot (DESIGN §6): workers import the slot's exported snapshot
//! (`SET TRANSACTION SNAPSHOT`) and `COPY … TO STDOUT` tables in parallel, streaming inserts in
//! `CHANGES_PER_MESSAGE` chunks; values go through `types::parse_value` exactly as the stream's.
//! Reports per-table progress to `telemetry` (estimate from `pg_class.reltuples`, rows per chunk).

use crate::config::Valid;
use crate::connect::connect;
use crate::error::pg;
use crate::relations::{build_schema, quote_ident, quote_table, rows_of, TableInfo, Types};
use crate::types::{parse_value, TypeKind};
use etcdsync_core::change::Column;
use etcdsync_core::pipeline::Chunk;
use etcdsync_core::{telemetry, Change, Error, Message, Result, Row, TableSchema, Value};
use futures::StreamExt;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_postgres::{Client, CopyOutStream};
use tokio_util::sync::CancellationToken;

/// Copies every table with `valid.snapshot_workers` connections that all see `snapshot`.
/// Returns `false` when stopped by shutdown or a closed output before finishing.
pub async fn copy_tables(
    valid: &Valid,
    tables: &[TableInfo],
    snapshot: &str,
    server_version: i32,
    output: &mpsc::Sender<Message>,
    shutdown: &CancellationToken,
) -> Result<bool> {
    let queue = Arc::new(Mutex::new(tables.iter().cloned().collect::<VecDeque<_>>()));
    let workers = valid.snapshot_workers.min(tables.len()).max(1);
    let jobs = (0..workers).map(|n| {
        let queue = queue.clone();
        async move { worker(n, valid, tables, queue, snapshot, server_version, output).await }
    });
    tokio::select! {
        results = futures::future::try_join_all(jobs) => Ok(results?.into_iter().all(|done| done)),
        _ = shutdown.cancelled() => Ok(false),
    }
}

async fn worker(
    n: usize,
    valid: &Valid,
    tables: &[TableInfo],
    queue: Arc<Mutex<VecDeque<TableInfo>>>,
    snapshot: &str,
    server_version: i32,
    output: &mpsc::Sender<Message>,
) -> Result<bool> {
    let client = connect(valid, &format!("snapshot worker {n}")).await?;
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
            snapshot.replace('\'', "''")
        ))
        .await
        .map_err(pg("importing the exported snapshot"))?;
    lock_tables(&client, tables).await?;
    let mut types = Types::default();
    loop {
        let next = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None);
        let Some(table) = next else { break };
        if !copy_table(&client, &table, valid, &mut types, server_version, output).await? {
            return Ok(false);
        }
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(pg("ending the snapshot transaction"))?;
    Ok(true)
}

/// Takes `ACCESS SHARE` on every table of the copy in this worker's snapshot transaction (as
/// pg_dump does), so no table-rewriting `ALTER` or `TRUNCATE` can run until the copy is done;
/// then checks that none was rewritten between the snapshot's export and the lock: the rewritten
/// table would look empty to the snapshot. Either failure starts the snapshot over.
async fn lock_tables(client: &Client, tables: &[TableInfo]) -> Result<()> {
    let list = tables
        .iter()
        .map(|t| quote_table(&t.id))
        .collect::<Vec<_>>()
        .join(", ");
    if list.is_empty() {
        return Ok(());
    }
    client
        .batch_execute(&format!("LOCK TABLE {list} IN ACCESS SHARE MODE"))
        .await
        .map_err(|e| {
            Error::transient(format!(
                "locking the tables of the snapshot (ACCESS SHARE) failed: {e}; a table was dropped or renamed \
                 during the start of the snapshot, which starts over"
            ))
        })?;
    let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
    let names: Vec<String> = tables.iter().map(|t| quote_table(&t.id)).collect();
    // The lock went by name: each name must still be the table the snapshot lists.
    let moved = client
        .query(
            "SELECT name FROM unnest($1::oid[], $2::text[]) AS t(oid, name) \
             WHERE to_regclass(name) IS DISTINCT FROM oid::regclass",
            &[&oids, &names],
        )
        .await
        .map_err(pg("checking the snapshot's tables by name"))?;
    if let Some(row) = moved.first() {
        let table: String = row.get(0);
        return Err(Error::transient(format!(
            "table {table} was renamed, dropped or replaced after the snapshot was exported; the snapshot starts over"
        )));
    }
    // Partitions included: a partitioned table's rows live in its leaves.
    let rewritten = client
        .query(
            "WITH RECURSIVE tree(oid) AS ( \
                 SELECT unnest($1::oid[]) \
                 UNION SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.oid \
                 JOIN pg_class p ON p.oid = i.inhrelid AND p.relispartition) \
             SELECT c.oid::regclass::text FROM pg_class c JOIN tree USING (oid) \
             WHERE c.relfilenode <> 0 AND c.relfilenode <> pg_relation_filenode(c.oid)",
            &[&oids],
        )
        .await
        .map_err(pg("checking the snapshot's tables for rewrites"))?;
    if let Some(row) = rewritten.first() {
        let table: String = row.get(0);
        return Err(Error::transient(format!(
            "table {table} was rewritten (ALTER TABLE … TYPE, VACUUM FULL, CLUSTER or TRUNCATE) after the \
             snapshot was exported, so the snapshot would see it empty; the snapshot starts over"
        )));
    }
    Ok(())
}

/// The synced columns of a table as the snapshot sees them: not dropped, not generated
/// (pgoutput does not send generated columns), not excluded; in table order.
async fn columns(
    client: &Client,
    table: &TableInfo,
    valid: &Valid,
    server_version: i32,
) -> Result<Vec<(String, u32)>> {
    let generated = if server_version >= 120000 {
        "AND a.attgenerated = ''"
    } else {
        ""
    };
    let rows = client
        .query(
            &format!(
                "SELECT a.attname::text, a.atttypid FROM pg_attribute a \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped {generated} ORDER BY a.attnum"
            ),
            &[&table.oid],
        )
        .await
        .map_err(pg(format!("reading the columns of {}", table.id)))?;
    Ok(rows
        .into_iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, u32>(1)))
        .filter(|(name, _)| !valid.tables.column_excluded(&table.id, name))
        .collect())
}

/// A table as the snapshot reads it: the schema handed to the pipeline, and per column how
/// its text is read and its type OID.
#[derive(Debug, Clone)]
pub struct TableShape {
    pub schema: Arc<TableSchema>,
    pub kinds: Vec<TypeKind>,
    pub type_oids: Vec<u32>,
}

impl TableShape {
    /// `SELECT` list of the synced columns, quoted, in table order.
    pub fn select_list(&self) -> String {
        self.schema
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Reads a table's synced columns and builds its schema (snapshot, `check`, `verify` alike).
pub async fn table_shape(
    client: &Client,
    table: &TableInfo,
    valid: &Valid,
    types: &mut Types,
    server_version: i32,
) -> Result<TableShape> {
    let cols = columns(client, table, valid, server_version).await?;
    let mut schema_columns = Vec::with_capacity(cols.len());
    let mut kinds = Vec::with_capacity(cols.len());
    let mut type_oids = Vec::with_capacity(cols.len());
    for (name, oid) in cols {
        let resolved = types.resolve(client, oid).await?;
        schema_columns.push(Column::new(name, resolved.name));
        kinds.push(resolved.kind);
        type_oids.push(oid);
    }
    let schema = Arc::new(build_schema(
        table.id.clone(),
        schema_columns,
        &table.key,
        None,
    )?);
    Ok(TableShape {
        schema,
        kinds,
        type_oids,
    })
}

/// The planner's row estimate of a table (`pg_class.reltuples`); `None` before the first
/// VACUUM or ANALYZE (-1 since PostgreSQL 14).
async fn estimated_rows(client: &Client, table: &TableInfo) -> Result<Option<u64>> {
    let row = client
        .query_opt(
            "SELECT reltuples::float8 FROM pg_class WHERE oid = $1",
            &[&table.oid],
        )
        .await
        .map_err(pg(format!("reading the row estimate of {}", table.id)))?;
    Ok(row
        .map(|r| r.get::<_, f64>(0))
        .filter(|n| *n >= 0.0)
        .map(|n| n.round() as u64))
}

/// The rows of a `COPY (…) TO STDOUT` in text format, each converted with [`convert`]: the one
/// path by which table data is read outside the stream.
pub struct CopyRows<'a> {
    stream: Pin<Box<CopyOutStream>>,
    kinds: &'a [TypeKind],
    pending: Vec<u8>,
    start: usize,
    ended: bool,
    context: String,
}

impl<'a> CopyRows<'a> {
    pub async fn open(
        client: &Client,
        sql: &str,
        kinds: &'a [TypeKind],
        context: String,
    ) -> Result<CopyRows<'a>> {
        let stream = client.copy_out(sql).await.map_err(pg(context.clone()))?;
        Ok(CopyRows {
            stream: Box::pin(stream),
            kinds,
            pending: Vec::new(),
            start: 0,
            ended: false,
            context,
        })
    }

    /// The next row, `None` at the end.
    pub async fn next_row(&mut self) -> Result<Option<Row>> {
        Ok(self
            .next_fields()
            .await?
            .map(|fields| convert(fields, self.kinds)))
    }

    /// The next line's fields as COPY text (unescaped), `None` at the end.
    pub async fn next_fields(&mut self) -> Result<Option<Vec<Option<String>>>> {
        loop {
            if let Some(end) = self.pending[self.start..].iter().position(|&b| b == b'\n') {
                let line = &self.pending[self.start..self.start + end];
                let fields = parse_copy_line(line);
                self.start += end + 1;
                return Ok(Some(fields));
            }
            if self.ended {
                if self.start < self.pending.len() {
                    let fields = parse_copy_line(&self.pending[self.start..]);
                    self.start = self.pending.len();
                    return Ok(Some(fields));
                }
                return Ok(None);
            }
            match self.stream.next().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(pg(self.context.clone()))?;
                    self.pending.drain(..self.start);
                    self.start = 0;
                    self.pending.extend_from_slice(&chunk);
                }
                None => self.ended = true,
            }
        }
    }
}

async fn copy_table(
    client: &Client,
    table: &TableInfo,
    valid: &Valid,
    types: &mut Types,
    server_version: i32,
    output: &mpsc::Sender<Message>,
) -> Result<bool> {
    let telemetry = telemetry::get();
    let shape = table_shape(client, table, valid, types, server_version).await?;
    telemetry.snapshot_table_started(&table.id, estimated_rows(client, table).await?);
    let sql = format!(
        "COPY (SELECT {} FROM {}) TO STDOUT",
        shape.select_list(),
        rows_of(client, table.oid, &table.id).await?
    );
    let mut copy =
        CopyRows::open(client, &sql, &shape.kinds, format!("copying {}", table.id)).await?;
    let mut batch = Chunk::default();
    let mut rows = 0u64;
    loop {
        let next = copy.next_row().await?;
        let end = next.is_none();
        let full = match next {
            Some(row) => batch.push(Change::insert(shape.schema.clone(), row)),
            None => false,
        };
        if full || (end && !batch.is_empty()) {
            let count = batch.len() as u64;
            let full = batch.take();
            if output.send(Message::Changes(full)).await.is_err() {
                return Ok(false);
            }
            rows += count;
            telemetry.snapshot_rows_read(&table.id, count);
        }
        if end {
            break;
        }
    }
    telemetry.snapshot_table_done(&table.id);
    tracing::info!(table = %table.id, rows, "table copied");
    Ok(true)
}

/// COPY fields to values by column kind ([`parse_value`], the stream's rule too).
pub fn convert(fields: Vec<Option<String>>, kinds: &[TypeKind]) -> Row {
    fields
        .into_iter()
        .zip(kinds)
        .map(|(field, kind)| match field {
            None => Value::Null,
            Some(text) => parse_value(kind, &text),
        })
        .collect()
}

/// Splits one line of COPY text format into fields: tab-separated, `\N` is NULL, backslash
/// escapes (`\b \f \n \r \t \v \\`, octal `\ddd`, hex `\xhh`) decoded.
pub fn parse_copy_line(line: &[u8]) -> Vec<Option<String>> {
    line.split(|&b| b == b'\t').map(unescape_field).collect()
}

fn unescape_field(field: &[u8]) -> Option<String> {
    if field == b"\\N" {
        return None;
    }
    if !field.contains(&b'\\') {
        return Some(String::from_utf8_lossy(field).into_owned());
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' || i + 1 == field.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let c = field[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut value = u32::from(c - b'0');
                let mut digits = 1;
                while digits < 3 && i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                    value = value * 8 + u32::from(field[i] - b'0');
                    i += 1;
                    digits += 1;
                }
                out.push((value & 0xff) as u8);
            }
            b'x' if i < field.len() && field[i].is_ascii_hexdigit() => {
                let mut value = 0u32;
                let mut digits = 0;
                while digits < 2 && i < field.len() && field[i].is_ascii_hexdigit() {
                    value = value * 16 + (field[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    digits += 1;
                }
                out.push((value & 0xff) as u8);
            }
            other => out.push(other),
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_fields_and_escapes() {
        let line = b"1\t\\N\ta\\tb\\nc\\\\d\t\\\\x0a\t\\101\\x42\t";
        assert_eq!(
            parse_copy_line(line),
            vec![
                Some("1".into()),
                None,
                Some("a\tb\nc\\d".into()),
                Some("\\x0a".into()),
                Some("AB".into()),
                Some(String::new()),
            ]
        );
        assert_eq!(parse_copy_line("é\\r".as_bytes()), vec![Some("é\r".into())]);
    }

    #[test]
    fn copy_values_use_the_shared_type_rules() {
        let kinds = [
            TypeKind::Int,
            TypeKind::Bytes,
            TypeKind::TimestampTz,
            TypeKind::Text,
        ];
        let values = convert(
            parse_copy_line(b"7\t\\\\x6869\t2024-01-02 03:04:05.10+00\t\\N"),
            &kinds,
        );
        assert_eq!(
            values,
            vec![
                Value::Int(7),
                Value::Bytes(b"hi".to_vec()),
                Value::TimestampTz("2024-01-02T03:04:05.1Z".into()),
                Value::Null
            ]
        );
    }
}
