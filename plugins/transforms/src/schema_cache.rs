//! Derived table schemas (columns renamed or dropped), computed once per source schema version.
//! Holding the source `Arc` keeps pointer comparison sound: a new schema version is a new `Arc`.

use etcdsync_core::change::{TableId, TableSchema};
use etcdsync_core::Result;
use std::collections::HashMap;
use std::sync::Arc;

/// The derived schema plus, per output column, the index of its input column.
#[derive(Debug)]
pub struct Derived {
    pub schema: Arc<TableSchema>,
    pub sources: Vec<usize>,
}

#[derive(Default)]
pub struct SchemaCache {
    entries: HashMap<TableId, (Arc<TableSchema>, Arc<Derived>)>,
}

impl SchemaCache {
    /// The derived schema for `input`, built with `derive` when `input` is a version not seen yet.
    pub fn get(
        &mut self,
        input: &Arc<TableSchema>,
        derive: impl FnOnce(&TableSchema) -> Result<Derived>,
    ) -> Result<Arc<Derived>> {
        if let Some((seen, derived)) = self.entries.get(&input.id) {
            if Arc::ptr_eq(seen, input) {
                return Ok(derived.clone());
            }
        }
        let derived = Arc::new(derive(input)?);
        self.entries
            .insert(input.id.clone(), (input.clone(), derived.clone()));
        Ok(derived)
    }
}

/// Picks the values of `sources` out of a row.
pub fn project(row: &[etcdsync_core::Value], sources: &[usize]) -> Vec<etcdsync_core::Value> {
    sources
        .iter()
        .filter_map(|&i| row.get(i).cloned())
        .collect()
}
