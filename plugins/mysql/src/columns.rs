//! MariaDB column types that neither TABLE_MAP events nor result sets name: JSON (a LONGTEXT
//! with a `json_valid(col)` CHECK constraint), INET4, INET6 and UUID (fixed binary in the
//! binlog). Read from information_schema per table, for the snapshot and the binlog alike, so
//! both render these columns the same way (DESIGN §3).

use crate::error::{MysqlError, Result};
use etcdsync_core::TableId;
use mysql_async::prelude::*;
use mysql_async::Conn;
use std::collections::HashMap;

/// What information_schema says a column really is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// Text constrained by `CHECK (json_valid(col))` (MariaDB's JSON type).
    Json,
    Inet4,
    Inet6,
    Uuid,
}

/// The hints of one table, by column name, and whether they come from MariaDB (whose TABLE_MAP
/// charset metadata counts GEOMETRY and COMPRESSED columns among character columns).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnHints {
    by_name: HashMap<String, Hint>,
    mariadb: bool,
}

impl ColumnHints {
    /// Marks the hints as read from a MariaDB server.
    pub fn from_mariadb(mut self) -> Self {
        self.mariadb = true;
        self
    }

    /// True when read from MariaDB ([`read_hints`] is MariaDB-only).
    pub fn mariadb(&self) -> bool {
        self.mariadb
    }

    pub fn get(&self, column: &str) -> Option<Hint> {
        self.by_name.get(column).copied()
    }

    pub fn insert(&mut self, column: impl Into<String>, hint: Hint) {
        self.by_name.insert(column.into(), hint);
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Builds the hints from `(column, DATA_TYPE)` pairs and the table's CHECK clauses.
    pub fn from_schema<'a>(
        data_types: impl IntoIterator<Item = (&'a str, &'a str)>,
        check_clauses: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let mut hints = ColumnHints::default();
        for (column, data_type) in data_types {
            let hint = match data_type.to_ascii_lowercase().as_str() {
                "inet4" => Hint::Inet4,
                "inet6" => Hint::Inet6,
                "uuid" => Hint::Uuid,
                _ => continue,
            };
            hints.insert(column, hint);
        }
        for clause in check_clauses {
            if let Some(column) = json_valid_column(clause) {
                hints.by_name.entry(column).or_insert(Hint::Json);
            }
        }
        hints
    }
}

/// Reads the hints of `table` on MariaDB (two small information_schema queries).
pub async fn read_hints(conn: &mut Conn, table: &TableId) -> Result<ColumnHints> {
    let types: Vec<(String, String)> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
             AND DATA_TYPE IN ('inet4', 'inet6', 'uuid')",
            (&table.schema, &table.table),
        )
        .await
        .map_err(|e| MysqlError::driver(format!("reading the column types of {table}"), e))?;
    let checks: Vec<String> = conn
        .exec(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
            (&table.schema, &table.table),
        )
        .await
        .map_err(|e| {
            MysqlError::driver(
                format!("reading the CHECK constraints of {table} (to find JSON columns)"),
                e,
            )
        })?;
    Ok(ColumnHints::from_schema(
        types.iter().map(|(c, t)| (c.as_str(), t.as_str())),
        checks.iter().map(String::as_str),
    )
    .from_mariadb())
}

/// The column of a CHECK clause that is exactly `json_valid(`col`)` (as MariaDB stores the
/// constraint its JSON type adds, and as users write it). Anything more complex does not make
/// every value valid JSON and is ignored.
pub fn json_valid_column(clause: &str) -> Option<String> {
    let clause = clause.trim();
    let lower = clause.to_ascii_lowercase();
    let rest = lower.strip_prefix("json_valid")?;
    let offset = clause.len() - rest.len();
    let inner = clause[offset..].trim_start().strip_prefix('(')?.trim_end();
    let inner = inner.strip_suffix(')')?.trim();
    let name = if let Some(quoted) = inner.strip_prefix('`') {
        let body = quoted.strip_suffix('`')?;
        // Inside backquotes a literal backquote is doubled.
        let mut name = String::new();
        let mut chars = body.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '`' && chars.next() != Some('`') {
                return None;
            }
            name.push(c);
        }
        name
    } else {
        if inner.is_empty()
            || !inner
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '$')
        {
            return None;
        }
        inner.to_string()
    };
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_valid_clauses() {
        assert_eq!(json_valid_column("json_valid(`j`)").as_deref(), Some("j"));
        assert_eq!(
            json_valid_column(" JSON_VALID ( `my col` ) ").as_deref(),
            Some("my col")
        );
        assert_eq!(
            json_valid_column("json_valid(`a``b`)").as_deref(),
            Some("a`b")
        );
        assert_eq!(json_valid_column("json_valid(doc)").as_deref(), Some("doc"));
        assert_eq!(json_valid_column("json_valid(`j`) or `j` is null"), None);
        assert_eq!(json_valid_column("json_valid(`a`,`b`)"), None);
        assert_eq!(json_valid_column("`x` > 0"), None);
        assert_eq!(json_valid_column("json_valid(`a`b`)"), None);
    }

    #[test]
    fn hints_from_types_and_checks() {
        let hints = ColumnHints::from_schema(
            [
                ("ip", "inet6"),
                ("u", "UUID"),
                ("v4", "inet4"),
                ("n", "int"),
            ],
            ["json_valid(`doc`)", "`n` > 0", "json_valid(`ip`)"],
        );
        assert_eq!(hints.get("doc"), Some(Hint::Json));
        assert_eq!(hints.get("ip"), Some(Hint::Inet6), "the data type wins");
        assert_eq!(hints.get("u"), Some(Hint::Uuid));
        assert_eq!(hints.get("v4"), Some(Hint::Inet4));
        assert_eq!(hints.get("n"), None);
        assert!(ColumnHints::from_schema([], []).is_empty());
    }
}
