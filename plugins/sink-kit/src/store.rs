//! What a key-value store offers the kit's drivers ([`crate::writer`], [`crate::stale`]): atomic writes of
//! [`KvOp`]s under the store's own guards (a leadership fence), a revision counter that every
//! write moves forward, and key listings by prefix with the revision each key was written at.
//! The etcd sink implements it over etcd's transactions and revisions.

use crate::batch::KvOp;
use async_trait::async_trait;
use std::borrow::Cow;

/// The ops of one write, built anew for each attempt (borrowed from a batch the caller keeps).
pub type Ops<'a> = dyn Fn() -> Vec<Cow<'a, KvOp>> + Sync + 'a;

/// A key-value store the kit writes to.
#[async_trait]
pub trait Store: Clone + Send + Sync + 'static {
    /// The store's errors; the kit's own convert into it.
    type Error: From<crate::KitError> + std::error::Error + Send + Sync + 'static;

    /// How to let a larger change through, for [`crate::KitError::Oversize`] (e.g. "raise
    /// sink.max_request_bytes").
    const RAISE_REQUEST_LIMIT: &'static str;

    /// Applies the ops `build()` returns (called again for each attempt; borrowed from a batch
    /// the caller keeps, so a large write is not held twice) in one atomic write, conditional
    /// on the store's guards. `what` names the
    /// write in logs and errors.
    async fn apply<'a>(&self, what: &'static str, build: &Ops<'a>) -> Result<(), Self::Error>;

    /// A key's value and the revision it was last written at; `None`: absent.
    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>, Self::Error>;

    /// Applies the ops `build()` returns (called again for each attempt, so a large write is not
    /// held twice) in one atomic write, only if `key` holds exactly `expected` (`None`: absent)
    /// and the store's guards hold. A refused guard is the store's error (it was deposed);
    /// a different value of `key` is [`Condition::Found`] with that value.
    async fn apply_if<'a>(
        &self,
        what: &'static str,
        key: &str,
        expected: Option<&[u8]>,
        build: &Ops<'a>,
    ) -> Result<Condition, Self::Error>;

    /// The store's revision now: keys written later carry a larger one.
    async fn revision(&self, what: &'static str) -> Result<i64, Self::Error>;

    /// How many keys under `prefix` there were at `revision`; `None` when the store cannot say
    /// (history compacted), so the caller lists them instead.
    async fn count_at(&self, prefix: &str, revision: i64) -> Option<u64>;

    /// Up to `limit` keys under `prefix` in key order, after `after` (exclusive) when given,
    /// each with the revision it was last written at, and its value unless `keys_only`.
    async fn page(
        &self,
        prefix: &str,
        after: Option<&[u8]>,
        limit: usize,
        keys_only: bool,
    ) -> Result<Page, Self::Error>;
}

/// What [`Store::apply_if`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The key held the expected value: the write is applied.
    Met,
    /// The key held this instead (`None`: absent): nothing was written.
    Found(Option<Vec<u8>>),
}

/// One page of [`Store::page`].
#[derive(Debug, Default)]
pub struct Page {
    pub entries: Vec<Stored>,
    /// More keys follow the last one.
    pub more: bool,
}

/// A key as stored (bytes: a store may hold keys etcdsync did not write).
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub key: Vec<u8>,
    /// Empty in a keys-only page.
    pub value: Vec<u8>,
    /// The revision it was last written at.
    pub revision: i64,
}
