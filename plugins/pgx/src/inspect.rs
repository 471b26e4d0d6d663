//! `etcdsync check`, `status` and `verify` against PostgreSQL (issue 6): every prerequisite with
//! its fix (the judgements `build` uses, from `prereq` and `relations`), the selected tables as
//! the snapshot builds them, rows in key order read through the snapshot's COPY path (so values
//! encode byte-identically, DESIGN §3), key look-ups, and WAL lag. Reads only; one connection
//! with the session settings of DESIGN §3.

use crate::config::Valid;
use crate::connect::connect;
use crate::error::pg;
use crate::position;
use crate::prereq::{connect_fix, sqlstate};
use crate::relations::resolve_tables;
use crate::relations::{quote_ident, rows_of, Types};
use crate::snapshot::{table_shape, CopyRows, TableShape};
use crate::types::{parse_value, TypeKind};
use etcdsync_core::inspect::{CheckResult, SourceInspector, SourceLag};
use etcdsync_core::{async_trait, Error, Position, Result, Row, TableId, TableSchema, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tokio_postgres::Client;

use check::{check_all, failed_query};

mod check;

/// Keys looked up per query by [`SourceInspector::existing_keys`].
const KEYS_PER_QUERY: usize = 500;

/// A selected table as the inspector reads it.
#[derive(Debug)]
struct Known {
    shape: TableShape,
    /// The table's rows in a query ([`rows_of`]).
    rows: String,
    /// SQL type names (`regtype`) of the key columns, in key order, for casts.
    key_types: Vec<String>,
}

/// The PostgreSQL side of `check`, `status` and `verify`.
pub struct PgxInspector {
    valid: Valid,
    client: Option<Client>,
    server_version: i32,
    types: Types,
    known: HashMap<TableId, Arc<Known>>,
    /// Tables a row read found absent: when, and the server's WAL position just before the
    /// catalog was read. A backlog of changes of a dropped table costs one catalog read, not one
    /// per change; a change committed after that position (the table recreated) reads again.
    absent: HashMap<TableId, Absent>,
}

/// Whether a 32-bit xid is visible in a snapshot taken now (PostgreSQL 13+). The full xid is the
/// one nearest the snapshot's xmax (latestCompletedXid + 1; a transaction still committing may be
/// above it): xmax plus the signed 32-bit distance from xmax's low half, so an xid not yet
/// completed stays at or above xmax and is not visible. One snapshot serves both.
const VISIBLE_13: &str = "SELECT pg_visible_in_snapshot(greatest(m + (($1 - m % 4294967296 + 6442450944) \
     % 4294967296) - 2147483648, 3)::text::xid8, s) FROM (SELECT s, pg_snapshot_xmax(s)::text::bigint AS m \
     FROM pg_current_snapshot() AS s) q";

/// [`VISIBLE_13`] with the txid functions of PostgreSQL 10–12.
const VISIBLE_10: &str =
    "SELECT txid_visible_in_snapshot(greatest(m + (($1 - m % 4294967296 + 6442450944) \
     % 4294967296) - 2147483648, 3), s) FROM (SELECT s, txid_snapshot_xmax(s) AS m \
     FROM txid_current_snapshot() AS s) q";
/// A table [`PgxInspector::fetch_row`] found absent.
#[derive(Debug, Clone, Copy)]
struct Absent {
    since: std::time::Instant,
    /// The commit LSN of the latest streamed change a read found the table absent for (0: none).
    /// That change's transaction was visible to the catalog read ([`crate::visibility`]).
    seen_for: u64,
}

/// How long a table found absent is taken as absent by [`PgxInspector::fetch_row`] for a read
/// not tied to a streamed commit.
const ABSENT_FOR: std::time::Duration = std::time::Duration::from_secs(10);

impl Absent {
    /// Whether a row read may take the table as still absent without reading the catalog. A
    /// change committed no later than one the table was found absent for belongs to the table
    /// that was dropped or renamed (its retirement follows in the stream): a table created again
    /// under the name was created after that drop, and so was every change of it — its
    /// transaction, visible before the read, saw the new table. A read for no streamed change
    /// trusts the absence a while.
    fn still_absent_for(&self, committed: Option<u64>) -> bool {
        match committed {
            Some(commit_lsn) => commit_lsn <= self.seen_for,
            None => self.since.elapsed() < ABSENT_FOR,
        }
    }
}

impl PgxInspector {
    /// Does no I/O: `check` reports a failed connection as a failed check.
    pub fn new(valid: Valid) -> Self {
        Self {
            valid,
            client: None,
            server_version: 0,
            types: Types::default(),
            known: HashMap::new(),
            absent: HashMap::new(),
        }
    }

    /// The connection, opened on first use and again after it was lost.
    async fn connected(&mut self) -> Result<&Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let client = connect(&self.valid, "inspect").await?;
            let row = client
                .query_one("SELECT current_setting('server_version_num')::int4", &[])
                .await
                .map_err(pg("reading the server version"))?;
            self.server_version = row.get(0);
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| Error::fatal("no PostgreSQL connection"))
    }

    /// Reads the selected tables afresh (keys, columns, types).
    async fn load_tables(&mut self) -> Result<Vec<Arc<TableSchema>>> {
        self.connected().await?;
        let Some(client) = self.client.as_ref() else {
            return Err(Error::fatal("no PostgreSQL connection"));
        };
        let mut known = HashMap::new();
        let mut schemas = Vec::new();
        for info in resolve_tables(client, &self.valid).await? {
            let shape = table_shape(
                client,
                &info,
                &self.valid,
                &mut self.types,
                self.server_version,
            )
            .await?;
            let key_oids: Vec<u32> = shape
                .schema
                .key
                .iter()
                .map(|&i| shape.type_oids[i])
                .collect();
            let key_types = client
                .query(
                    "SELECT t::regtype::text FROM unnest($1::oid[]) WITH ORDINALITY AS u(t, i) ORDER BY i",
                    &[&key_oids],
                )
                .await
                .map_err(pg(format!("reading the key types of {}", info.id)))?
                .into_iter()
                .map(|r| r.get::<_, String>(0))
                .collect();
            schemas.push(shape.schema.clone());
            let rows = rows_of(client, info.oid, &info.id).await?;
            known.insert(
                info.id.clone(),
                Arc::new(Known {
                    shape,
                    rows,
                    key_types,
                }),
            );
        }
        self.known = known;
        Ok(schemas)
    }

    /// The row of `table` with `key` (values of the stream's key columns) as the table holds it
    /// now, by column name; `None` when it is gone, or the table is (dropped, renamed away).
    /// Columns are matched by name, so a row whose table changed since the change was logged (a
    /// renamed column) still fills what it can. `committed`: the commit LSN of the streamed
    /// change the row is read for, if any.
    pub async fn fetch_row(
        &mut self,
        table: &TableId,
        key: &[Value],
        committed: Option<u64>,
    ) -> Result<Option<Vec<(String, Value)>>> {
        if !self.known.contains_key(table) {
            if let Some(absent) = self.absent.get(table).copied() {
                if absent.still_absent_for(committed) {
                    return Ok(None);
                }
                // One cheap lookup by name before the whole selection is read again: changes
                // of a renamed table stream under its old name until it is copied.
                if !self.name_exists(table).await? {
                    self.remember_absent(table, committed);
                    return Ok(None);
                }
            }
            if !self.reload_has(table, committed).await? {
                return Ok(None);
            }
        }
        match self.fetch_row_once(table, key).await {
            Ok(row) => Ok(row),
            Err(first) if first.kind() != etcdsync_core::ErrorKind::Transient => {
                // The table changed since it was described (a column renamed or dropped), or
                // is gone.
                tracing::debug!(error = %first, table = %table, "describing the table again");
                if !self.reload_has(table, committed).await? {
                    return Ok(None);
                }
                self.fetch_row_once(table, key).await
            }
            Err(error) => Err(error),
        }
    }

    /// Reads the selected tables again; whether `table` is among them (else it is remembered
    /// as absent for the change committed at `committed`).
    async fn reload_has(&mut self, table: &TableId, committed: Option<u64>) -> Result<bool> {
        self.load_tables().await?;
        if self.known.contains_key(table) {
            self.absent.remove(table);
            return Ok(true);
        }
        tracing::debug!(table = %table, "reading a row: the table is no longer selected or no longer exists");
        self.remember_absent(table, committed);
        Ok(false)
    }

    fn remember_absent(&mut self, table: &TableId, committed: Option<u64>) {
        let seen_for = self.absent.get(table).map_or(0, |a| a.seen_for);
        self.absent.insert(
            table.clone(),
            Absent {
                since: std::time::Instant::now(),
                seen_for: seen_for.max(committed.unwrap_or(0)),
            },
        );
    }

    /// Whether a relation of that name exists now.
    async fn name_exists(&mut self, table: &TableId) -> Result<bool> {
        let client = self.connected().await?;
        let found: bool = client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&crate::relations::quote_table(table)],
            )
            .await
            .map_err(pg(format!("looking up table {table}")))?
            .get(0);
        Ok(found)
    }

    async fn fetch_row_once(
        &mut self,
        table: &TableId,
        key: &[Value],
    ) -> Result<Option<Vec<(String, Value)>>> {
        let known = self.known.get(table).cloned().ok_or_else(|| {
            Error::config(format!(
                "table {table} is not selected by `source.tables` or does not exist"
            ))
        })?;
        let client = self.connected().await?;
        let sql = fetch_sql(&known, key)?;
        let mut copy = CopyRows::open(
            client,
            &sql,
            &known.shape.kinds,
            format!("reading a row of {table}"),
        )
        .await?;
        let row = copy.next_row().await?;
        Ok(row.map(|row| {
            known
                .shape
                .schema
                .columns
                .iter()
                .map(|c| c.name.clone())
                .zip(row)
                .collect()
        }))
    }

    /// Waits until transaction `xid` (of a commit the stream delivered) is visible to new
    /// snapshots ([`crate::visibility`]); a transient error after about two seconds.
    pub async fn wait_visible(&mut self, xid: u32) -> Result<()> {
        self.connected().await?;
        let sql = if self.server_version >= 130000 {
            VISIBLE_13
        } else {
            VISIBLE_10
        };
        let Some(client) = self.client.as_ref() else {
            return Err(Error::fatal("no PostgreSQL connection"));
        };
        for _ in 0..1000 {
            let visible: bool = client
                .query_one(sql, &[&i64::from(xid)])
                .await
                .map_err(pg("checking that a streamed transaction is visible"))?
                .get(0);
            if visible {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        Err(Error::transient(format!(
            "transaction {xid} was streamed as committed but is not visible to other sessions after 2 s \
             (etcdsync reads a row of it for an unchanged TOAST value); if synchronous_standby_names matches \
             etcdsync's replication connection (application_name {}, or '*'), commits wait for etcdsync while \
             etcdsync waits for them: list the synchronous standbys by name",
            self.valid.application_name
        )))
    }

    /// The table as last read, re-read once when unknown or when its columns changed.
    async fn known(&mut self, table: &TableSchema) -> Result<Arc<Known>> {
        let fits = |k: &Arc<Known>| *k.shape.schema == *table;
        if let Some(found) = self.known.get(&table.id).filter(|k| fits(k)) {
            return Ok(found.clone());
        }
        self.load_tables().await?;
        match self.known.get(&table.id) {
            Some(found) if fits(found) => Ok(found.clone()),
            Some(_) => Err(Error::fatal(format!(
                "the columns or key of {} changed while reading it; run the command again",
                table.id
            ))),
            None => Err(Error::config(format!(
                "table {} is not selected by `source.tables` or does not exist",
                table.id
            ))),
        }
    }

    async fn check_connected(&mut self, out: &mut Vec<CheckResult>) -> Option<()> {
        let url = self.valid.display_url.clone();
        let user = self.valid.pg.get_user().unwrap_or_default().to_string();
        match self.connected().await {
            Ok(_) => {
                out.push(CheckResult::pass(
                    "postgres connection",
                    format!("{url} as {user}"),
                ));
                Some(())
            }
            Err(error) => {
                let code = sqlstate(&error);
                out.push(CheckResult::fail(
                    "postgres connection",
                    format!("cannot connect to {url}: {error}"),
                    connect_fix(&self.valid, code.as_deref()),
                ));
                None
            }
        }
    }
}
#[async_trait]
impl SourceInspector for PgxInspector {
    async fn check(&mut self) -> Vec<CheckResult> {
        let mut out = Vec::new();
        if self.check_connected(&mut out).await.is_none() {
            return out;
        }
        let Some(client) = self.client.as_ref() else {
            return out;
        };
        if let Err(error) = check_all(client, &self.valid, &mut out).await {
            out.push(failed_query("postgres catalog", &error));
        }
        out
    }

    async fn tables(&mut self) -> Result<Vec<Arc<TableSchema>>> {
        self.load_tables().await
    }

    async fn scan(
        &mut self,
        table: &TableSchema,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Row>> {
        let known = self.known(table).await?;
        let client = self.connected().await?;
        let sql = scan_sql(&known, after, limit)?;
        let context = format!("reading {}", table.id);
        let mut copy = CopyRows::open(client, &sql, &known.shape.kinds, context).await?;
        let mut rows = Vec::new();
        while let Some(row) = copy.next_row().await? {
            rows.push(row);
        }
        Ok(rows)
    }

    async fn existing_keys(
        &mut self,
        table: &TableSchema,
        keys: &[Vec<String>],
    ) -> Result<Vec<Vec<String>>> {
        let known = self.known(table).await?;
        let client = self.connected().await?;
        let width = known.shape.schema.key.len();
        // Keys whose text cannot be a value of the column type are left out here already.
        let candidates: Vec<(usize, Vec<String>)> = keys
            .iter()
            .enumerate()
            .filter(|(_, key)| key.len() == width)
            .filter_map(|(i, key)| Some((i, key_inputs(&known, key)?)))
            .collect();
        let mut found = vec![false; keys.len()];
        for chunk in candidates.chunks(KEYS_PER_QUERY) {
            match lookup(client, &known, chunk).await {
                Ok(hits) => record(&known, keys, hits, &mut found),
                Err(error) if is_bad_input(&error) => {
                    // One key's text is not a value of its type: look the keys up one by one.
                    for one in chunk {
                        match lookup(client, &known, std::slice::from_ref(one)).await {
                            Ok(hits) => record(&known, keys, hits, &mut found),
                            Err(error) if is_bad_input(&error) => {}
                            Err(error) => return Err(error),
                        }
                    }
                }
                Err(error) => return Err(error),
            }
        }
        Ok(keys
            .iter()
            .zip(found)
            .filter(|(_, hit)| *hit)
            .map(|(key, _)| key.clone())
            .collect())
    }

    async fn lag(&mut self, position: &Position) -> Result<SourceLag> {
        let lsn = position::parse(position)?;
        let client = self.connected().await?;
        let row = client
            .query_one(
                "SELECT c::text, greatest(pg_wal_lsn_diff(c, $1::text::pg_lsn), 0)::int8 \
                 FROM pg_current_wal_lsn() AS c",
                &[&lsn.to_pg_string()],
            )
            .await
            .map_err(pg("reading the current WAL position"))?;
        Ok(SourceLag {
            current_position: Some(row.get(0)),
            bytes: Some(u64::try_from(row.get::<_, i64>(1)).unwrap_or(0)),
        })
    }
}

/// A data exception (class 22: text that is not a value of the type) or a domain's CHECK
/// (23514): the key cannot exist.
fn is_bad_input(error: &Error) -> bool {
    sqlstate(error).is_some_and(|code| code.starts_with("22") || code == "23514")
}

/// `COPY` of up to `limit` rows strictly after `after`, in key order (keyset pagination; the
/// row comparison uses the key's index).
fn scan_sql(known: &Known, after: Option<&[Value]>, limit: usize) -> Result<String> {
    let key_list = key_list(known);
    let mut sql = format!(
        "COPY (SELECT {} FROM {}",
        known.shape.select_list(),
        known.rows
    );
    if let Some(after) = after {
        let literals = key_literals(known, after, "scan")?;
        sql.push_str(&format!(" WHERE ({key_list}) > ({literals})"));
    }
    sql.push_str(&format!(" ORDER BY {key_list} LIMIT {limit}) TO STDOUT"));
    Ok(sql)
}

/// `COPY` of the one row whose key is `key`.
fn fetch_sql(known: &Known, key: &[Value]) -> Result<String> {
    let literals = key_literals(known, key, "row lookup")?;
    Ok(format!(
        "COPY (SELECT {} FROM {} WHERE ({}) = ({literals}) LIMIT 1) TO STDOUT",
        known.shape.select_list(),
        known.rows,
        key_list(known)
    ))
}

/// The table's key columns, quoted, in key order.
fn key_list(known: &Known) -> String {
    let schema = &known.shape.schema;
    schema
        .key
        .iter()
        .map(|&i| quote_ident(&schema.columns[i].name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `key` as SQL literals cast to the key columns' types, for a row comparison with
/// [`key_list`]; `what` names the query in errors.
fn key_literals(known: &Known, key: &[Value], what: &str) -> Result<String> {
    let schema = &known.shape.schema;
    if key.len() != schema.key.len() {
        return Err(Error::fatal(format!(
            "{what} of {} by a key of {} values, but its key has {} columns",
            schema.id,
            key.len(),
            schema.key.len()
        )));
    }
    let literals = key
        .iter()
        .zip(&known.key_types)
        .map(|(value, ty)| {
            input_text(value)
                .map(|text| format!("{}::{ty}", quote_literal(&text)))
                .ok_or_else(|| {
                    Error::fatal(format!(
                        "{what} of {} by a key containing {value:?}, which no key column holds",
                        schema.id
                    ))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(literals.join(", "))
}

/// `COPY` of the listed keys' ordinals and the key values the table holds for them.
async fn lookup(
    client: &Client,
    known: &Known,
    keys: &[(usize, Vec<String>)],
) -> Result<Vec<(usize, Vec<Option<String>>)>> {
    let schema = &known.shape.schema;
    let width = schema.key.len();
    let values = keys
        .iter()
        .map(|(i, texts)| {
            let casts = texts
                .iter()
                .zip(&known.key_types)
                .map(|(text, ty)| format!("{}::{ty}", quote_literal(text)))
                .collect::<Vec<_>>()
                .join(", ");
            format!("({i}, {casts})")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let aliases = (0..width).map(|k| format!("k{k}")).collect::<Vec<_>>();
    let selected = schema
        .key
        .iter()
        .map(|&i| format!("t.{}", quote_ident(&schema.columns[i].name)))
        .collect::<Vec<_>>();
    let join = selected
        .iter()
        .zip(&aliases)
        .map(|(column, alias)| format!("{column} = u.{alias}"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let sql = format!(
        "COPY (SELECT u.n, {} FROM (VALUES {values}) AS u(n, {}) JOIN {} t ON {join}) TO STDOUT",
        selected.join(", "),
        aliases.join(", "),
        known.rows
    );
    let no_kinds: [TypeKind; 0] = [];
    let mut copy = CopyRows::open(
        client,
        &sql,
        &no_kinds,
        format!("looking up keys of {}", schema.id),
    )
    .await?;
    let mut hits = Vec::new();
    while let Some(mut fields) = copy.next_fields().await? {
        let ordinal = fields
            .first()
            .and_then(|f| f.as_deref())
            .and_then(|f| f.parse::<usize>().ok());
        if let Some(ordinal) = ordinal {
            hits.push((ordinal, fields.split_off(1)));
        }
    }
    Ok(hits)
}

/// Marks the keys found, when the table's value renders exactly as the given text: `007` finds
/// row 7, but the key of row 7 is `7`, so `007` does not exist.
fn record(
    known: &Known,
    keys: &[Vec<String>],
    hits: Vec<(usize, Vec<Option<String>>)>,
    found: &mut [bool],
) {
    let kinds: Vec<&TypeKind> = known
        .shape
        .schema
        .key
        .iter()
        .map(|&i| &known.shape.kinds[i])
        .collect();
    for (ordinal, fields) in hits {
        let Some(wanted) = keys.get(ordinal) else {
            continue;
        };
        let same = fields.len() == wanted.len()
            && fields
                .iter()
                .zip(&kinds)
                .zip(wanted)
                .all(|((field, kind), text)| {
                    field
                        .as_deref()
                        .is_some_and(|f| parse_value(kind, f).to_text() == *text)
                });
        if same {
            found[ordinal] = true;
        }
    }
}

/// The input text for each key column, or `None` when a text cannot be a value of its column.
fn key_inputs(known: &Known, key: &[String]) -> Option<Vec<String>> {
    known
        .shape
        .schema
        .key
        .iter()
        .zip(key)
        .map(|(&i, text)| key_input(&known.shape.kinds[i], text))
        .collect()
}

/// PostgreSQL input text for a key component given as its canonical text (`Value::to_text`).
pub fn key_input(kind: &TypeKind, text: &str) -> Option<String> {
    if text.contains('\0') {
        return None;
    }
    match kind {
        // lowercase hex without `\x`
        TypeKind::Bytes => {
            let hex = text.len().is_multiple_of(2)
                && text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            hex.then(|| format!("\\x{text}"))
        }
        // a JSON array
        TypeKind::Array { .. } => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(json @ serde_json::Value::Array(_)) => Some(json_array_literal(&json)),
            _ => None,
        },
        _ => Some(text.to_string()),
    }
}

/// A JSON array as a PostgreSQL array literal (`[1,"a b",null]` → `{"1","a b",NULL}`).
fn json_array_literal(json: &serde_json::Value) -> String {
    match json {
        serde_json::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(json_array_literal).collect();
            format!("{{{}}}", items.join(","))
        }
        serde_json::Value::Null => "NULL".into(),
        serde_json::Value::String(s) => quote_element(s),
        other => quote_element(&other.to_string()),
    }
}

/// PostgreSQL input text of a value read from the table (for keyset pagination), `None` for
/// `Unchanged`/`Missing` and SQL NULL.
pub fn input_text(value: &Value) -> Option<String> {
    Some(match value {
        Value::Null | Value::Unchanged | Value::Missing => return None,
        Value::Bytes(bytes) => format!("\\x{}", etcdsync_core::value::hex(bytes)),
        Value::Json(text) => text.clone(),
        Value::Array(items) => array_literal(items),
        other => other.to_text(),
    })
}

fn array_literal(items: &[Value]) -> String {
    let items: Vec<String> = items
        .iter()
        .map(|item| match item {
            Value::Array(inner) => array_literal(inner),
            other => input_text(other).map_or_else(|| "NULL".to_string(), |t| quote_element(&t)),
        })
        .collect();
    format!("{{{}}}", items.join(","))
}

/// A double-quoted array element.
fn quote_element(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// An SQL string literal that reads the same whatever `standard_conforming_strings` is.
pub fn quote_literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

#[cfg(test)]
mod tests;
