//! Table metadata: which tables are selected, each table's key (primary key, replica identity
//! index, `key_columns`), column types resolved through the catalog (domains to their base type,
//! arrays to their element type), and the stream's relation cache that turns pgoutput Relation
//! messages into one `Arc<TableSchema>` per table version (DESIGN §1–3).

use crate::config::Valid;
use crate::decode::{RelationMessage, TupleValue};
use crate::error::pg;
use crate::error::Problem;
use crate::types::{builtin_kind, parse_value, TypeKind};
use etcdsync_core::change::Column;
use etcdsync_core::inspect::table_list;
use etcdsync_core::tables::TableSelection;
use etcdsync_core::{Error, Result, Row, TableId, TableSchema, Value};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio_postgres::Client;

/// SQL identifier quoting.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."table"`.
pub fn quote_table(id: &TableId) -> String {
    format!("{}.{}", quote_ident(&id.schema), quote_ident(&id.table))
}

/// A selected table as found at start.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub oid: u32,
    pub id: TableId,
    /// Key column names in key order.
    pub key: Vec<String>,
}

/// A column type as the catalog describes it.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub kind: TypeKind,
    pub name: String,
}

/// Type OID → kind, cached per connection.
#[derive(Debug, Default)]
pub struct Types {
    cache: HashMap<u32, Resolved>,
}

impl Types {
    pub fn resolve<'a>(
        &'a mut self,
        client: &'a Client,
        oid: u32,
    ) -> Pin<Box<dyn Future<Output = Result<Resolved>> + Send + 'a>> {
        Box::pin(async move {
            if let Some(found) = self.cache.get(&oid) {
                return Ok(found.clone());
            }
            let row = client
                .query_opt(
                    "SELECT typname::text, typtype::text, typelem, typbasetype, typcategory::text, typlen::int4 \
                     FROM pg_type WHERE oid = $1",
                    &[&oid],
                )
                .await
                .map_err(pg(format!("looking up type {oid}")))?;
            let resolved = match row {
                None => Resolved {
                    kind: TypeKind::Text,
                    name: oid.to_string(),
                },
                Some(row) => {
                    let name: String = row.get(0);
                    let typtype: String = row.get(1);
                    let elem: u32 = row.get(2);
                    let base: u32 = row.get(3);
                    let category: String = row.get(4);
                    let len: i32 = row.get(5);
                    let kind = if let Some(kind) = builtin_kind(oid) {
                        kind
                    } else if typtype == "d" && base != 0 {
                        self.resolve(client, base).await?.kind
                    } else if category == "A" && elem != 0 && len == -1 {
                        let delim = self.delimiter(client, elem).await?;
                        let elem = self.resolve(client, elem).await?.kind;
                        TypeKind::Array {
                            elem: Box::new(elem),
                            delim,
                        }
                    } else {
                        TypeKind::Text
                    };
                    Resolved { kind, name }
                }
            };
            self.cache.insert(oid, resolved.clone());
            Ok(resolved)
        })
    }

    async fn delimiter(&self, client: &Client, elem: u32) -> Result<u8> {
        let row = client
            .query_opt(
                "SELECT typdelim::text FROM pg_type WHERE oid = $1",
                &[&elem],
            )
            .await
            .map_err(pg(format!("looking up type {elem}")))?;
        Ok(row
            .and_then(|r| r.get::<_, String>(0).bytes().next())
            .unwrap_or(b','))
    }
}

/// Every ordinary table of the database that the selection includes.
pub async fn selected_tables(
    client: &Client,
    selection: &TableSelection,
) -> Result<Vec<(u32, TableId, String)>> {
    let (logged, unlogged) = selected_by_persistence(client, selection).await?;
    warn_unlogged(&unlogged);
    Ok(logged)
}

/// Logs each selected UNLOGGED table once per process.
fn warn_unlogged(unlogged: &[TableId]) {
    for id in unlogged {
        warn_once("unlogged", id, || {
            let problem = unlogged_problem(std::slice::from_ref(id));
            tracing::warn!(
                table = %id,
                fix = %problem.fix,
                "{}; the table is not synced until it is logged (looked for again every table_refresh_interval)",
                problem.detail
            );
        });
    }
}

