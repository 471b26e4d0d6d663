//! The sink kit's [`Store`] over etcd: a write is a transaction carrying the sink's guards (the
//! leadership fence), the revision is etcd's, and listings are keys-only range pages.

use crate::client::EtcdClient;
use crate::error::EtcdError;
use crate::txn::txn_op;
use async_trait::async_trait;
use etcd_client::{Compare, GetOptions};
use etcdsync_core::encode::key::prefix_range_end;
use etcdsync_sink_kit::batch::KvOp;
use etcdsync_sink_kit::store::{KeysPage, Store};
use tokio_util::sync::CancellationToken;

/// etcd as the kit sees it, for one sink run.
pub struct EtcdStore<'a> {
    pub client: &'a EtcdClient,
    /// Compares every write carries.
    pub guards: &'a [Compare],
    pub shutdown: &'a CancellationToken,
    /// A key the sink may read, for the revision (any read answers with it).
    pub probe_key: String,
}

#[async_trait]
impl Store for EtcdStore<'_> {
    type Error = EtcdError;

    async fn apply(&self, what: &'static str, ops: Vec<KvOp>) -> Result<(), EtcdError> {
        let ops = ops.iter().map(txn_op).collect();
        self.client
            .txn(what, self.guards, ops, self.shutdown)
            .await
            .map(drop)
    }

    async fn revision(&self, what: &'static str) -> Result<i64, EtcdError> {
        let response = self
            .client
            .get(
                what,
                self.probe_key.as_str(),
                Some(GetOptions::new().with_count_only()),
                Some(self.shutdown),
                None,
            )
            .await?;
        response
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| EtcdError::Task("etcd answered without a response header".into()))
    }

    async fn count_at(&self, prefix: &str, revision: i64) -> Option<u64> {
        let options = GetOptions::new()
            .with_range(prefix_range_end(prefix))
            .with_count_only()
            .with_revision(revision);
        match self
            .client
            .get(
                "count the keys a prefix held at a revision",
                prefix,
                Some(options),
                Some(self.shutdown),
                Some(1),
            )
            .await
        {
            Ok(response) => u64::try_from(response.count()).ok(),
            Err(error) => {
                tracing::debug!(%error, prefix, revision, "cannot count at that revision; listing instead");
                None
            }
        }
    }

    /// No revision filter: etcd reads the whole remaining range for every page of a request
    /// that filters by revision (it drops the limit), so the caller filters a page.
    async fn keys_page(
        &self,
        prefix: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<KeysPage, EtcdError> {
        let from = match after {
            Some(key) => [key, &[0u8][..]].concat(),
            None => prefix.as_bytes().to_vec(),
        };
        let options = GetOptions::new()
            .with_range(prefix_range_end(prefix))
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .with_keys_only();
        let response = self
            .client
            .get(
                "list keys under a prefix",
                from,
                Some(options),
                Some(self.shutdown),
                None,
            )
            .await?;
        Ok(KeysPage {
            keys: response
                .kvs()
                .iter()
                .map(|kv| (kv.key().to_vec(), kv.mod_revision()))
                .collect(),
            more: response.more(),
        })
    }
}
