//! A table is one identity for its whole life: its OID (DESIGN §2). The registry maps each synced
//! OID to the name its keys live under in the sink; comparing it with the catalog finds renames
//! (the keys move: the table is copied under its new name and the old name's keys are removed
//! in the same snapshot step), drops and renames out of the selection (the keys are removed),
//! and drop-and-recreate (a new OID under an old name: removed, then copied).
//!
//! The registry is kept as the comment of the managed publication, written only once the sink
//! has acknowledged the step it describes, so a rename or drop that happened while etcdsync was
//! down (or during an unfinished step) is found again at the next start.

use crate::error::pg;
use crate::relations::{quote_ident, TableColumns};
use etcdsync_core::tables::TableSelection;
use etcdsync_core::{Result, TableId};
use std::collections::BTreeMap;
use tokio_postgres::Client;

/// OID → the name its keys are under, and the columns (name, type, attnum) its rows were copied
/// with: the synced ones, so a change of `exclude_columns` counts as a change of columns too
/// (no attnums in entries written before they were kept). For a
/// partitioned table also its leaf partitions as copied
/// ([`crate::relations::partition_fingerprint`]), so a partition attached, detached or
/// truncated while etcdsync was stopped is found at the next start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    pub tables: BTreeMap<u32, TableId>,
    pub columns: BTreeMap<u32, TableColumns>,
    pub partitions: BTreeMap<u32, Vec<(u32, u32)>>,
}

/// One registry entry as the comment holds it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Entry {
    /// `schema` U+001F `table`.
    t: String,
    /// Columns as (name, type OID); absent in entries written before columns were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<Vec<(String, u32)>>,
    /// The columns' `attnum`s; absent in entries written before they were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<Vec<i16>>,
    /// Leaf partitions as (OID, relfilenode), for a partitioned table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<Vec<(u32, u32)>>,
}

/// What the catalog says about the registered tables.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Keys to remove now: tables dropped, renamed out of the selection, or attached as a
    /// partition (their rows are synced through the partitioned table now).
    pub retire: Vec<TableId>,
    /// Their OIDs: later changes of them are ignored.
    pub gone: Vec<u32>,
    /// Renamed within the selection: (OID, old name, new name). The new name is copied, and the
    /// old name's keys are removed by the same snapshot step.
    pub renamed: Vec<(u32, TableId, TableId)>,
    /// Same name, but columns added, dropped, renamed or retyped since the copy: copied again.
    pub reshaped: Vec<TableId>,
}

impl Registry {
    /// The registry kept with `publication`; `None` when there is none yet.
    pub async fn read(client: &Client, publication: &str) -> Result<Option<Registry>> {
        let row = client
            .query_opt(
                "SELECT obj_description(p.oid, 'pg_publication') FROM pg_publication p WHERE p.pubname = $1",
                &[&publication],
            )
            .await
            .map_err(pg(format!("reading the table registry of publication {publication}")))?;
        let Some(text) = row.and_then(|r| r.get::<_, Option<String>>(0)) else {
            return Ok(None);
        };
        Ok(Self::parse(&text))
    }

    /// Parses the comment; one that etcdsync did not write counts as no registry.
    fn parse(text: &str) -> Option<Registry> {
        let body = text.strip_prefix(COMMENT_PREFIX)?;
        let entries: BTreeMap<String, Entry> = serde_json::from_str(body).ok()?;
        let mut registry = Registry::default();
        for (oid, entry) in entries {
            let oid: u32 = oid.parse().ok()?;
            let (schema, table) = split_name(&entry.t)?;
            registry.tables.insert(oid, TableId::new(schema, table));
            if let Some(shape) = entry.c {
                let attnums = entry.n.unwrap_or_default();
                registry
                    .columns
                    .insert(oid, TableColumns { shape, attnums });
            }
            if let Some(partitions) = entry.p {
                registry.partitions.insert(oid, partitions);
            }
        }
        Some(registry)
    }

    fn render(&self) -> String {
        let entries: BTreeMap<String, Entry> = self
            .tables
            .iter()
            .map(|(oid, id)| {
                (
                    oid.to_string(),
                    Entry {
                        t: format!("{}\u{1f}{}", id.schema, id.table),
                        c: self.columns.get(oid).map(|c| c.shape.clone()),
                        n: self
                            .columns
                            .get(oid)
                            .filter(|c| !c.attnums.is_empty())
                            .map(|c| c.attnums.clone()),
                        p: self.partitions.get(oid).cloned(),
                    },
                )
            })
            .collect();
        format!(
            "{COMMENT_PREFIX}{}",
            serde_json::to_string(&entries).unwrap_or_default()
        )
    }

