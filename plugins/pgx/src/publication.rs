//! What the publication must look like for no change to go missing (issue 11 §6): it publishes
//! inserts, updates, deletes and truncates, and no table of it has a row filter or a column list
//! (PostgreSQL 15+). Drift is repaired when etcdsync manages the publication and is an error
//! naming the fix when it does not.

use crate::error::{pg, Problem};
use crate::relations::{quote_ident, quote_table};
use etcdsync_core::inspect::table_list;
use etcdsync_core::{Error, Result, TableId};
use std::collections::BTreeSet;
use tokio_postgres::Client;

/// One way the publication would lose changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// `publish` leaves out these operations.
    Operations(Vec<&'static str>),
    /// These tables are published through a row filter or a column list.
    Filtered(Vec<TableId>),
    /// Partitions of these partitioned tables would be published under their own names.
    NotViaRoot(Vec<TableId>),
}

impl Drift {
    pub fn detail(&self, publication: &str) -> String {
        match self {
            Drift::Operations(missing) => format!(
                "publication {publication} does not publish {}, so those changes would never arrive",
                missing.join(", ")
            ),
            Drift::Filtered(tables) => format!(
                "publication {publication} publishes {} through a row filter or column list, so some rows or \
                 columns would never arrive",
                tables.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
            Drift::NotViaRoot(tables) => format!(
                "publication {publication} publishes partitioned table(s) {} without publish_via_partition_root, \
                 so their changes would arrive under their partitions' names",
                tables.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// The statement that repairs it.
    pub fn fix(&self, publication: &str, published: &[TableId]) -> String {
        let quoted = quote_ident(publication);
        match self {
            Drift::Operations(_) => {
                format!(
                    "ALTER PUBLICATION {quoted} SET (publish = 'insert, update, delete, truncate')"
                )
            }
            Drift::NotViaRoot(_) => {
                format!("ALTER PUBLICATION {quoted} SET (publish_via_partition_root = true)")
            }
            Drift::Filtered(_) => format!(
                "ALTER PUBLICATION {quoted} SET TABLE {}",
                published
                    .iter()
                    .map(crate::relations::quote_table)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The drift of `publication` (which must exist).
pub async fn drift(client: &Client, publication: &str, server_version: i32) -> Result<Vec<Drift>> {
    let mut found = Vec::new();
    let row = client
        .query_opt(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(pg(format!("reading publication {publication}")))?;
    let Some(row) = row else {
        return Ok(found);
    };
    let missing: Vec<&'static str> = ["insert", "update", "delete", "truncate"]
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !row.get::<_, bool>(*i))
        .map(|(_, op)| op)
        .collect();
    if !missing.is_empty() {
        found.push(Drift::Operations(missing));
    }
    if server_version >= 130000 {
        let partitioned: Vec<TableId> = client
            .query(
                "SELECT n.nspname::text, c.relname::text FROM pg_publication p \
                 JOIN pg_publication_rel r ON r.prpubid = p.oid \
                 JOIN pg_class c ON c.oid = r.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE p.pubname = $1 AND NOT p.pubviaroot AND c.relkind = 'p' ORDER BY 1, 2",
                &[&publication],
            )
            .await
            .map_err(pg(format!("reading publication {publication}")))?
            .into_iter()
            .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
        if !partitioned.is_empty() {
            found.push(Drift::NotViaRoot(partitioned));
        }
    }
    if server_version >= 150000 {
        let filtered: Vec<TableId> = client
            .query(
                "SELECT n.nspname::text, c.relname::text FROM pg_publication_rel r \
                 JOIN pg_publication p ON p.oid = r.prpubid \
                 JOIN pg_class c ON c.oid = r.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE p.pubname = $1 AND (r.prqual IS NOT NULL OR r.prattrs IS NOT NULL) \
                 ORDER BY 1, 2",
                &[&publication],
            )
            .await
            .map_err(pg(format!("reading the row filters of publication {publication}")))?
            .into_iter()
            .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
        if !filtered.is_empty() {
            found.push(Drift::Filtered(filtered));
        }
    }
    Ok(found)
}

/// Checks `publication`: repairs its drift when `manage` (logged) and returns the tables whose
/// changes it may have filtered out — they must be copied again; without `manage`, fails naming
/// the fix.
pub async fn enforce(
    client: &Client,
    publication: &str,
    published: &[TableId],
    server_version: i32,
    manage: bool,
) -> Result<Vec<TableId>> {
    let mut affected: Vec<TableId> = Vec::new();
    for drift in drift(client, publication, server_version).await? {
        let fix = drift.fix(publication, published);
        if !manage {
            return Err(Error::config(format!(
                "{}: run {fix}; (`source.manage_publication: false` leaves the publication to you)",
                drift.detail(publication)
            )));
        }
        tracing::warn!(
            publication,
            fix = %fix,
            "{}; repairing it and copying the affected tables again",
            drift.detail(publication)
        );
        client
            .batch_execute(&fix)
            .await
            .map_err(pg(format!("repairing publication {publication}")))?;
        match drift {
            Drift::Operations(_) => affected.extend(published.iter().cloned()),
            Drift::Filtered(tables) | Drift::NotViaRoot(tables) => affected.extend(tables),
        }
    }
    affected.sort();
    affected.dedup();
    Ok(affected)
}

/// With `source.manage_publication: false`: the selected tables `publication` does not list —
/// their changes would never arrive. `check` reports it and `run` refuses to start. A
/// `FOR ALL TABLES` publication (`all_tables`) lists every logged table but a partitioned one
/// only by its partitions, unless it publishes through the root; it takes no `ADD TABLE`.
pub fn unpublished(
    publication: &str,
    wanted: &BTreeSet<TableId>,
    listed: &BTreeSet<TableId>,
    all_tables: bool,
) -> Option<Problem> {
    let missing: Vec<&TableId> = wanted.difference(listed).collect();
    if missing.is_empty() {
        return None;
    }
    Some(Problem::new(
        format!(
            "publication {publication} does not publish {}, so their changes would never arrive (`source.manage_publication: false`)",
            table_list(missing.iter().copied())
        ),
        if all_tables {
            format!(
                "run ALTER PUBLICATION {} SET (publish_via_partition_root = true); (a FOR ALL TABLES \
                 publication lists a partitioned table by its partitions otherwise)",
                quote_ident(publication)
            )
        } else {
            format!(
                "run ALTER PUBLICATION {} ADD TABLE {};",
                quote_ident(publication),
                missing.iter().map(|id| quote_table(id)).collect::<Vec<_>>().join(", ")
            )
        },
    ))
}

/// Whether `publication` is `FOR ALL TABLES`.
pub async fn is_all_tables(client: &Client, publication: &str) -> Result<bool> {
    let row = client
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(pg(format!("looking up publication {publication}")))?;
    Ok(row.is_some_and(|r| r.get(0)))
}

/// The tables a publication lists by name; `None` when it does not exist.
pub(crate) async fn publication_tables(
    client: &Client,
    name: &str,
) -> Result<Option<BTreeSet<TableId>>> {
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await
        .map_err(pg("looking up the publication"))?
        .is_some();
    if !exists {
        return Ok(None);
    }
    let tables = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(pg("reading the publication's tables"))?
        .into_iter()
        .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    Ok(Some(tables))
}
