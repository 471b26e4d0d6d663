//! The sink kit's [`Store`] over etcd: a write is a transaction carrying the sink's guards (the
//! leadership fence), a conditional write compares the key's value and, refused, reads it and the
//! leader key in the same transaction; the revision is etcd's, and listings are keys-only range
//! pages.

use crate::client::EtcdClient;
use crate::error::EtcdError;
use crate::txn::txn_op;
use async_trait::async_trait;
use etcd_client::{Compare, CompareOp, GetOptions, TxnOp, TxnOpResponse, TxnResponse};
use etcdsync_core::encode::key::prefix_range_end;
use etcdsync_sink_kit::store::{Condition, Ops, Page, Store, Stored};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// etcd as the kit sees it, for one sink run (cheap to clone).
#[derive(Clone)]
pub struct EtcdStore {
    pub client: EtcdClient,
    /// Compares every write carries.
    pub guards: Arc<Vec<Compare>>,
    pub shutdown: CancellationToken,
    /// A key the sink may read, for the revision (any read answers with it).
    pub probe_key: String,
    /// The leader key and this instance's token when writes are fenced: a refused conditional
    /// write reads it to tell a lost leadership from another value of its key.
    pub leader: Option<(String, i64)>,
}

#[async_trait]
impl Store for EtcdStore {
    type Error = EtcdError;

    const RAISE_REQUEST_LIMIT: &'static str =
        "raise sink.max_request_bytes (and etcd's --max-request-bytes to match)";

    async fn apply<'a>(&self, what: &'static str, build: &Ops<'a>) -> Result<(), EtcdError> {
        self.client
            .txn_with(
                what,
                &self.guards,
                || build().iter().map(|op| txn_op(op)).collect(),
                &self.shutdown,
            )
            .await
            .map(drop)
    }

    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>, EtcdError> {
        let response = self
            .client
            .get(
                "read a key's current value",
                key,
                None,
                Some(&self.shutdown),
                None,
            )
            .await?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
    }

    async fn apply_if<'a>(
        &self,
        what: &'static str,
        key: &str,
        expected: Option<&[u8]>,
        build: &Ops<'a>,
    ) -> Result<Condition, EtcdError> {
        let mut compares = self.guards.to_vec();
        compares.push(match expected {
            Some(value) => Compare::value(key, CompareOp::Equal, value),
            None => Compare::version(key, CompareOp::Equal, 0),
        });
        let mut otherwise = vec![TxnOp::get(key, None)];
        if let Some((leader_key, _)) = &self.leader {
            otherwise.push(TxnOp::get(leader_key.as_str(), None));
        }
        let response = self
            .client
            .txn_or_else(
                what,
                &compares,
                || build().iter().map(|op| txn_op(op)).collect(),
                otherwise,
                &self.shutdown,
            )
            .await?;
        if response.succeeded() {
            return Ok(Condition::Met);
        }
        let (current, leader_token) = seen(&response);
        if let Some((_, token)) = &self.leader {
            if leader_token != Some(*token) {
                return Err(EtcdError::CompareFailed(what.to_string()));
            }
        }
        Ok(Condition::Found(current))
    }

    async fn revision(&self, what: &'static str) -> Result<i64, EtcdError> {
        let response = self
            .client
            .get(
                what,
                self.probe_key.as_str(),
                Some(GetOptions::new().with_count_only()),
                Some(&self.shutdown),
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
                Some(&self.shutdown),
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
    async fn page(
        &self,
        prefix: &str,
        after: Option<&[u8]>,
        limit: usize,
        keys_only: bool,
    ) -> Result<Page, EtcdError> {
        let from = match after {
            Some(key) => [key, &[0u8][..]].concat(),
            None => prefix.as_bytes().to_vec(),
        };
        let options = GetOptions::new()
            .with_range(prefix_range_end(prefix))
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let options = if keys_only {
            options.with_keys_only()
        } else {
            options
        };
        let response = self
            .client
            .get(
                "list keys under a prefix",
                from,
                Some(options),
                Some(&self.shutdown),
                None,
            )
            .await?;
        Ok(Page {
            entries: response
                .kvs()
                .iter()
                .map(|kv| Stored {
                    key: kv.key().to_vec(),
                    value: kv.value().to_vec(),
                    revision: kv.mod_revision(),
                })
                .collect(),
            more: response.more(),
        })
    }
}

/// The key's value and the leader key's create revision a refused conditional write read.
fn seen(response: &TxnResponse) -> (Option<Vec<u8>>, Option<i64>) {
    let mut reads = response.op_responses().into_iter().map(|read| match read {
        TxnOpResponse::Get(range) => range
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.create_revision())),
        _ => None,
    });
    let checkpoint = reads.next().flatten().map(|(value, _)| value);
    let leader = reads.next().flatten().map(|(_, created)| created);
    (checkpoint, leader)
}
