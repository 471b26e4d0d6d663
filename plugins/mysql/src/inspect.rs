//! `etcdsync check`, `status` and `verify` against MySQL/MariaDB (issue 6): every prerequisite
//! with its fix (the verdicts start-up uses, from `prereq`, plus per-table key, SELECT and
//! selection checks, and `prereq`'s charset and foreign-key verdicts), the selected tables exactly as the snapshot describes them, rows in key
//! order through the snapshot's statement and conversion (so values encode byte-identically,
//! DESIGN §3), key look-ups, and binlog lag. Reads only; one connection with the snapshot's
//! session settings (utf8mb4, `time_zone='+00:00'`).

use crate::config::ValidMysql;
use crate::decode::{snapshot_value, Kind};
use crate::error::{server_code, MysqlError};
use crate::position::{BinlogPos, SourcePosition};
use crate::prereq::{self, flavour_of, quote_user, replicas, replicas_verdict, ServerInfo};
use crate::snapshot::{
    convert_row, current_position, describe, quote_ident, quote_table, selected_tables, KeyState,
    SnapshotTable,
};
use crate::source::{binary_logs, connect};
use crate::tablemap::key_column_excluded;
use etcdsync_core::inspect::{plural, table_list, CheckResult, SourceInspector, SourceLag};
use etcdsync_core::value::hex;
use etcdsync_core::{async_trait, Error, Position, Result, Row, TableId, TableSchema, Value};
use mysql_async::prelude::*;
use mysql_async::{Conn, Params, Value as MyValue};
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Keys looked up per statement by [`SourceInspector::existing_keys`].
const KEYS_PER_QUERY: usize = 500;

/// The MySQL/MariaDB side of `check`, `status` and `verify`.
pub struct MysqlInspector {
    config: ValidMysql,
    conn: Option<Conn>,
    server: Option<ServerInfo>,
    known: HashMap<TableId, Arc<SnapshotTable>>,
}

impl MysqlInspector {
    /// Does no I/O: `check` reports a failed connection as a failed check.
    pub fn new(config: ValidMysql) -> Self {
        Self {
            config,
            conn: None,
            server: None,
            known: HashMap::new(),
        }
    }

    /// The connection and what the server is, opened on first use and again after it was lost.
    async fn connected(&mut self) -> Result<(&mut Conn, &ServerInfo), MysqlError> {
        if self.conn.is_none() {
            let mut conn = connect(&self.config.opts).await?;
            let version: Option<String> = conn
                .query_first("SELECT VERSION()")
                .await
                .map_err(|e| MysqlError::driver("reading the server version", e))?;
            let version = version.unwrap_or_default();
            self.server = Some(ServerInfo {
                flavour: flavour_of(&version),
                version,
                server_id: 0,
            });
            self.conn = Some(conn);
        }
        match (&mut self.conn, &self.server) {
            (Some(conn), Some(server)) => Ok((conn, server)),
            _ => Err(MysqlError::Other("no MySQL/MariaDB connection".into())),
        }
    }

    /// Passes a result on, forgetting the connection when it was lost (the next call reconnects).
    fn settle<T>(&mut self, result: Result<T, MysqlError>) -> Result<T> {
        if let Err(MysqlError::Connection { .. }) = &result {
            self.conn = None;
        }
        result.map_err(Error::from)
    }

    /// Reads the selected tables afresh, as the snapshot describes them (tables without a
    /// primary key included with an empty key).
    async fn load_tables(&mut self) -> Result<Vec<Arc<TableSchema>>, MysqlError> {
        let selection = self.config.tables.clone();
        let (conn, server) = self.connected().await?;
        let flavour = server.flavour;
        let mut known = HashMap::new();
        let mut schemas = Vec::new();
        for (id, estimate) in selected_tables(conn, &selection).await? {
            let (table, key) = describe(conn, &id, &selection, flavour, estimate).await?;
            if let KeyState::Excluded(column) = key {
                return Err(MysqlError::Config(key_column_excluded(&id, &column)));
            }
            schemas.push(table.schema.clone());
            known.insert(id, Arc::new(table));
        }
        self.known = known;
        Ok(schemas)
    }

