//! The table markers `{meta}/tables/{schema}/{table}`: one per table this pipeline has written
//! rows of, written before the table's first write of a run ([`crate::sink`]) and read by
//! `verify` (which tables are ours) and at start (which tables a source should know of).

use crate::client::EtcdClient;
use crate::config::Settings;
use crate::error::EtcdError;
use etcd_client::GetOptions;
use etcdsync_core::encode::key::{prefix_range_end, unescape_component};
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
    let markers = settings.table_markers();
    let end = prefix_range_end(&markers);
    let mut from = markers.clone().into_bytes();
    let mut tables = HashSet::new();
    loop {
        let options = GetOptions::new()
            .with_range(end.clone())
            .with_keys_only()
            .with_limit(PAGE);
        let response = client
            .get(
                "read the table markers",
                from.clone(),
                Some(options),
                None,
                attempts,
            )
            .await?;
        let kvs = response.kvs();
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key());
            let named = key.strip_prefix(markers.as_str()).and_then(|relative| {
                let (schema, table) = relative.split_once('/')?;
                Some(TableId::new(
                    unescape_component(schema)?,
                    unescape_component(table)?,
                ))
            });
            tables.extend(named);
        }
        let Some(last) = kvs.last() else { break };
        if kvs.len() < usize::try_from(PAGE).unwrap_or(usize::MAX) {
            break;
        }
        from = last.key().to_vec();
        from.push(0);
    }
    Ok(tables)
}
