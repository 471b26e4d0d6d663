//! The change model (DESIGN §1): what a source sends down the pipeline. A source transaction
//! arrives as any number of `Changes` messages closed by one `Commit`, so a huge transaction
//! streams in parts and is never held whole in memory.

use crate::value::Value;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// A table: PostgreSQL schema or MySQL database, and table name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableId {
    pub schema: String,
    pub table: String,
}

impl TableId {
    pub fn new(schema: impl Into<String>, table: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            table: table.into(),
        }
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// One column as the source describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The source's type name (`int4`, `varchar`, …); informational.
    pub type_name: String,
}

impl Column {
    pub fn new(name: impl Into<String>, type_name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            type_name: type_name.into(),
        }
    }
}

/// A table's shape at the time of a change. Sources share one `Arc` per table version, so a
/// schema change mid-stream simply arrives as a new `Arc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    pub id: TableId,
    pub columns: Vec<Column>,
    /// Indices into `columns` of the key columns, in key order. Never empty for row changes;
    /// a `Truncate` may carry a schema with no columns (see [`TableSchema::name_only`]).
    pub key: Vec<usize>,
}

impl TableSchema {
    pub fn new(id: TableId, columns: Vec<Column>, key: Vec<usize>) -> Self {
        Self { id, columns, key }
    }

    /// A schema that only names the table, for changes that concern the whole table (a
    /// truncate or drop seen in a DDL statement) where the source does not know the columns.
    pub fn name_only(id: TableId) -> Self {
        Self {
            id,
            columns: Vec::new(),
            key: Vec::new(),
        }
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The key column values of a row, in key order.
    pub fn key_values<'a>(&'a self, row: &'a [Value]) -> impl Iterator<Item = &'a Value> + 'a {
        self.key.iter().filter_map(move |&i| row.get(i))
    }

    /// The key column values of `row` as owned values (for error messages and comparisons).
    pub fn key_of(&self, row: &[Value]) -> Vec<Value> {
        self.key_values(row).cloned().collect()
    }
}

/// Column values in table order.
pub type Row = Vec<Value>;

/// What happened to one row, or to a whole table.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Insert {
        row: Row,
    },
    /// `old` is present when the source knows it: always when the key changed, and the full old
    /// row under REPLICA IDENTITY FULL / binlog full image. Columns it lacks are `Value::Missing`.
    Update {
        old: Option<Row>,
        row: Row,
    },
    /// `old` holds at least the key columns.
    Delete {
        old: Row,
    },
    Truncate,
}

/// Where a transform decided a change goes. `None` fields mean the default key layout and the
/// JSON row value (DESIGN §2–3).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Route {
    /// The row's key below the sink's data prefix (`svc/name` → `{prefix}/svc/name`), already
    /// escaped per DESIGN §2.
    pub key: Option<String>,
    /// The old row's key below the data prefix, when it differs from `key` and could be computed
    /// from the old row. When it could not (the source sent only the old primary key), a tracked
    /// route lets the sink find it in its key index.
    pub old_key: Option<String>,
    /// The value to store instead of the JSON row.
    pub value: Option<Vec<u8>>,
    /// The table's keys do not follow the default layout, so the sink records each row's key in
    /// its index under the meta prefix; deletes without a computable key, truncates and snapshot
    /// clean-up go through that index.
    pub tracked: bool,
}

/// One change of one table.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub table: Arc<TableSchema>,
    pub op: Op,
    pub route: Route,
    /// Which source transaction the change belongs to and where it is in it: the high 64 bits
    /// name the transaction (pgx: its commit LSN; mysql: where it starts in the binlog), the low
    /// 64 bits grow along it, unique per change (pgx: the change's WAL offset and its index among
    /// the changes of one WAL record). A replay of a transaction whose first parts a sink already
    /// holds skips, within that transaction only, the changes up to the last one applied —
    /// whatever the source filters differently on the replay. Transforms keep it. `None`: the
    /// source has no such number (the sink then counts changes).
    pub seq: Option<u128>,
}

impl Change {
    /// Roughly the memory the change's rows hold (see [`Value::approx_bytes`]).
    pub fn approx_bytes(&self) -> usize {
        let row = |row: &[Value]| row.iter().map(Value::approx_bytes).sum::<usize>();
        match &self.op {
            Op::Insert { row: new } => row(new),
            Op::Update { old, row: new } => row(new) + old.as_deref().map_or(0, row),
            Op::Delete { old } => row(old),
            Op::Truncate => 0,
        }
    }

