//! Table selection shared by sources: include/exclude globs over `schema.table` and per-table
//! column excludes. Globs know `*` (any run of characters) and `?` (one character).

use crate::change::TableId;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `tables:` in a source config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSelection {
    /// Globs of `schema.table` to sync (PostgreSQL schema, MySQL database).
    #[serde(default)]
    pub include: Vec<String>,
    /// Globs of `schema.table` to leave out even when included.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Columns never read or written, per table glob: `{ "public.users": [password] }`.
    #[serde(default)]
    pub exclude_columns: BTreeMap<String, Vec<String>>,
}

impl TableSelection {
    /// Checks that every pattern has the `schema.table` shape. `key` is the config path
    /// (`source.tables`) for messages.
    pub fn validate(&self, key: &str) -> Result<()> {
        if self.include.is_empty() {
            return Err(Error::config(format!(
                "{key}.include is empty: list the tables to sync as `schema.table` globs, e.g. include: [\"public.*\"]"
            )));
        }
        let patterns = self
            .include
            .iter()
            .map(|p| ("include", p))
            .chain(self.exclude.iter().map(|p| ("exclude", p)))
            .chain(self.exclude_columns.keys().map(|p| ("exclude_columns", p)));
        for (field, pattern) in patterns {
            if split_pattern(pattern).is_none() {
                return Err(Error::config(format!(
                    "{key}.{field}: `{pattern}` is not a `schema.table` glob; write e.g. `public.users` or `app.*`"
                )));
            }
        }
        Ok(())
    }

    /// True when the table is included and not excluded.
    pub fn matches(&self, table: &TableId) -> bool {
        self.include.iter().any(|p| pattern_matches(p, table))
            && !self.exclude.iter().any(|p| pattern_matches(p, table))
    }

    /// True when `column` of `table` is excluded.
    pub fn column_excluded(&self, table: &TableId, column: &str) -> bool {
        self.exclude_columns.iter().any(|(pattern, columns)| {
            pattern_matches(pattern, table) && columns.iter().any(|c| c == column)
        })
    }
}

fn split_pattern(pattern: &str) -> Option<(&str, &str)> {
    let (schema, table) = pattern.split_once('.')?;
    (!schema.is_empty() && !table.is_empty()).then_some((schema, table))
}

/// Matches a `schema.table` glob against a table.
pub fn pattern_matches(pattern: &str, table: &TableId) -> bool {
    match split_pattern(pattern) {
        Some((schema, name)) => {
            glob_matches(schema, &table.schema) && glob_matches(name, &table.table)
        }
        None => false,
    }
}

/// `*` matches any run (also empty), `?` exactly one character; everything else literally.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ti = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selection(include: &[&str], exclude: &[&str]) -> TableSelection {
        TableSelection {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            exclude_columns: BTreeMap::new(),
        }
    }

    #[test]
    fn globs() {
        assert!(glob_matches("*", ""));
        assert!(glob_matches("us*", "users"));
        assert!(glob_matches("*er?", "users"));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
        assert!(!glob_matches("users", "users2"));
    }

    #[test]
    fn include_then_exclude() {
        let s = selection(&["public.*", "app.orders"], &["public.secret*"]);
        assert!(s.matches(&TableId::new("public", "users")));
        assert!(!s.matches(&TableId::new("public", "secrets")));
        assert!(s.matches(&TableId::new("app", "orders")));
        assert!(!s.matches(&TableId::new("app", "users")));
    }

    #[test]
    fn validation_names_the_key() {
        let err = selection(&["users"], &[])
            .validate("source.tables")
            .expect_err("no dot");
        assert!(
            err.to_string().contains("source.tables.include: `users`"),
            "{err}"
        );
        let err = selection(&[], &[])
            .validate("source.tables")
            .expect_err("empty");
        assert!(
            err.to_string().contains("source.tables.include is empty"),
            "{err}"
        );
        selection(&["public.*"], &["x.y"])
            .validate("source.tables")
            .expect("valid");
    }

    #[test]
    fn column_excludes_by_table_glob() {
        let mut s = selection(&["public.*"], &[]);
        s.exclude_columns
            .insert("public.user*".into(), vec!["password".into()]);
        assert!(s.column_excluded(&TableId::new("public", "users"), "password"));
        assert!(!s.column_excluded(&TableId::new("public", "users"), "name"));
        assert!(!s.column_excluded(&TableId::new("public", "orders"), "password"));
    }
}
