//! The etcd side of `etcdsync check`, `status` and `verify` (core's [`SinkInspector`]): what the
//! operator commands read from etcd, and `verify --repair`'s writes (DESIGN §2, §4–5).
//!
//! Invariants: nothing here writes outside the meta prefix except [`SinkInspector::repair`],
//! which writes only keys under the data prefix (and keeps the key index under the meta prefix
//! consistent); nothing here writes `{meta}/status`, `checkpoint`, `snapshot` or `leader`, which
//! belong to the running sink.
//!
//! `check` lives in [`check`] (its probes are listed there).
//!
//! `repair` and the key index: deleting a key that the owner index knows also deletes its owner
//! entry and the row's index entry (when it still points at that key); a put of a key the owner
//! index knows keeps its index entries, which already name it; a put of a default-layout key needs
//! none. A put of a key that is neither (a template key whose index entries are gone too) is not
//! written: `repair` applies everything else, then fails naming it and the fix (a fresh snapshot
//! rebuilds the index), since the sink could never delete or move such a key.

use crate::batch::{Batch, KvOp, Limits};
use crate::checkpoint::decode_checkpoint;
use crate::client::EtcdClient;
use crate::config::Settings;
use crate::error::EtcdError;
use crate::index::{parse_row_id, KeyIndex};
use async_trait::async_trait;
use etcd_client::{Compare, GetOptions, GetResponse, Txn, TxnOp, TxnOpResponse};
use etcdsync_core::encode::key::{prefix_range_end, row_key, table_prefix};
use etcdsync_core::inspect::{CheckOptions, CheckResult, SinkInspector};
use etcdsync_core::leadership::Fence;
use etcdsync_core::{Checkpoint, Error, Result, TableId, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub mod check;

/// Attempts of an inspector read before a transient failure is returned.
pub const READ_ATTEMPTS: u32 = 3;

/// Keys per scan request (halved while a page's response is too large).
pub const SCAN_PAGE: usize = 1000;

/// Owner entries fetched per request when `owner` looks one up.
pub const OWNER_PAGE: usize = 1000;

/// How long fetched owner entries answer `owner` without asking etcd again.
pub const OWNER_CACHE_TTL: Duration = Duration::from_secs(5);

/// The meta documents [`SinkInspector::metadata`] returns, by name (`{meta}/{name}`).
pub const METADATA_KEYS: [&str; 4] = ["checkpoint", "snapshot", "status", "leader"];

/// Read access to the etcd sink's keys for the operator commands; connects on first use.
pub struct EtcdInspector {
    settings: Arc<Settings>,
    source_type: String,
    /// Names earlier versions recorded for the same source; their checkpoints are ours too.
    former_source_names: Vec<String>,
    client: Option<EtcdClient>,
    index: KeyIndex,
    owners: Option<OwnerCache>,
    /// Compares `repair` writes carry: the leadership it holds while it writes (DESIGN §7).
    guards: Vec<Compare>,
}

impl std::fmt::Debug for EtcdInspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdInspector")
            .field("endpoints", &self.settings.endpoints)
            .field("data_prefix", &self.settings.kv.data_prefix)
            .field("meta_prefix", &self.settings.kv.meta_prefix)
            .finish_non_exhaustive()
    }
}

/// Owner entries of a key range, fetched together (a scan's page, or from a looked-up key on).
#[derive(Debug)]
struct OwnerCache {
    /// Relative data keys covered: from `from` to `to` inclusive (`None`: to the end).
    from: String,
    to: Option<String>,
    /// Relative data key → row id.
    entries: BTreeMap<String, String>,
    at: Instant,
}

impl OwnerCache {
    fn covers(&self, relative: &str) -> bool {
        self.at.elapsed() < OWNER_CACHE_TTL
            && relative >= self.from.as_str()
            && self.to.as_deref().is_none_or(|to| relative <= to)
    }
}

impl EtcdInspector {
    /// An inspector for checked settings (nothing connects yet). `source_type` is the configured
    /// source's plugin name, compared with the checkpoint's.
    pub fn new(settings: Settings, source_type: impl Into<String>) -> Self {
        let index = KeyIndex::new(&settings.kv.data_prefix, &settings.kv.meta_prefix);
        Self {
            settings: Arc::new(settings),
            source_type: source_type.into(),
            former_source_names: Vec::new(),
            client: None,
            index,
            owners: None,
            guards: Vec::new(),
        }
    }