    pub fn new(table: Arc<TableSchema>, op: Op) -> Self {
        Self {
            table,
            op,
            route: Route::default(),
            seq: None,
        }
    }

    /// This change with its place in the source transaction ([`Change::seq`]).
    pub fn at(mut self, seq: u128) -> Self {
        self.seq = Some(seq);
        self
    }

    pub fn insert(table: Arc<TableSchema>, row: Row) -> Self {
        Self::new(table, Op::Insert { row })
    }

    pub fn update(table: Arc<TableSchema>, old: Option<Row>, row: Row) -> Self {
        Self::new(table, Op::Update { old, row })
    }

    pub fn delete(table: Arc<TableSchema>, old: Row) -> Self {
        Self::new(table, Op::Delete { old })
    }

    pub fn truncate(table: Arc<TableSchema>) -> Self {
        Self::new(table, Op::Truncate)
    }

    /// A [`Change::seq`] from the transaction's identity and the change's place in it.
    pub fn seq_of(transaction: u64, place: u64) -> u128 {
        (u128::from(transaction) << 64) | u128::from(place)
    }

    /// "insert", "update", "delete" or "truncate" (metric labels, logs).
    pub fn op_name(&self) -> &'static str {
        match self.op {
            Op::Insert { .. } => "insert",
            Op::Update { .. } => "update",
            Op::Delete { .. } => "delete",
            Op::Truncate => "truncate",
        }
    }
}

/// A source position, opaque to core: the source serialises it (PG: commit end LSN; MySQL:
/// GTID set and file/offset) and parses it back on restart.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(pub String);

impl Position {
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The end of one source transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    pub position: Position,
    pub commit_time: Option<SystemTime>,
}

/// What flows from a source through the transforms to the sink.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A snapshot begins: these tables will be written in full. The sink remembers where it
    /// stood so that keys the snapshot does not rewrite can be removed afterwards (DESIGN §6).
    SnapshotStarted { tables: Vec<TableId> },
    /// Changes of the current source transaction, or snapshot inserts. May repeat many times
    /// before the `Commit`.
    Changes(Vec<Change>),
    /// Closes the current source transaction.
    Commit(Commit),
    /// The snapshot is complete and consistent with `position`; streaming resumes after it.
    SnapshotFinished { position: Position },
    /// No transaction is open and the source has seen everything up to `position` (idle or
    /// filtered-out traffic). The sink may record it so upstream log can be released (DESIGN §5).
    Heartbeat { position: Position },
}

/// The checkpoint stored in the sink with the data it covers (DESIGN §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Which source wrote it (`pgx`, `mysql`), so a config pointed at another source type
    /// does not silently resume from a foreign position.
    pub source: String,
    pub position: Position,
    /// RFC 3339 commit time of the last applied source transaction, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_at: Option<String>,
    /// RFC 3339 time the sink applied it.
    pub applied_at: String,
}

/// Whether a checkpoint recorded by source `recorded` belongs to `source_type`, which earlier
/// versions recorded as one of `former` ([`crate::source::SourceConfig::former_names`]).
pub fn same_source(recorded: &str, source_type: &str, former: &[impl AsRef<str>]) -> bool {
    recorded == source_type || former.iter().any(|name| name.as_ref() == recorded)
}

/// RFC 3339 UTC with microseconds.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_follow_key_order() {
        let schema = TableSchema::new(
            TableId::new("s", "t"),
            vec![
                Column::new("a", "int"),
                Column::new("b", "int"),
                Column::new("c", "int"),
            ],
            vec![2, 0],
        );
        let row = vec![Value::Int(1), Value::Int(2), Value::Int(3)];
        assert_eq!(schema.key_of(&row), vec![Value::Int(3), Value::Int(1)]);
        assert_eq!(schema.column_index("b"), Some(1));
    }

    #[test]
    fn checkpoint_round_trips_as_json() {
        let checkpoint = Checkpoint {
            source: "pgx".into(),
            position: Position::new("0/16B3748"),
            committed_at: None,
            applied_at: rfc3339(SystemTime::UNIX_EPOCH),
        };
        let json = serde_json::to_string(&checkpoint).expect("serialize");
        assert_eq!(
            json,
            r#"{"source":"pgx","position":"0/16B3748","applied_at":"1970-01-01T00:00:00.000000Z"}"#
        );
        assert_eq!(
            serde_json::from_str::<Checkpoint>(&json).expect("parse"),
            checkpoint
        );
    }
}