/// Selected UNLOGGED tables: PostgreSQL writes no WAL for them, so no publication may list them
/// and no change of theirs is ever decoded.
pub fn unlogged_problem(tables: &[TableId]) -> Problem {
    Problem::new(
        format!(
            "UNLOGGED (no WAL, so logical replication cannot follow it): {}",
            table_list(tables.iter())
        ),
        format!(
            "make it logged ({}) or leave it out with `source.tables.exclude`",
            tables
                .iter()
                .map(|id| format!("ALTER TABLE {} SET LOGGED;", quote_table(id)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    )
}

/// The selected tables, and apart the selected UNLOGGED ones.
pub async fn selected_by_persistence(
    client: &Client,
    selection: &TableSelection,
) -> Result<(Vec<(u32, TableId, String)>, Vec<TableId>)> {
    // Partitioned tables are synced whole, under their own name (their publication publishes
    // through the root); their partitions never under theirs.
    let rows = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text, \
                    c.relpersistence = 'u' \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE (c.relkind = 'r' OR (c.relkind = 'p' AND current_setting('server_version_num')::int >= 130000)) \
               AND NOT c.relispartition \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
             ORDER BY 2, 3",
            &[],
        )
        .await
        .map_err(pg("listing tables"))?;
    let (mut logged, mut unlogged) = (Vec::new(), Vec::new());
    for r in rows {
        let id = TableId::new(r.get::<_, String>(1), r.get::<_, String>(2));
        if !selection.matches(&id) {
            continue;
        }
        if r.get::<_, bool>(4) {
            unlogged.push(id);
        } else {
            logged.push((r.get::<_, u32>(0), id, r.get::<_, String>(3)));
        }
    }
    Ok((logged, unlogged))
}

/// A table's columns as pgoutput describes them (name, type), in table order: not dropped, not
/// generated. Compared with later Relation messages to notice columns changed since a copy.
pub async fn table_columns(client: &Client, oid: u32) -> Result<TableColumns> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid, a.attnum FROM pg_attribute a \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
               AND COALESCE(to_jsonb(a) ->> 'attgenerated', '') = '' ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(pg("reading a table's columns"))?;
    Ok(TableColumns {
        shape: rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, u32>(1)))
            .collect(),
        attnums: rows.iter().map(|r| r.get::<_, i16>(2)).collect(),
    })
}

/// A table's columns as the catalog has them, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableColumns {
    /// (name, type OID): what a Relation message can be compared with.
    pub shape: Vec<(String, u32)>,
    /// Their `attnum`s: a column dropped and added again under its name and type has a new one.
    /// Empty in a registry entry written before they were kept ([`crate::identity::Registry`]).
    pub attnums: Vec<i16>,
}

/// How a query names a table's own rows: `ONLY t` (an inheritance parent's children are tables of
/// their own), or `t` for a partitioned table, whose rows are all its partitions'.
pub async fn rows_of(client: &Client, oid: u32, id: &TableId) -> Result<String> {
    let partitioned: bool = client
        .query_opt("SELECT relkind = 'p' FROM pg_class WHERE oid = $1", &[&oid])
        .await
        .map_err(pg(format!("looking up the kind of {id}")))?
        .is_some_and(|r| r.get(0));
    Ok(if partitioned {
        quote_table(id)
    } else {
        format!("ONLY {}", quote_table(id))
    })
}

/// The leaf partitions of a partitioned table with their storage (`relfilenode`), in OID order;
/// `None` for a table that is not partitioned. Attaching, detaching or truncating a partition
/// changes it — none of them sends row changes through a publication that publishes via the
/// root, so the table is copied again when it changes.
pub async fn partition_fingerprint(client: &Client, oid: u32) -> Result<Option<Vec<(u32, u32)>>> {
    let partitioned: bool = client
        .query_opt("SELECT relkind = 'p' FROM pg_class WHERE oid = $1", &[&oid])
        .await
        .map_err(pg("looking up a table's kind"))?
        .is_some_and(|r| r.get(0));
    if !partitioned {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT c.oid, c.relfilenode FROM pg_partition_tree($1::oid::regclass) t \
             JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf ORDER BY c.oid",
            &[&oid],
        )
        .await
        .map_err(pg("listing the partitions of a partitioned table"))?;
    Ok(Some(
        rows.into_iter()
            .map(|r| (r.get::<_, u32>(0), r.get::<_, u32>(1)))
            .collect(),
    ))
}