    pub async fn write(&self, client: &Client, publication: &str) -> Result<()> {
        let text = self.render().replace('\'', "''");
        client
            .batch_execute(&format!(
                "COMMENT ON PUBLICATION {} IS '{text}'",
                quote_ident(publication)
            ))
            .await
            .map_err(pg(format!(
                "recording the table registry on publication {publication}"
            )))
    }

    /// Compares the registry with the catalog and the selection.
    pub async fn reconcile(
        &self,
        client: &Client,
        selection: &TableSelection,
    ) -> Result<Reconciled> {
        let oids: Vec<u32> = self.tables.keys().copied().collect();
        let rows = client
            .query(
                "SELECT c.oid, n.nspname::text, c.relname::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid = ANY($1) AND NOT c.relispartition",
                &[&oids],
            )
            .await
            .map_err(pg("looking up the synced tables by OID"))?;
        let current: BTreeMap<u32, TableId> = rows
            .into_iter()
            .map(|r| {
                (
                    r.get(0),
                    TableId::new(r.get::<_, String>(1), r.get::<_, String>(2)),
                )
            })
            .collect();
        let mut out = Reconciled::default();
        for (oid, synced) in &self.tables {
            match current.get(oid) {
                Some(now) if now == synced && selection.matches(now) => {
                    if let Some(copied) = self.columns.get(oid) {
                        let columns = crate::relations::table_columns(client, *oid).await?;
                        let synced = synced_columns(selection, now, columns);
                        let renumbered =
                            !copied.attnums.is_empty() && copied.attnums != synced.attnums;
                        if copied.shape != synced.shape || renumbered {
                            out.reshaped.push(now.clone());
                            continue;
                        }
                    }
                    // A partitioned table recorded without its partitions (by a version that
                    // did not keep them) is copied once: a change made across the upgrade
                    // would not be found otherwise.
                    let leaves = crate::relations::partition_fingerprint(client, *oid).await?;
                    if leaves.is_some() && leaves.as_ref() != self.partitions.get(oid) {
                        out.reshaped.push(now.clone());
                    }
                }
                Some(now) if selection.matches(now) => {
                    out.renamed.push((*oid, synced.clone(), now.clone()));
                }
                _ => {
                    out.retire.push(synced.clone());
                    out.gone.push(*oid);
                }
            }
        }
        Ok(out)
    }
}

/// The columns of `table` that are synced (not excluded by `source.tables.exclude_columns`).
pub fn synced_columns(
    selection: &TableSelection,
    table: &TableId,
    columns: TableColumns,
) -> TableColumns {
    let (shape, attnums) = columns
        .shape
        .into_iter()
        .zip(columns.attnums)
        .filter(|((name, _), _)| !selection.column_excluded(table, name))
        .unzip();
    TableColumns { shape, attnums }
}

/// Marks the publication comment as etcdsync's registry.
const COMMENT_PREFIX: &str = "etcdsync table registry: ";

fn split_name(name: &str) -> Option<(&str, &str)> {
    name.split_once('\u{1f}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_round_trips_through_its_comment_and_ignores_foreign_comments() {
        let mut registry = Registry::default();
        registry
            .tables
            .insert(16384, TableId::new("public", "we.ird\"name"));
        registry.tables.insert(16390, TableId::new("s p", "t"));
        registry.columns.insert(
            16390,
            TableColumns {
                shape: vec![("id".into(), 23), ("note".into(), 25)],
                attnums: vec![1, 3],
            },
        );
        // An entry written before attnums were kept.
        registry.tables.insert(16391, TableId::new("public", "old"));
        let shape = vec![("id".into(), 23)];
        let attnums = Vec::new();
        registry
            .columns
            .insert(16391, TableColumns { shape, attnums });
        registry
            .partitions
            .insert(16390, vec![(16400, 16400), (16405, 16410)]);
        assert_eq!(Registry::parse(&registry.render()), Some(registry));
        assert_eq!(Registry::parse("written by a person"), None);
        assert_eq!(Registry::parse(&format!("{COMMENT_PREFIX}not json")), None);
    }
}

/// What the table registry found at start.
#[derive(Debug, Default)]
pub(crate) struct IdentityStart {
    /// The registry to keep (`None`: the publication is not managed, nothing is kept).
    pub registry: Option<Registry>,
    /// Names whose keys are removed as soon as streaming starts.
    pub retire_now: Vec<TableId>,
    /// Old names of renamed tables, removed by the copy of their new names.
    pub retire_with_copy: Vec<TableId>,
    /// OIDs of dropped tables (or renamed out of the selection): their changes are ignored.
    pub ignored: Vec<u32>,
}
