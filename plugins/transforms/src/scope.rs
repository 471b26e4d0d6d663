//! `tables:` of a transform: which tables it applies to (globs of `schema.table`).

use etcdsync_core::change::TableId;
use etcdsync_core::tables::pattern_matches;
use etcdsync_core::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TableScope(Vec<String>);

impl TableScope {
    pub fn validate(&self, transform: &str) -> Result<()> {
        if self.0.is_empty() {
            return Err(Error::config(format!(
                "{transform}: `tables` is empty; list the tables it applies to as `schema.table` globs (\"*.*\" for all)"
            )));
        }
        for pattern in &self.0 {
            if !pattern.contains('.') || pattern.starts_with('.') || pattern.ends_with('.') {
                return Err(Error::config(format!(
                    "{transform}: tables: `{pattern}` is not a `schema.table` glob; write e.g. `public.settings` or `*.*`"
                )));
            }
        }
        Ok(())
    }

    pub fn matches(&self, table: &TableId) -> bool {
        self.0.iter().any(|p| pattern_matches(p, table))
    }
}

#[cfg(test)]
impl TableScope {
    pub fn of(patterns: &[&str]) -> Self {
        Self(patterns.iter().map(|p| p.to_string()).collect())
    }
}