    /// Also takes checkpoints recorded under these names as this source's
    /// ([`etcdsync_core::sink::SinkContext::former_source_names`]).
    pub fn with_former_source_names(mut self, names: Vec<String>) -> Self {
        self.former_source_names = names;
        self
    }

    fn is_own_source(&self, recorded: &str) -> bool {
        etcdsync_core::change::same_source(recorded, &self.source_type, &self.former_source_names)
    }

    /// Makes `repair`'s writes conditional on this leadership (taken by `verify --repair`).
    pub fn with_fence(mut self, fence: Option<Fence>) -> Self {
        self.guards = fence
            .iter()
            .map(|f| crate::leader::fence_guard(&self.settings, f))
            .collect();
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The connection (made on first use).
    async fn client(&mut self) -> Result<EtcdClient, EtcdError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = EtcdClient::connect(&self.settings).await?;
        self.client = Some(client.clone());
        Ok(client)
    }

    /// How long a single check may take before it counts as failed.
    fn check_timeout(&self) -> Duration {
        self.settings.connect_timeout + self.settings.request_timeout
    }

    /// The user named in fixes.
    fn who(&self) -> String {
        match &self.settings.credentials {
            Some((user, _)) => format!("user `{user}`"),
            None => "the etcd user".into(),
        }
    }

    /// The fix for a permission problem on `prefix` (which config key it is: `what`).
    fn grant_fix(&self, what: &str, prefix: &str) -> String {
        format!(
            "grant {} readwrite on {what}: etcdctl role grant-permission ROLE --prefix=true readwrite '{prefix}' \
             (and etcdctl user grant-role USER ROLE)",
            self.who()
        )
    }

    // ---- reads -----------------------------------------------------------------------------

    /// A read-only transaction of `ops` (with retry of transient failures).
    async fn read_txn(
        &mut self,
        op: &str,
        ops: Vec<TxnOp>,
    ) -> Result<Vec<TxnOpResponse>, EtcdError> {
        let client = self.client().await?;
        let response = client
            .retry(op, None, Some(READ_ATTEMPTS), |mut kv| {
                let txn = Txn::new().and_then(ops.clone());
                async move { kv.txn(txn).await }
            })
            .await?;
        Ok(response.op_responses())
    }

    /// A range request with retry.
    async fn range(
        &mut self,
        op: &str,
        from: Vec<u8>,
        options: GetOptions,
    ) -> Result<GetResponse, EtcdError> {
        let client = self.client().await?;
        client
            .get(op, from, Some(options), None, Some(READ_ATTEMPTS))
            .await
    }

    /// Values of `keys` in order, many keys per transaction (at most `max_txn_ops`); a chunk whose
    /// response is too large for the client is split in halves.
    async fn get_values(&mut self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, EtcdError> {
        let mut out = Vec::with_capacity(keys.len());
        let chunk = self.settings.kv.max_txn_ops.max(1);
        let mut pending: Vec<&[String]> = keys.chunks(chunk).rev().collect();
        while let Some(part) = pending.pop() {
            let ops = part.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
            match self.read_txn("read keys", ops).await {
                Ok(responses) => out.extend(first_values(responses)),
                Err(error) if part.len() > 1 && response_too_large(&error) => {
                    let (a, b) = part.split_at(part.len() / 2);
                    pending.push(b);
                    pending.push(a);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(out)
    }

    /// Fetches the owner entries of relative data keys from `from` on (to `to` inclusive, if
    /// given), at most `limit`, and keeps them as the owner cache.
    async fn prefetch_owners(
        &mut self,
        from: &str,
        to: Option<&str>,
        limit: usize,
    ) -> Result<(), EtcdError> {
        let prefix = self.index.owner_prefix().to_string();
        let end = match to {
            Some(to) => {
                let mut end = format!("{prefix}{to}").into_bytes();
                end.push(0);
                end
            }
            None => prefix_range_end(&prefix),
        };
        let response = self
            .range(
                "read owner entries of the key index",
                format!("{prefix}{from}").into_bytes(),
                GetOptions::new()
                    .with_range(end)
                    .with_limit(i64::try_from(limit).unwrap_or(i64::MAX)),
            )
            .await?;
        let entries: BTreeMap<String, String> = response
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let relative = key.strip_prefix(prefix.as_str())?.to_string();
                Some((relative, String::from_utf8_lossy(kv.value()).into_owned()))
            })
            .collect();
        let to = if response.more() {
            entries.keys().next_back().cloned()
        } else {
            to.map(str::to_string)
        };
        self.owners = Some(OwnerCache {
            from: from.to_string(),
            // With `more` and nothing returned (cannot happen), cover only `from` itself.
            to: to.or_else(|| response.more().then(|| from.to_string())),
            entries,
            at: Instant::now(),
        });
        Ok(())
    }

    /// The row id the owner index holds for a relative data key.
    async fn owner_entry(&mut self, relative: &str) -> Result<Option<String>, EtcdError> {
        if !self.owners.as_ref().is_some_and(|c| c.covers(relative)) {
            self.prefetch_owners(relative, None, OWNER_PAGE).await?;
        }
        Ok(self
            .owners
            .as_ref()
            .and_then(|c| c.entries.get(relative).cloned()))
    }

    /// The relative part of a key under the data prefix (`None` for other keys and the prefix
    /// itself).
    fn relative<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.settings.kv.data_prefix.as_str())
            .filter(|r| !r.is_empty())
    }

