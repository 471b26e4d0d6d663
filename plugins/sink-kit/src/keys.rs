//! Keys held in memory with the revision each was written at: what a store without a native
//! key-value layer (a file, a log) keeps its metadata keys in, and answers [`crate::store::Store`]'s
//! reads from. Serializable, so such a store can persist it beside its data.

use crate::batch::KvOp;
use crate::store::{Page, Stored};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Key → (value, revision it was last written at).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keys(BTreeMap<String, (Vec<u8>, i64)>);

impl Keys {
    /// Applies one op as written at `revision`.
    pub fn apply(&mut self, op: &KvOp, revision: i64) {
        match op {
            KvOp::Put { key, value } => {
                self.0.insert(key.clone(), (value.clone(), revision));
            }
            KvOp::Delete { key } => {
                self.0.remove(key);
            }
            KvOp::DeleteRange { prefix } => self.0.retain(|key, _| !key.starts_with(prefix)),
        }
    }

    pub fn get(&self, key: &str) -> Option<(Vec<u8>, i64)> {
        self.0.get(key).cloned()
    }

    /// How many keys start with `prefix`.
    pub fn count(&self, prefix: &str) -> u64 {
        self.0.keys().filter(|k| k.starts_with(prefix)).count() as u64
    }

    /// [`crate::store::Store::page`] over these keys.
    pub fn page(&self, prefix: &str, after: Option<&[u8]>, limit: usize, keys_only: bool) -> Page {
        let mut under = self
            .0
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && after.is_none_or(|a| k.as_bytes() > a));
        let entries = under
            .by_ref()
            .take(limit)
            .map(|(key, (value, revision))| Stored {
                key: key.as_bytes().to_vec(),
                value: if keys_only { Vec::new() } else { value.clone() },
                revision: *revision,
            })
            .collect();
        Page {
            entries,
            more: under.next().is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_key_order_and_ranges_delete_by_prefix() {
        let mut keys = Keys::default();
        for (i, key) in ["/m/a", "/m/b", "/m/c", "/n/a"].into_iter().enumerate() {
            let value = key.as_bytes().to_vec();
            keys.apply(
                &KvOp::Put {
                    key: key.into(),
                    value,
                },
                i as i64 + 1,
            );
        }
        let first = keys.page("/m/", None, 2, true);
        assert_eq!(first.entries.len(), 2);
        assert!(first.more && first.entries[0].value.is_empty());
        let rest = keys.page("/m/", Some(b"/m/b"), 2, false);
        assert_eq!(rest.entries.len(), 1);
        assert!(!rest.more);
        assert_eq!(
            (rest.entries[0].value.as_slice(), rest.entries[0].revision),
            (&b"/m/c"[..], 3)
        );
        keys.apply(
            &KvOp::DeleteRange {
                prefix: "/m/".into(),
            },
            5,
        );
        keys.apply(&KvOp::Delete { key: "/n/a".into() }, 6);
        assert_eq!((keys.count("/m/"), keys.get("/n/a")), (0, None));
    }
}