/// Looks up one table by OID (a table first seen in the stream).
pub async fn table_by_oid(client: &Client, oid: u32) -> Result<Option<(TableId, String)>> {
    let row = client
        .query_opt(
            "SELECT n.nspname::text, c.relname::text, c.relreplident::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[&oid],
        )
        .await
        .map_err(pg(format!("looking up table {oid}")))?;
    Ok(row.map(|r| {
        (
            TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            r.get::<_, String>(2),
        )
    }))
}

async fn index_columns(client: &Client, oid: u32, condition: &str) -> Result<Vec<Vec<String>>> {
    let sql = format!(
        "SELECT i.indexrelid, array_agg(a.attname::text ORDER BY k.ord), bool_and(a.attnotnull) \
         FROM pg_index i \
         CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
         WHERE i.indrelid = $1 AND {condition} AND i.indpred IS NULL AND i.indexprs IS NULL \
           AND i.indisvalid \
         GROUP BY i.indexrelid, i.indisprimary \
         ORDER BY i.indisprimary DESC, count(*), i.indexrelid"
    );
    let rows = client
        .query(&sql, &[&oid])
        .await
        .map_err(pg("looking up table keys"))?;
    Ok(rows
        .into_iter()
        .filter(|r| r.get::<_, Option<bool>>(2).unwrap_or(false))
        .map(|r| r.get::<_, Vec<String>>(1))
        .collect())
}

fn no_key(id: &TableId, why: &str) -> Problem {
    Problem::new(
        format!("table {id} has no usable key ({why})"),
        format!(
            "add a primary key (ALTER TABLE {t} ADD PRIMARY KEY (…)), \
             or set `source.key_columns: {{ \"{id}\": [col, …] }}` together with ALTER TABLE {t} REPLICA IDENTITY FULL, \
             or leave the table out with `source.tables.exclude: [\"{id}\"]`",
            t = quote_table(id)
        ),
    )
}

/// The key of a table, as the stream will be able to identify rows: its primary key, its
/// replica identity index, or configured `key_columns` (DESIGN §2; issue 3 §4). A table without
/// a usable key is a configuration error naming the fix.
pub async fn table_key(
    client: &Client,
    oid: u32,
    id: &TableId,
    replident: &str,
    key_columns: &BTreeMap<TableId, Vec<String>>,
    selection: &TableSelection,
) -> Result<Option<Vec<String>>> {
    match resolve_key(client, oid, id, replident, key_columns, selection).await? {
        Ok(key) => Ok(Some(key)),
        Err(KeyIssue::Keyless(problem)) => {
            warn_keyless_once(id, &problem);
            Ok(None)
        }
        Err(KeyIssue::Invalid(problem)) => Err(problem.into_error()),
    }
}

/// Why a selected table has no key the sink can use.
#[derive(Debug, Clone)]
pub enum KeyIssue {
    /// No primary key or identity index: the table is left out, with a warning, until it has one.
    Keyless(Problem),
    /// The configuration names a key that cannot work (`key_columns`, `exclude_columns`).
    Invalid(Problem),
}

impl KeyIssue {
    pub fn into_problem(self) -> Problem {
        match self {
            KeyIssue::Keyless(problem) | KeyIssue::Invalid(problem) => problem,
        }
    }
}