    // ---- repair ----------------------------------------------------------------------------

    async fn apply_repair(
        &mut self,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    ) -> Result<(), Error> {
        for key in deletes.iter().chain(puts.iter().map(|(k, _)| k)) {
            if self.relative(key).is_none() {
                return Err(Error::fatal(format!(
                    "verify --repair writes only keys below sink.prefix `{}`, and `{key}` is not one; nothing was written",
                    self.settings.kv.data_prefix
                )));
            }
        }
        self.owners = None;
        // Owners of the deleted keys, and the index entries that still point at them.
        let owner_keys: Vec<String> = deletes.iter().map(|k| self.index.owner_key(k)).collect();
        let owners = self.get_values(&owner_keys).await?;
        let owned: Vec<Option<String>> = owners
            .into_iter()
            .map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let entry_keys: Vec<String> = owned
            .iter()
            .flatten()
            .map(|row_id| self.index.entry_key(row_id))
            .collect();
        let entry_values: HashMap<String, Option<Vec<u8>>> = entry_keys
            .iter()
            .cloned()
            .zip(self.get_values(&entry_keys).await?)
            .collect();

        let limits = Limits::without_checkpoint(
            self.settings.kv.max_txn_ops,
            self.settings.kv.max_request_bytes,
        );
        let mut units: Vec<Vec<KvOp>> = Vec::with_capacity(deletes.len() + puts.len());
        for (key, owner) in deletes.into_iter().zip(owned) {
            let mut unit = vec![KvOp::Delete { key: key.clone() }];
            if let Some(row_id) = owner {
                unit.push(KvOp::Delete {
                    key: self.index.owner_key(&key),
                });
                let entry = self.index.entry_key(&row_id);
                let points_here = entry_values
                    .get(&entry)
                    .and_then(|v| v.as_deref())
                    .is_some_and(|v| v == self.index.relative(&key).as_bytes());
                if points_here {
                    unit.push(KvOp::Delete { key: entry });
                }
            }
            units.push(unit);
        }
        // A put needs no index change when the owner index knows the key (the row's entries
        // already name it) or when the key has the default layout. A key that is neither comes
        // from a key template and has lost its index entries: written alone, it could never be
        // deleted or moved by the sink, and verify would take it for an extra key.
        let put_owner_keys: Vec<String> =
            puts.iter().map(|(k, _)| self.index.owner_key(k)).collect();
        let put_owners = self.get_values(&put_owner_keys).await?;
        let mut unexplained: Vec<String> = Vec::new();
        for ((key, value), owner) in puts.into_iter().zip(put_owners) {
            let default_layout = self.relative(&key).and_then(parse_row_id).is_some();
            if owner.is_none() && !default_layout {
                unexplained.push(key);
            } else {
                units.push(vec![KvOp::Put { key, value }]);
            }
        }

        let client = self.client().await?;
        let never = CancellationToken::new();
        let mut batch = Batch::new();
        let mut written = 0;
        for unit in units {
            let unit = match batch.try_add(unit, limits) {
                Ok(()) => continue,
                Err(unit) => unit,
            };
            if batch.has_data() {
                let full = std::mem::take(&mut batch);
                written += full.len();
                client
                    .txn(
                        "repair keys",
                        &self.guards,
                        crate::txn::txn_ops(&full),
                        &never,
                    )
                    .await?;
                if let Err(unit) = batch.try_add(unit, limits) {
                    return Err(repair_oversize(&unit, self.settings.kv.max_request_bytes));
                }
            } else {
                return Err(repair_oversize(&unit, self.settings.kv.max_request_bytes));
            }
        }
        if batch.has_data() {
            written += batch.len();
            client
                .txn(
                    "repair keys",
                    &self.guards,
                    crate::txn::txn_ops(&batch),
                    &never,
                )
                .await?;
        }
        self.owners = None;
        tracing::info!(operations = written, "verify --repair wrote its changes");
        match unexplained.first() {
            None => Ok(()),
            Some(first) => Err(Error::config(format!(
                "verify --repair did not write {} key(s) (first: `{first}`): they come from a key template and their \
                 key-index entries under sink.meta_prefix are gone, so the sink could not delete or move them later; \
                 rebuild the index with a fresh snapshot (stop `etcdsync run`, etcdctl del '{}', start it again), \
                 then run verify again. Everything else was repaired",
                unexplained.len(),
                self.settings.kv.checkpoint_key()
            ))),
        }
    }
}