    /// The table as last read, re-read once when unknown or when its columns changed.
    async fn known(&mut self, table: &TableSchema) -> Result<Arc<SnapshotTable>, MysqlError> {
        if table.key.is_empty() {
            return Err(MysqlError::Config(format!(
                "table {} has no primary key, so it is not synced; add a PRIMARY KEY or exclude it",
                table.id
            )));
        }
        let fits = |k: &Arc<SnapshotTable>| *k.schema == *table;
        if let Some(found) = self.known.get(&table.id).filter(|k| fits(k)) {
            return Ok(found.clone());
        }
        self.load_tables().await?;
        match self.known.get(&table.id) {
            Some(found) if fits(found) => Ok(found.clone()),
            Some(_) => Err(MysqlError::Other(format!(
                "the columns or key of {} changed while reading it; run the command again",
                table.id
            ))),
            None => Err(MysqlError::Config(format!(
                "table {} is not selected by `source.tables` or does not exist",
                table.id
            ))),
        }
    }

    async fn scan_rows(
        &mut self,
        table: &TableSchema,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Row>, MysqlError> {
        let known = self.known(table).await?;
        let (sql, params) = scan_statement(&known, after, limit)?;
        let (conn, _) = self.connected().await?;
        let rows: Vec<mysql_async::Row> = conn
            .exec(sql, Params::Positional(params))
            .await
            .map_err(|e| MysqlError::driver(format!("reading {}", table.id), e))?;
        Ok(rows
            .into_iter()
            .map(|row| convert_row(row, &known.kinds))
            .collect())
    }

    async fn find_keys(
        &mut self,
        table: &TableSchema,
        keys: &[Vec<String>],
    ) -> Result<Vec<Vec<String>>, MysqlError> {
        let known = self.known(table).await?;
        let kinds: Vec<&Kind> = known.schema.key.iter().map(|&i| &known.kinds[i]).collect();
        let candidates: Vec<Vec<(&'static str, MyValue)>> = keys
            .iter()
            .filter(|key| key.len() == kinds.len())
            .filter_map(|key| {
                kinds
                    .iter()
                    .zip(key)
                    .map(|(kind, text)| key_input(kind, text))
                    .collect::<Option<Vec<_>>>()
            })
            .collect();
        let (conn, _) = self.connected().await?;
        let mut found: HashSet<Vec<String>> = HashSet::new();
        for chunk in candidates.chunks(KEYS_PER_QUERY) {
            match lookup(conn, &known, &kinds, chunk).await {
                Ok(hits) => found.extend(hits),
                Err(MysqlError::Server { .. }) => {
                    // A text the server refuses as a value of its column: one by one, and a
                    // key whose look-up fails does not exist.
                    for one in chunk {
                        match lookup(conn, &known, &kinds, std::slice::from_ref(one)).await {
                            Ok(hits) => found.extend(hits),
                            Err(MysqlError::Server { .. }) => {}
                            Err(other) => return Err(other),
                        }
                    }
                }
                Err(other) => return Err(other),
            }
        }
        Ok(keys
            .iter()
            .filter(|key| found.contains(*key))
            .cloned()
            .collect())
    }

    async fn binlog_lag(&mut self, position: &Position) -> Result<SourceLag, MysqlError> {
        let Some(from) = SourcePosition::parse(position.as_str()) else {
            return Err(MysqlError::Config(format!(
                "the checkpoint position `{position}` is not a MySQL binlog position (file:offset [gtid=…])"
            )));
        };
        let (conn, server) = self.connected().await?;
        let server = server.clone();
        let current = current_position(conn, &server).await?;
        let logs = if from.binlog.file == current.binlog.file {
            Vec::new()
        } else {
            binary_logs(conn).await?
        };
        Ok(SourceLag {
            current_position: Some(current.to_string()),
            bytes: bytes_between(&from.binlog, &current.binlog, &logs),
        })
    }
}

#[async_trait]
impl SourceInspector for MysqlInspector {
    async fn check(&mut self) -> Vec<CheckResult> {
        let mut out = Vec::new();
        let url = self.config.redacted_url.clone();
        if let Err(error) = self.connected().await {
            self.conn = None;
            out.push(CheckResult::fail(
                "mysql connection",
                format!("cannot connect to {url}: {error}"),
                connect_fix(&error),
            ));
            return out;
        }
        out.push(CheckResult::pass("mysql connection", url));
        let config = self.config.clone();
        let result = match self.connected().await {
            Ok((conn, _)) => check_server(conn, &config, &mut out).await,
            Err(error) => Err(error),
        };
        if let Err(error) = self.settle(result) {
            out.push(CheckResult::fail(
                "mysql server",
                format!("cannot check: {error}"),
                "see the message; the user needs the privileges of docs/mysql.md §2 (SHOW GRANTS, SHOW GLOBAL VARIABLES, information_schema)",
            ));
        }
        out
    }

    async fn tables(&mut self) -> Result<Vec<Arc<TableSchema>>> {
        let loaded = self.load_tables().await;
        self.settle(loaded)
    }

    async fn scan(
        &mut self,
        table: &TableSchema,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Row>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = self.scan_rows(table, after, limit).await;
        self.settle(rows)
    }

    async fn existing_keys(
        &mut self,
        table: &TableSchema,
        keys: &[Vec<String>],
    ) -> Result<Vec<Vec<String>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let found = self.find_keys(table, keys).await;
        self.settle(found)
    }

    async fn lag(&mut self, position: &Position) -> Result<SourceLag> {
        let lag = self.binlog_lag(position).await;
        self.settle(lag)
    }
}

/// The fix for a failed connection, by what failed.
fn connect_fix(error: &MysqlError) -> String {
    let source = match error {
        MysqlError::Connection { source, .. } | MysqlError::Server { source, .. } => Some(source),
        _ => None,
    };
    match source.and_then(server_code) {
        Some(1045) => "check the user and password in source.url; create the user if needed: CREATE USER 'etcdsync'@'%' IDENTIFIED BY '…'; with the grants of docs/mysql.md §2".into(),
        Some(1130) => "this client's host may not connect as that user: CREATE USER 'etcdsync'@'%' (or the client's host) with the grants of docs/mysql.md §2".into(),
        Some(1049) => "the database in source.url does not exist: leave it out (mysql://user:password@host:3306/) or create it".into(),
        Some(1040) => "the server has too many connections: raise max_connections or close idle ones, then try again".into(),
        _ => match source {
            Some(mysql_async::Error::Io(_)) => "start the server, or fix host and port in source.url (mysql://user:password@host:3306/); check bind-address and firewalls; for TLS check ssl-mode and ssl-ca in source.url".into(),
            _ => "see the message; fix source.url (mysql://user:password@host:3306/[?ssl-mode=…])".into(),
        },
    }
}

/// Everything `check` reports once connected, in order: the prerequisites of `prereq` (the
/// server id with the connected replicas), then the selected tables.
async fn check_server(
    conn: &mut Conn,
    config: &ValidMysql,
    out: &mut Vec<CheckResult>,
) -> Result<(), MysqlError> {
    let observed = prereq::observe(conn).await?;
    let server = observed.server_info();
    for verdict in prereq::assess(&observed, server.flavour, config) {
        if verdict.result.name == "server_id" && verdict.result.ok {
            let seen = replicas(conn, config, &server).await;
            out.push(replicas_verdict(config, verdict.result, &seen));
        } else {
            out.push(verdict.result);
        }
    }
    check_tables(conn, config, &server, &observed.user, out).await
}

/// The selection matches tables; each has a usable primary key and may be read.
async fn check_tables(
    conn: &mut Conn,
    config: &ValidMysql,
    server: &ServerInfo,
    user: &str,
    out: &mut Vec<CheckResult>,
) -> Result<(), MysqlError> {
    let selection = &config.tables;
    let tables = selected_tables(conn, selection).await?;
    if tables.is_empty() {
        out.push(CheckResult::fail(
            "table selection",
            format!(
                "no base table matches include {:?} exclude {:?} (tables {user} may not read are invisible)",
                selection.include, selection.exclude
            ),
            format!(
                "create the tables, or change `source.tables.include` to `database.table` globs that match them (e.g. \"shop.*\"); \
                 and GRANT SELECT ON <database>.* TO {};",
                quote_user(user)
            ),
        ));
        return Ok(());
    }
    out.push(CheckResult::pass(
        "table selection",
        format!(
            "{}: {}",
            plural(tables.len(), "table"),
            table_list(tables.iter().map(|t| &t.0))
        ),
    ));
    let mut usable = 0;
    let mut readable = 0;
    for (id, estimate) in &tables {
        let (table, key) = describe(conn, id, selection, server.flavour, *estimate).await?;
        match key {
            KeyState::Usable => usable += 1,
            KeyState::Missing => out.push(CheckResult::fail(
                format!("primary key of {id}"),
                "no primary key: its rows have no etcd key, so the table is not synced",
                format!(
                    "ALTER TABLE {} ADD PRIMARY KEY (<columns>); or leave it out: add \"{id}\" to source.tables.exclude",
                    quote_table(id)
                ),
            )),
            KeyState::Excluded(column) => out.push(CheckResult::fail(
                format!("primary key of {id}"),
                format!("source.tables.exclude_columns removes primary-key column `{column}`, but key columns make the etcd key"),
                format!("remove `{column}` from source.tables.exclude_columns (or exclude the table {id})"),
            )),
        }
        // One row is read: a discarded tablespace fails only then.
        let probe = format!("{} LIMIT 1", table.select);
        match conn.query_drop(probe).await {
            Ok(()) => readable += 1,
            Err(e) if server_code(&e) == Some(crate::error::TABLESPACE_DISCARDED) => {
                out.push(CheckResult::fail(
                    format!("SELECT on {id}"),
                    format!("its tablespace is discarded, so a snapshot waits (retrying) until it is imported: {e}"),
                    format!(
                        "ALTER TABLE {} IMPORT TABLESPACE; (or drop the table, or add \"{id}\" to source.tables.exclude)",
                        quote_table(id)
                    ),
                ))
            }
            Err(e) if matches!(server_code(&e), Some(1142 | 1143)) => out.push(CheckResult::fail(
                format!("SELECT on {id}"),
                format!("{user} may not read {id}, so the snapshot cannot copy it: {e}"),
                format!(
                    "GRANT SELECT ON {}.* TO {}; (or ON {} for this table only)",
                    quote_ident(&id.schema),
                    quote_user(user),
                    quote_table(id)
                ),
            )),
            Err(e) => return Err(MysqlError::driver(format!("reading {id}"), e)),
        }
    }
    if usable > 0 {
        out.push(CheckResult::pass(
            "table keys",
            format!(
                "{usable} of {} selected tables have a usable primary key",
                tables.len()
            ),
        ));
    }
    if readable > 0 {
        out.push(CheckResult::pass(
            "table SELECT",
            format!("{readable} of {} selected tables readable", tables.len()),
        ));
    }
    // Charsets and unlogged cascades: the same verdicts start-up refuses on.
    out.extend(prereq::table_verdicts(conn, config).await?);
    Ok(())
}

/// The snapshot's statement limited to `limit` rows strictly after `after`, in key order.
///
/// Keyset pagination written as `k1 >= ? AND (k1 > ? OR (k1 = ? AND k2 > ?) …)` rather than
/// the row comparison `(k1, k2) > (?, ?)`: MariaDB (10.11) does not turn a row comparison into
/// an index range and would read the table from the start for every page.
pub fn scan_statement(
    table: &SnapshotTable,
    after: Option<&[Value]>,
    limit: usize,
) -> Result<(String, Vec<MyValue>), MysqlError> {
    let schema = &table.schema;
    let columns: Vec<String> = schema
        .key
        .iter()
        .map(|&i| quote_ident(&schema.columns[i].name))
        .collect();
    let mut sql = table.select.clone();
    let mut params = Vec::new();
    if let Some(after) = after {
        if after.len() != columns.len() {
            return Err(MysqlError::Other(format!(
                "scan of {} after a key of {} values, but its key has {} columns",
                schema.id,
                after.len(),
                columns.len()
            )));
        }
        let inputs = schema
            .key
            .iter()
            .zip(after)
            .map(|(&i, value)| {
                key_param(&table.kinds[i], value).ok_or_else(|| {
                    MysqlError::Other(format!(
                        "scan of {} after a key containing {value:?}, which column `{}` cannot hold",
                        schema.id, schema.columns[i].name
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (first_placeholder, first_value) = &inputs[0];
        let mut alternatives = Vec::with_capacity(columns.len());
        for level in 0..columns.len() {
            let mut terms = Vec::with_capacity(level + 1);
            for (column, (placeholder, value)) in columns.iter().zip(&inputs).take(level) {
                terms.push(format!("{column} = {placeholder}"));
                params.push(value.clone());
            }
            let (placeholder, value) = &inputs[level];
            terms.push(format!("{} > {placeholder}", columns[level]));
            params.push(value.clone());
            alternatives.push(terms.join(" AND "));
        }
        if columns.len() == 1 {
            sql.push_str(&format!(" WHERE {}", alternatives[0]));
        } else {
            sql.push_str(&format!(
                " WHERE {} >= {first_placeholder} AND ({})",
                columns[0],
                alternatives
                    .iter()
                    .map(|a| format!("({a})"))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            ));
            params.insert(0, first_value.clone());
        }
    }
    sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", columns.join(", ")));
    Ok((sql, params))
}

/// The placeholder and parameter for a key value read from the table (for keyset pagination):
/// binary as hex through `UNHEX(?)`, ENUM/SET by their number (their sort order),
/// DATETIME/TIMESTAMP in MySQL's literal syntax (UTC session); `None` for values no key
/// column holds.
pub fn key_param(kind: &Kind, value: &Value) -> Option<(&'static str, MyValue)> {
    let text = |t: &str| Some(("?", MyValue::Bytes(t.as_bytes().to_vec())));
    match (kind, value) {
        (Kind::Binary { .. }, Value::Bytes(bytes)) => {
            Some(("UNHEX(?)", MyValue::Bytes(hex(bytes).into_bytes())))
        }
        (Kind::Enum(labels), Value::Text(label)) => {
            let index = match labels.iter().position(|l| l == label) {
                Some(i) => i + 1,
                // The "invalid value" MySQL stores as index 0 and shows as ''.
                None if label.is_empty() => 0,
                None => return None,
            };
            Some(("?", MyValue::UInt(index as u64)))
        }
        (Kind::Set(labels), Value::Array(members)) => set_mask(
            labels,
            members.iter().map(|m| match m {
                Value::Text(t) => Some(t.as_str()),
                _ => None,
            }),
        )
        .map(|mask| ("?", MyValue::UInt(mask))),
        (_, Value::Int(i)) => Some(("?", MyValue::Int(*i))),
        (_, Value::UInt(u)) => Some(("?", MyValue::UInt(*u))),
        (_, Value::Float32(f)) => Some(("?", MyValue::Float(*f))),
        (_, Value::Float64(f)) => Some(("?", MyValue::Double(*f))),
        (_, Value::Timestamp(t)) => text(&mysql_datetime(t)),
        (_, Value::TimestampTz(t)) => text(&mysql_datetime(t.strip_suffix('Z').unwrap_or(t))),
        (_, Value::Text(t) | Value::Decimal(t) | Value::Date(t) | Value::Time(t)) => text(t),
        _ => None,
    }
}

/// The bit mask of SET members (`None` when one is not a member).
fn set_mask<'a>(labels: &[String], members: impl Iterator<Item = Option<&'a str>>) -> Option<u64> {
    let mut mask = 0u64;
    for member in members {
        let member = member?;
        let bit = labels.iter().position(|l| l == member)?;
        mask |= 1u64.checked_shl(u32::try_from(bit).ok()?)?;
    }
    Some(mask)
}

/// `YYYY-MM-DDTHH:MM:SS[.f]` (DESIGN §3) → `YYYY-MM-DD HH:MM:SS[.f]`.
fn mysql_datetime(text: &str) -> String {
    text.replacen('T', " ", 1)
}

/// The placeholder and parameter for a key component given as its canonical text
/// (`Value::to_text`), or `None` when the text cannot be a value of the column. Whatever the
/// server then matches is compared back by its own canonical text (see [`lookup`]).
pub fn key_input(kind: &Kind, text: &str) -> Option<(&'static str, MyValue)> {
    let bytes = |t: &str| Some(("?", MyValue::Bytes(t.as_bytes().to_vec())));
    match kind {
        Kind::Int { .. } | Kind::Year | Kind::Bit => {
            if let Ok(i) = text.parse::<i64>() {
                Some(("?", MyValue::Int(i)))
            } else {
                text.parse::<u64>().ok().map(|u| ("?", MyValue::UInt(u)))
            }
        }
        Kind::Float => text.parse::<f32>().ok().map(|f| ("?", MyValue::Float(f))),
        Kind::Double => text.parse::<f64>().ok().map(|f| ("?", MyValue::Double(f))),
        Kind::Decimal => {
            let numeric = !text.is_empty()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'-' || b == b'.');
            if numeric {
                bytes(text)
            } else {
                None
            }
        }
        Kind::Binary { .. } => {
            let hex = text.len().is_multiple_of(2)
                && text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            hex.then(|| ("UNHEX(?)", MyValue::Bytes(text.as_bytes().to_vec())))
        }
        Kind::DateTime => bytes(&mysql_datetime(text)),
        Kind::Timestamp => bytes(&mysql_datetime(text.strip_suffix('Z')?)),
        Kind::Set(labels) => {
            let members: Vec<String> = serde_json::from_str(text).ok()?;
            set_mask(labels, members.iter().map(|m| Some(m.as_str())))?;
            bytes(&members.join(","))
        }
        Kind::Json | Kind::JsonText { .. } => None,
        Kind::Date
        | Kind::Time
        | Kind::Text { .. }
        | Kind::Enum(_)
        | Kind::Inet4
        | Kind::Inet6
        | Kind::Uuid
        | Kind::Other => bytes(text),
    }
}

/// Looks keys up (`k IN (…)`, `(k1, k2) IN ((…), …)`: index ranges) and returns the canonical
/// texts of the keys found, converted as the snapshot converts them: `007` finds row 7, whose
/// key is `7`, and a case-insensitive collation finds `ABC` for `abc` — neither is the given key.
async fn lookup(
    conn: &mut Conn,
    table: &SnapshotTable,
    kinds: &[&Kind],
    keys: &[Vec<(&'static str, MyValue)>],
) -> Result<Vec<Vec<String>>, MysqlError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let schema = &table.schema;
    let columns: Vec<String> = schema
        .key
        .iter()
        .map(|&i| quote_ident(&schema.columns[i].name))
        .collect();
    let mut params = Vec::with_capacity(keys.len() * columns.len());
    let tuples: Vec<String> = keys
        .iter()
        .map(|key| {
            let placeholders: Vec<&str> = key.iter().map(|(p, _)| *p).collect();
            params.extend(key.iter().map(|(_, v)| v.clone()));
            if columns.len() == 1 {
                placeholders.join(", ")
            } else {
                format!("({})", placeholders.join(", "))
            }
        })
        .collect();
    let target = if columns.len() == 1 {
        columns[0].clone()
    } else {
        format!("({})", columns.join(", "))
    };
    let sql = format!(
        "SELECT {} FROM {} WHERE {target} IN ({})",
        columns.join(", "),
        quote_table(&schema.id),
        tuples.join(", ")
    );
    let rows: Vec<mysql_async::Row> = conn
        .exec(sql, Params::Positional(params))
        .await
        .map_err(|e| MysqlError::driver(format!("looking up keys of {}", schema.id), e))?;
    Ok(rows
        .into_iter()
        .map(|row| {
            row.unwrap_raw()
                .into_iter()
                .zip(kinds)
                .map(|(v, kind)| snapshot_value(kind, v.unwrap_or(MyValue::NULL)).to_text())
                .collect()
        })
        .collect())
}

/// Bytes of binlog from `from` to `to`: the offset difference within one file; across files the
/// rest of `from`'s file, the files in between and `to`'s offset (`logs` = `SHOW BINARY LOGS`).
/// `None` when they cannot be compared (other file names, or `from`'s file is purged).
pub fn bytes_between(from: &BinlogPos, to: &BinlogPos, logs: &[(String, u64)]) -> Option<u64> {
    match from.compare(to)? {
        Ordering::Equal | Ordering::Greater => return Some(0),
        Ordering::Less => {}
    }
    if from.file == to.file {
        return Some(to.offset - from.offset);
    }
    let start = logs.iter().position(|(file, _)| *file == from.file)?;
    let mut total = logs[start].1.saturating_sub(from.offset);
    for (file, size) in &logs[start + 1..] {
        if *file == to.file {
            return Some(total + to.offset);
        }
        total += size;
    }
    // `to`'s file is not listed yet (rotated just now): the files after `from` count whole.
    Some(total + to.offset)
}

#[cfg(test)]
mod tests;
