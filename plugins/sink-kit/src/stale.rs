//! Keys a snapshot did not rewrite: after a table is copied, every key under its prefix written
//! at or before the revision the copy started at belongs to a row the copy no longer has
//! (DESIGN §5). The driver lists them a page at a time and deletes them in writes of at most
//! `max_ops`, so memory is bounded by a page, never by the table.

use crate::batch::KvOp;
use crate::store::Store;
use std::time::Instant;

/// Keys listed per page.
pub const PAGE: usize = 4096;

/// Deletes the keys under `prefix` last written at or before `start_revision`; returns how many.
/// A prefix that held no key at `start_revision` (a first copy) is not listed at all.
/// `applied(ops, started)` is called after each write.
pub async fn delete_stale<S: Store>(
    store: &S,
    prefix: &str,
    start_revision: i64,
    max_ops: usize,
    mut applied: impl FnMut(usize, Instant) + Send,
) -> Result<usize, S::Error> {
    if store.count_at(prefix, start_revision).await == Some(0) {
        return Ok(0);
    }
    let max_ops = max_ops.max(1);
    let mut after: Option<Vec<u8>> = None;
    let mut stale: Vec<String> = Vec::new();
    let mut deleted = 0;
    loop {
        let page = store.page(prefix, after.as_deref(), PAGE, true).await?;
        let last = !page.more;
        after = page.entries.last().map(|stored| stored.key.clone());
        for stored in page.entries {
            if stored.revision > start_revision {
                continue;
            }
            match String::from_utf8(stored.key) {
                Ok(key) => stale.push(key),
                // etcdsync writes UTF-8 keys only: another writer's key is left alone.
                Err(_) => tracing::debug!(prefix, "a key that is not UTF-8; left alone"),
            }
        }
        while stale.len() >= max_ops || (last && !stale.is_empty()) {
            let take = stale.len().min(max_ops);
            let ops: Vec<KvOp> = stale
                .drain(..take)
                .map(|key| KvOp::Delete { key })
                .collect();
            let count = ops.len();
            let started = Instant::now();
            store
                .apply("delete keys a snapshot did not rewrite", &|| {
                    ops.iter().map(std::borrow::Cow::Borrowed).collect()
                })
                .await?;
            deleted += count;
            applied(count, started);
        }
        if last || after.is_none() {
            return Ok(deleted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Ops, Page};
    use async_trait::async_trait;
    use std::sync::{Arc, Mutex};

    /// An in-memory store: key → (value, revision); clones share it.
    #[derive(Default, Clone)]
    struct Memory {
        keys: Arc<Mutex<crate::keys::Keys>>,
        revision: Arc<Mutex<i64>>,
        writes: Arc<Mutex<Vec<usize>>>,
        counted: Option<u64>,
    }

    impl Memory {
        fn put(&self, key: &str) {
            let mut revision = self.revision.lock().unwrap_or_else(|p| p.into_inner());
            *revision += 1;
            let put = KvOp::Put {
                key: key.to_string(),
                value: Vec::new(),
            };
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            keys.apply(&put, *revision);
        }
        fn keys(&self) -> Vec<String> {
            let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            let all = keys.page("", None, usize::MAX, true).entries;
            all.into_iter()
                .map(|k| String::from_utf8_lossy(&k.key).into_owned())
                .collect()
        }
    }

    #[async_trait]
    impl Store for Memory {
        type Error = crate::KitError;
        const RAISE_REQUEST_LIMIT: &'static str = "raise the limit";
        async fn apply<'a>(&self, _what: &'static str, build: &Ops<'a>) -> Result<(), Self::Error> {
            let ops: Vec<KvOp> = build().into_iter().map(|op| op.into_owned()).collect();
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            self.writes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(ops.len());
            for op in ops {
                assert!(matches!(op, KvOp::Delete { .. }), "unexpected {op:?}");
                keys.apply(&op, 0);
            }
            Ok(())
        }
        async fn apply_if<'a>(
            &self,
            _what: &'static str,
            _key: &str,
            _expected: Option<&[u8]>,
            _build: &Ops<'a>,
        ) -> Result<crate::store::Condition, Self::Error> {
            unreachable!("the clean-up writes unconditionally")
        }
        async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>, Self::Error> {
            let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            Ok(keys.get(key))
        }
        async fn revision(&self, _what: &'static str) -> Result<i64, Self::Error> {
            Ok(*self.revision.lock().unwrap_or_else(|p| p.into_inner()))
        }
        async fn count_at(&self, _prefix: &str, _revision: i64) -> Option<u64> {
            self.counted
        }
        async fn page(
            &self,
            prefix: &str,
            after: Option<&[u8]>,
            limit: usize,
            keys_only: bool,
        ) -> Result<Page, Self::Error> {
            let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            Ok(keys.page(prefix, after, limit, keys_only))
        }
    }

    #[tokio::test]
    async fn keys_written_before_the_copy_go_in_bounded_writes_and_later_ones_stay() {
        let store = Memory::default();
        for i in 0..(PAGE + 10) {
            store.put(&format!("/d/s/t/{i:05}"));
        }
        store.put("/d/s/other/1");
        let start = store.revision("start").await.expect("revision");
        for i in [3, PAGE + 5] {
            store.put(&format!("/d/s/t/{i:05}"));
        }
        let mut writes = 0;
        let deleted = delete_stale(&store, "/d/s/t/", start, 100, |_, _| writes += 1)
            .await
            .expect("deleted");
        assert_eq!(deleted, PAGE + 8);
        assert_eq!(
            store.keys(),
            vec![
                "/d/s/other/1".to_string(),
                format!("/d/s/t/{:05}", 3),
                format!("/d/s/t/{:05}", PAGE + 5),
            ]
        );
        let sizes = store
            .writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        assert!(sizes.iter().all(|&n| n <= 100), "{sizes:?}");
        assert_eq!(sizes.len(), writes);
    }

    #[tokio::test]
    async fn a_prefix_empty_at_the_start_is_not_listed() {
        let store = Memory {
            counted: Some(0),
            ..Memory::default()
        };
        store.put("/d/s/t/1");
        let deleted = delete_stale(&store, "/d/s/t/", 1, 100, |_, _| {})
            .await
            .expect("deleted");
        assert_eq!(deleted, 0);
        assert_eq!(store.keys(), vec!["/d/s/t/1".to_string()]);
    }
}