/// Runs `warn` once per process, table and `what` (the table refresh looks at a table again and
/// again).
fn warn_once(what: &'static str, id: &TableId, warn: impl FnOnce()) {
    type Warned = std::collections::HashSet<(&'static str, TableId)>;
    static WARNED: std::sync::OnceLock<std::sync::Mutex<Warned>> = std::sync::OnceLock::new();
    let first = WARNED
        .get_or_init(Default::default)
        .lock()
        .map(|mut warned| warned.insert((what, id.clone())))
        .unwrap_or(true);
    if first {
        warn();
    }
}

/// Logs a keyless table once per process.
fn warn_keyless_once(id: &TableId, problem: &Problem) {
    warn_once("keyless", id, || {
        tracing::warn!(
            table = %id,
            fix = %problem.fix,
            "{}; the table is not synced until it has one (looked for again every table_refresh_interval)",
            problem.detail
        );
    });
}

/// [`table_key`] for `check`: the outer error is a failed query, the inner one a table whose
/// key cannot be used, with its fix.
pub async fn resolve_key(
    client: &Client,
    oid: u32,
    id: &TableId,
    replident: &str,
    key_columns: &BTreeMap<TableId, Vec<String>>,
    selection: &TableSelection,
) -> Result<std::result::Result<Vec<String>, KeyIssue>> {
    let primary = index_columns(client, oid, "i.indisprimary")
        .await?
        .into_iter()
        .next();
    let identity = index_columns(client, oid, "i.indisreplident")
        .await?
        .into_iter()
        .next();
    let key = if let Some(configured) = key_columns.get(id) {
        let same_as = |cols: &Option<Vec<String>>| cols.as_ref().is_some_and(|c| c == configured);
        let covered = match replident {
            "f" => true,
            "d" => same_as(&primary),
            "i" => same_as(&identity),
            _ => false,
        };
        if !covered {
            return Ok(Err(KeyIssue::Invalid(Problem::new(
                format!(
                    "at `source.key_columns.{id}`: deletes and key changes of {id} would not carry these columns"
                ),
                format!("run ALTER TABLE {} REPLICA IDENTITY FULL", quote_table(id)),
            ))));
        }
        let nullable: Vec<String> = client
            .query(
                "SELECT a.attname::text FROM pg_attribute a \
                 WHERE a.attrelid = $1 AND a.attname = ANY($2) AND NOT a.attnotnull AND a.attnum > 0",
                &[&oid, configured],
            )
            .await
            .map_err(pg("looking up key columns"))?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        if !nullable.is_empty() {
            return Ok(Err(KeyIssue::Invalid(Problem::new(
                format!(
                    "at `source.key_columns.{id}`: {} may be NULL, and a key needs a value in every row",
                    nullable.join(", ")
                ),
                format!(
                    "run ALTER TABLE {} ALTER COLUMN {} SET NOT NULL, or name other columns",
                    quote_table(id),
                    nullable[0]
                ),
            ))));
        }
        let unique = index_columns(client, oid, "i.indisunique").await?;
        if !unique
            .iter()
            .any(|index| index.iter().all(|c| configured.contains(c)))
        {
            return Ok(Err(KeyIssue::Invalid(Problem::new(
                format!(
                    "at `source.key_columns.{id}`: {} is not covered by a unique index on NOT NULL columns, \
                     so two rows could share one key and overwrite each other in etcd",
                    configured.join(", ")
                ),
                format!(
                    "create one (ALTER TABLE {t} ALTER COLUMN … SET NOT NULL; CREATE UNIQUE INDEX ON {t} ({cols})), \
                     or name columns that have one",
                    t = quote_table(id),
                    cols = configured.join(", ")
                ),
            ))));
        }
        configured.clone()
    } else {
        let found = match replident {
            "d" => primary.ok_or_else(|| no_key(id, "no primary key")),
            "i" => identity.ok_or_else(|| no_key(id, "its replica identity index is missing")),
            "f" => match primary {
                Some(pk) => Ok(pk),
                None => index_columns(client, oid, "i.indisunique")
                    .await?
                    .into_iter()
                    .next()
                    .ok_or_else(|| no_key(id, "REPLICA IDENTITY FULL without a primary key or unique index on NOT NULL columns")),
            },
            _ => Err(Problem::new(
                format!(
                    "table {id} has REPLICA IDENTITY NOTHING, so its updates and deletes cannot be followed"
                ),
                format!(
                    "run ALTER TABLE {} REPLICA IDENTITY DEFAULT, or exclude it with `source.tables.exclude`",
                    quote_table(id)
                ),
            )),
        };
        match found {
            Ok(key) => key,
            Err(problem) => return Ok(Err(KeyIssue::Keyless(problem))),
        }
    };
    if let Some(col) = key.iter().find(|c| selection.column_excluded(id, c)) {
        return Ok(Err(KeyIssue::Invalid(Problem::new(
            format!(
                "at `source.tables.exclude_columns`: `{col}` is a key column of {id} and cannot be excluded"
            ),
            format!("remove `{col}` from `source.tables.exclude_columns` for {id}"),
        ))));
    }
    Ok(Ok(key))
}

/// The table a Relation message names, as pgoutput decoded it (its name at that WAL position).
pub fn message_table(message: &RelationMessage) -> TableId {
    let namespace = if message.namespace.is_empty() {
        "pg_catalog"
    } else {
        message.namespace.as_str()
    };
    TableId::new(namespace, message.name.as_str())
}

/// A table's shape as the stream describes it: the schema handed to the pipeline and, per
/// column sent by pgoutput, its kind (`None` for excluded columns).
#[derive(Debug, Clone)]
pub struct Relation {
    pub schema: Arc<TableSchema>,
    kinds: Vec<Option<TypeKind>>,
}

/// Builds a schema from columns in table order and key column names; `key_flags` is the fallback
/// when the key names are not all present (a key column renamed while running).
pub fn build_schema(
    id: TableId,
    columns: Vec<Column>,
    key: &[String],
    key_flags: Option<&[bool]>,
) -> Result<TableSchema> {
    let mut indices: Vec<usize> = key
        .iter()
        .filter_map(|k| columns.iter().position(|c| &c.name == k))
        .collect();
    if indices.len() != key.len() || indices.is_empty() {
        indices = key_flags
            .map(|flags| {
                flags
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| **f)
                    .map(|(i, _)| i)
                    .collect()
            })
            .unwrap_or_default();
    }
    if indices.is_empty() {
        return Err(no_key(&id, "its key columns are not among the synced columns").into_error());
    }
    Ok(TableSchema::new(id, columns, indices))
}

