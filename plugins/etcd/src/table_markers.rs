//! The table markers `{meta}/tables/{schema}/{table}`: one per table this pipeline has written
//! rows of, written before the table's first write of a run ([`crate::sink`]) and read by
//! `verify` (which tables are ours) and at start (which tables a source should know of).

use crate::client::{EtcdClient, Pages};
use crate::config::Settings;
use crate::error::EtcdError;
use etcdsync_core::encode::key::unescape_component;
use etcdsync_core::TableId;
use std::collections::HashSet;

/// Keys per page when reading the markers.
const PAGE: i64 = 4096;

/// Every table with a marker.
pub async fn read(
    client: &EtcdClient,
    settings: &Settings,
    attempts: Option<u32>,
) -> Result<HashSet<TableId>, EtcdError> {
    let markers = settings.kv.table_markers();
    let mut pages = Pages::of_prefix(&markers, PAGE, true);
    let mut tables = HashSet::new();
    while let Some(page) = pages
        .next(client, "read the table markers", None, attempts)
        .await?
    {
        tables.extend(page.kvs().iter().filter_map(|kv| {
            let key = String::from_utf8_lossy(kv.key());
            let (schema, table) = key.strip_prefix(markers.as_str())?.split_once('/')?;
            Some(TableId::new(
                unescape_component(schema)?,
                unescape_component(table)?,
            ))
        }));
    }
    Ok(tables)
}
