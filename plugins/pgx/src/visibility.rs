//! Commits the stream delivered, for reads of the same rows: logical decoding sends a
//! transaction once its commit record is flushed, a moment before other sessions see it, so a
//! row read in that moment (an unchanged TOAST value, [`crate::source`]'s row fetcher) would be
//! the row from before the transaction — or none, for a row it inserted or moved to a new key.
//! The stream records each transaction's xid by its commit LSN; a read for a change of that
//! transaction first waits until the xid is visible ([`crate::inspect::PgxInspector::wait_visible`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Transactions whose visibility has not been confirmed yet: commit LSN → xid.
#[derive(Debug, Default)]
pub struct Commits {
    pending: Mutex<BTreeMap<u64, u32>>,
}

/// How many unconfirmed transactions are remembered (the oldest are forgotten: a read for one
/// of them comes long after its commit).
const REMEMBERED: usize = 4096;

impl Commits {
    /// The stream began transaction `xid`, which commits at `final_lsn`.
    pub fn begun(&self, final_lsn: u64, xid: u32) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.insert(final_lsn, xid);
        while pending.len() > REMEMBERED {
            pending.pop_first();
        }
    }

    /// The xid to wait for before reading rows for a change of the transaction committed at
    /// `final_lsn`; `None` when it is known to be visible (or unknown: long past).
    pub fn unconfirmed(&self, final_lsn: u64) -> Option<u32> {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.get(&final_lsn).copied()
    }

    /// The transaction committed at `final_lsn` is visible.
    pub fn confirmed(&self, final_lsn: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.remove(&final_lsn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confirmed_commit_is_not_waited_for_again_and_old_ones_are_forgotten() {
        let commits = Commits::default();
        commits.begun(100, 7);
        assert_eq!(commits.unconfirmed(100), Some(7));
        commits.confirmed(100);
        assert_eq!(commits.unconfirmed(100), None);
        for lsn in 0..(REMEMBERED as u64 + 10) {
            commits.begun(1000 + lsn, 1);
        }
        assert_eq!(commits.unconfirmed(1000), None);
        assert_eq!(commits.unconfirmed(1000 + REMEMBERED as u64 + 9), Some(1));
    }
}