impl Relation {
    /// From a pgoutput Relation message. `key` is the table's key resolved from the catalog.
    /// The relation of `message`, synced as table `id` (its name in the sink, which after a
    /// rename can differ from the message's until the table is copied under the new one).
    pub async fn from_message(
        message: &RelationMessage,
        id: TableId,
        key: &[String],
        selection: &TableSelection,
        types: &mut Types,
        client: &Client,
    ) -> Result<Self> {
        let mut columns = Vec::new();
        let mut kinds = Vec::new();
        let mut flags = Vec::new();
        for column in &message.columns {
            if selection.column_excluded(&id, &column.name) {
                kinds.push(None);
                continue;
            }
            let resolved = types.resolve(client, column.type_oid).await?;
            columns.push(Column::new(column.name.clone(), resolved.name));
            kinds.push(Some(resolved.kind));
            flags.push(column.is_key);
        }
        let schema = build_schema(id, columns, key, Some(&flags))?;
        Ok(Relation {
            schema: Arc::new(schema),
            kinds,
        })
    }

    /// Converts a tuple. `old_key_only`: an old row sent as key only (`K`), whose non-key
    /// columns are `Missing`; `old`: any old row, where an unsent value is `Missing` too.
    pub fn row(&self, values: &[TupleValue], old: bool, old_key_only: bool) -> Result<Row> {
        if values.len() != self.kinds.len() {
            return Err(Error::fatal(format!(
                "pgoutput sent {} columns for {} but its relation has {}",
                values.len(),
                self.schema.id,
                self.kinds.len()
            )));
        }
        let mut row = Vec::with_capacity(self.schema.columns.len());
        for (value, kind) in values.iter().zip(&self.kinds) {
            let Some(kind) = kind else { continue };
            let index = row.len();
            let value = match value {
                TupleValue::Null if old_key_only && !self.schema.key.contains(&index) => {
                    Value::Missing
                }
                TupleValue::Null => Value::Null,
                TupleValue::Unchanged if old => Value::Missing,
                TupleValue::Unchanged => Value::Unchanged,
                TupleValue::Text(bytes) => parse_value(kind, &String::from_utf8_lossy(bytes)),
                TupleValue::Binary(bytes) => Value::Bytes(bytes.to_vec()),
            };
            row.push(value);
        }
        Ok(row)
    }
}