/// The error of a repaired value too large for one request.
fn repair_oversize(unit: &[KvOp], max_request_bytes: usize) -> Error {
    let key = unit.iter().find_map(KvOp::key).unwrap_or_default();
    let size: usize = unit.iter().map(KvOp::size).sum();
    Error::config(format!(
        "verify --repair: writing `{key}` needs {size} bytes, more than one etcd request may carry with \
         sink.max_request_bytes = {max_request_bytes}; raise sink.max_request_bytes (and etcd's --max-request-bytes to match)"
    ))
}

/// Whether a read failed because its response exceeds what the client accepts.
fn response_too_large(error: &EtcdError) -> bool {
    let text = error.to_string().to_lowercase();
    text.contains("message length too large") || text.contains("larger than max")
}

/// The value of the first key of each range response (`None` where absent).
fn first_values(responses: Vec<TxnOpResponse>) -> Vec<Option<Vec<u8>>> {
    responses
        .into_iter()
        .map(|response| match response {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        })
        .collect()
}

/// The count of a count-only range response.
fn count_of(response: Option<&TxnOpResponse>) -> u64 {
    match response {
        Some(TxnOpResponse::Get(get)) => u64::try_from(get.count()).unwrap_or_default(),
        _ => 0,
    }
}

/// A count-only range over every key starting with `prefix`.
fn count_op(prefix: &str) -> TxnOp {
    TxnOp::get(
        prefix,
        Some(
            GetOptions::new()
                .with_range(prefix_range_end(prefix))
                .with_count_only(),
        ),
    )
}

#[async_trait]
impl SinkInspector for EtcdInspector {
    async fn check(&mut self, options: CheckOptions) -> Vec<CheckResult> {
        self.run_checks(options).await
    }

    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>> {
        let key = self.settings.kv.checkpoint_key();
        let values = self.get_values(std::slice::from_ref(&key)).await?;
        match values.into_iter().next().flatten() {
            None => Ok(None),
            Some(value) => Ok(Some(decode_checkpoint(&key, &value)?)),
        }
    }

