//! Read-only access to a source or sink for the operator commands `check`, `status` and
//! `verify` (and `verify --repair`'s writes): plugins implement these next to their run-time
//! traits; the CLI orchestrates them without knowing any database.

use crate::change::{Checkpoint, Position, Row, TableId, TableSchema};
use crate::error::Result;
use crate::value::Value;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One prerequisite as `etcdsync check` prints it: `[ok] name: detail` or
/// `[FAIL] name: detail — fix: …`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// Short name of what is checked (`wal_level`, `etcd reachable`, `table public.users key`).
    pub name: String,
    pub ok: bool,
    /// What was found (`logical`, `3.4.23`, `no primary key`).
    pub detail: String,
    /// For failures: the exact change that fixes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl CheckResult {
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// `1 table`, `2 tables`: a count with its noun, for check details.
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Table names for a check detail: at most ten, then how many more.
pub fn table_list<'a>(ids: impl Iterator<Item = &'a TableId>) -> String {
    let ids: Vec<String> = ids.map(ToString::to_string).collect();
    if ids.len() > 10 {
        format!("{}, … ({} more)", ids[..10].join(", "), ids.len() - 10)
    } else {
        ids.join(", ")
    }
}

/// How far the source is ahead of a position, as far as it can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceLag {
    /// The source's current position (PG: current WAL LSN; MySQL: binlog file:offset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_position: Option<String>,
    /// Bytes of WAL/binlog between the position and the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// Read access to the source database, for `check`, `status` and `verify`.
#[async_trait]
pub trait SourceInspector: Send {
    /// Every prerequisite, one result each. A failure to connect is a failed check, not an error.
    async fn check(&mut self) -> Vec<CheckResult>;

    /// The selected tables with their current schemas (columns after `exclude_columns`, key
    /// columns as the source would use them), sorted by table id.
    async fn tables(&mut self) -> Result<Vec<Arc<TableSchema>>>;

    /// Up to `limit` rows of `table` in key order, strictly after the key `after` (key column
    /// values in key order). Values encode exactly as the snapshot's would.
    async fn scan(
        &mut self,
        table: &TableSchema,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Row>>;

    /// Which of these keys exist in `table`, each key given as the text of its key columns
    /// (`Value::to_text`, the unescaped key components). Returns the subset that exists. Keys
    /// whose text cannot be a value of the column type simply do not exist.
    async fn existing_keys(
        &mut self,
        table: &TableSchema,
        keys: &[Vec<String>],
    ) -> Result<Vec<Vec<String>>>;

    /// How far the source is ahead of `position`.
    async fn lag(&mut self, position: &Position) -> Result<SourceLag>;
}

/// How far `etcdsync check` may go beyond reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// `--write-probe`: write to find out whether writes work (the sink documents exactly what
    /// it writes, and removes it). Off: the sink's check sends no write request at all and says
    /// which checks it could not make without one.
    pub write_probe: bool,
}

/// Read access (and `verify --repair`'s writes) to the sink's store.
#[async_trait]
pub trait SinkInspector: Send {
    /// Every prerequisite, one result each. A failure to connect is a failed check. Writes
    /// nothing unless `options.write_probe` is set.
    async fn check(&mut self, options: CheckOptions) -> Vec<CheckResult>;

    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>>;

    /// The metadata documents the running pipeline keeps (`status`, `snapshot`, `leader`…),
    /// by name, as JSON.
    async fn metadata(&mut self) -> Result<BTreeMap<String, serde_json::Value>>;

    /// The full key of a row of `table` under the default layout, and of a route key.
    fn row_key(&self, table: &TableId, key: &[Value]) -> String;
    fn route_key(&self, route_key: &str) -> String;

    /// Values of these keys (`None` where absent), in the same order.
    async fn get(&mut self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>>;

    /// Up to `limit` keys and values under the data prefix, in key order, strictly after `after`.
    async fn scan(&mut self, after: Option<&str>, limit: usize) -> Result<Vec<(String, Vec<u8>)>>;

    /// For a key under the data prefix: the table and unescaped key components of the row that
    /// owns it — from the default layout, or from the key index for template keys. `None` for
    /// keys no row layout explains.
    async fn owner(&mut self, key: &str) -> Result<Option<(TableId, Vec<String>)>>;

    /// The tables this pipeline has written rows of, when the sink records them: `verify
    /// --repair` deletes keys of no other table outside the selection (another pipeline may
    /// share the data prefix). `None` (the default): not recorded, so it deletes none.
    async fn written_tables(&mut self) -> Result<Option<std::collections::HashSet<TableId>>> {
        Ok(None)
    }

    /// Number of keys a table has under the data prefix (default layout or key index).
    async fn count(&mut self, table: &TableId) -> Result<u64>;

    /// Writes `puts` and deletes `deletes` (full keys under the data prefix), in batches within
    /// the server's limits. Used by `verify --repair` only.
    async fn repair(&mut self, puts: Vec<(String, Vec<u8>)>, deletes: Vec<String>) -> Result<()>;
}