/// The selected tables with their keys, in table-id order. A table without a primary key or
/// identity index, or an UNLOGGED one, is left out with a warning (the table refresh picks it up
/// once it can be synced; with `manage_publication: false` either is an error naming the fix); a
/// configured key that cannot work is an error naming the fix.
pub(crate) async fn resolve_tables(client: &Client, valid: &Valid) -> Result<Vec<TableInfo>> {
    let (selected, unlogged) = selected_by_persistence(client, &valid.tables).await?;
    if !unlogged.is_empty() && !valid.manage_publication {
        // Not left out quietly: a publication that does not name its tables (FOR ALL TABLES)
        // lets a synced table become unlogged, and its changes stop.
        return Err(unlogged_problem(&unlogged).into_error());
    }
    warn_unlogged(&unlogged);
    let mut tables = Vec::new();
    for (oid, id, replident) in selected {
        let Some(key) = table_key(
            client,
            oid,
            &id,
            &replident,
            &valid.key_columns,
            &valid.tables,
        )
        .await?
        else {
            if !valid.manage_publication {
                return Err(Error::config(format!(
                    "table {id} has no usable key, and with `source.manage_publication: false` etcdsync \
                     cannot copy it later once it has one: add a primary key, or exclude it with \
                     `source.tables.exclude`"
                )));
            }
            continue;
        };
        tables.push(TableInfo { oid, id, key });
    }
    tables.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn relation(kinds: Vec<Option<TypeKind>>, columns: &[&str], key: Vec<usize>) -> Relation {
        let schema = TableSchema::new(
            TableId::new("public", "t"),
            columns.iter().map(|c| Column::new(*c, "x")).collect(),
            key,
        );
        Relation {
            schema: Arc::new(schema),
            kinds,
        }
    }

    fn t(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn rows_skip_excluded_columns_and_mark_unsent_values() {
        let rel = relation(
            vec![Some(TypeKind::Int), None, Some(TypeKind::Text)],
            &["id", "name"],
            vec![0],
        );
        assert_eq!(
            rel.row(&[t("1"), t("secret"), TupleValue::Unchanged], false, false)
                .expect("row"),
            vec![Value::Int(1), Value::Unchanged]
        );
        assert_eq!(
            rel.row(&[t("1"), TupleValue::Null, TupleValue::Null], true, true)
                .expect("row"),
            vec![Value::Int(1), Value::Missing]
        );
        assert_eq!(
            rel.row(&[t("1"), TupleValue::Null, TupleValue::Null], true, false)
                .expect("row"),
            vec![Value::Int(1), Value::Null]
        );
        assert!(rel.row(&[t("1")], false, false).is_err());
    }

    #[test]
    fn schema_key_by_name_then_flags() {
        let cols = vec![Column::new("a", "int4"), Column::new("b", "text")];
        let s = build_schema(
            TableId::new("s", "t"),
            cols.clone(),
            &["b".into(), "a".into()],
            None,
        )
        .expect("schema");
        assert_eq!(s.key, vec![1, 0]);
        let s = build_schema(
            TableId::new("s", "t"),
            cols.clone(),
            &["gone".into()],
            Some(&[true, false]),
        )
        .expect("flags");
        assert_eq!(s.key, vec![0]);
        let err = build_schema(TableId::new("s", "t"), cols, &[], Some(&[false, false]))
            .expect_err("no key");
        assert!(err.to_string().contains("s.t has no usable key"), "{err}");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_table(&TableId::new("a\"b", "c")), "\"a\"\"b\".\"c\"");
    }
}