    async fn metadata(&mut self) -> Result<BTreeMap<String, serde_json::Value>> {
        let keys: Vec<String> = METADATA_KEYS
            .iter()
            .map(|name| format!("{}{name}", self.settings.kv.meta_prefix))
            .collect();
        let values = self.get_values(&keys).await?;
        Ok(METADATA_KEYS
            .iter()
            .zip(values)
            .filter_map(|(name, value)| {
                let value = value?;
                let json = serde_json::from_slice(&value).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(&value).into_owned())
                });
                Some((name.to_string(), json))
            })
            .collect())
    }

    fn row_key(&self, table: &TableId, key: &[Value]) -> String {
        row_key(&self.settings.kv.prefix, table, key)
    }

    fn route_key(&self, route_key: &str) -> String {
        format!("{}{route_key}", self.settings.kv.data_prefix)
    }

    async fn get(&mut self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        Ok(self.get_values(keys).await?)
    }

    async fn written_tables(&mut self) -> Result<Option<std::collections::HashSet<TableId>>> {
        let client = self.client().await?;
        Ok(Some(
            crate::table_markers::read(&client, &self.settings, Some(READ_ATTEMPTS)).await?,
        ))
    }

    async fn scan(&mut self, after: Option<&str>, limit: usize) -> Result<Vec<(String, Vec<u8>)>> {
        let data = self.settings.kv.data_prefix.clone();
        let end = prefix_range_end(&data);
        let mut from: Vec<u8> = match after {
            Some(after) if after.as_bytes() >= data.as_bytes() => {
                let mut from = after.as_bytes().to_vec();
                from.push(0);
                from
            }
            _ => data.clone().into_bytes(),
        };
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        let mut page = SCAN_PAGE;
        while out.len() < limit && from < end {
            let want = page.min(limit - out.len());
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(i64::try_from(want).unwrap_or(i64::MAX));
            let response = match self.range("scan sink.prefix", from.clone(), options).await {
                Ok(response) => response,
                Err(error) if want > 1 && response_too_large(&error) => {
                    page = (want / 2).max(1);
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            let kvs = response.kvs();
            let first = out.len();
            out.extend(kvs.iter().map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                )
            }));
            let Some(last) = kvs.last() else { break };
            from = last.key().to_vec();
            from.push(0);
            // `owner` is asked next about these keys, in order: fetch their owner entries at once.
            if let (Some((a, _)), Some((b, _))) = (out.get(first), out.last()) {
                let (a, b) = (
                    a.strip_prefix(data.as_str()).unwrap_or(a).to_string(),
                    b.strip_prefix(data.as_str()).unwrap_or(b).to_string(),
                );
                self.prefetch_owners(&a, Some(&b), kvs.len()).await?;
            }
            if !response.more() {
                break;
            }
        }
        Ok(out)
    }

    async fn owner(&mut self, key: &str) -> Result<Option<(TableId, Vec<String>)>> {
        let Some(relative) = self.relative(key) else {
            return Ok(None);
        };
        match self.owner_entry(relative).await? {
            Some(row_id) => Ok(parse_row_id(&row_id)),
            None => Ok(parse_row_id(relative)),
        }
    }

    async fn count(&mut self, table: &TableId) -> Result<u64> {
        let default_prefix = table_prefix(&self.settings.kv.prefix, table);
        // Keys under the table's prefix that the owner index gives to a row (of any table with
        // transformed keys) are counted with that row's table, not here.
        let owned_prefix = format!(
            "{}{}",
            self.index.owner_prefix(),
            self.index.relative(&default_prefix)
        );
        let ops = vec![
            count_op(&default_prefix),
            count_op(&owned_prefix),
            count_op(&self.index.table_entries(table)),
        ];
        let responses = self.read_txn("count a table's keys", ops).await?;
        let default = count_of(responses.first());
        let owned = count_of(responses.get(1));
        let indexed = count_of(responses.get(2));
        Ok(default.saturating_sub(owned) + indexed)
    }

    async fn repair(&mut self, puts: Vec<(String, Vec<u8>)>, deletes: Vec<String>) -> Result<()> {
        self.apply_repair(puts, deletes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EtcdConfig;

    fn inspector() -> EtcdInspector {
        let settings = EtcdConfig::default().settings("demo").expect("settings");
        EtcdInspector::new(settings, "pgx")
    }

    #[test]
    fn keys_follow_the_configured_layout() {
        let inspector = inspector();
        let table = TableId::new("public", "users");
        assert_eq!(
            inspector.row_key(&table, &[Value::Int(7), Value::Text("a/b".into())]),
            "/etcdsync/public/users/7/a%2Fb"
        );
        assert_eq!(inspector.route_key("svc/name"), "/etcdsync/svc/name");
        assert_eq!(inspector.relative("/etcdsync/a/b/c"), Some("a/b/c"));
        assert_eq!(inspector.relative("/etcdsync/"), None);
        assert_eq!(inspector.relative("/other/a"), None);
    }

    #[test]
    fn owner_cache_covers_its_range_only() {
        let cache = OwnerCache {
            from: "b".into(),
            to: Some("d".into()),
            entries: BTreeMap::new(),
            at: Instant::now(),
        };
        assert!(cache.covers("b") && cache.covers("c/x") && cache.covers("d"));
        assert!(!cache.covers("a") && !cache.covers("d/x"));
        let open = OwnerCache { to: None, ..cache };
        assert!(open.covers("zzz"));
    }
}
