//! The transaction shapes that undo or defer rows: groups logged with `ROLLBACK`,
//! `ROLLBACK TO SAVEPOINT`, and XA transactions held from `XA PREPARE` to `XA COMMIT`.

use super::{record_gtid, Decoder, Prepared, HELD_ROWS_LIMIT};
use crate::error::{MysqlError, Result};
use crate::position::BinlogPos;
use crate::statement::Xid;

impl Decoder<'_> {
    /// A group logged with `ROLLBACK` (a non-transactional change inside it, e.g. the drop of a
    /// failed `CREATE OR REPLACE`): its row changes were undone, its DDL was not.
    pub(super) async fn rollback(&mut self, log_pos: u64, timestamp: u32) -> Result<bool> {
        if self.in_txn && self.sent > 0 && !self.already_applied(log_pos) {
            return Err(MysqlError::Other(format!(
                "the transaction at {}:{} was rolled back after more than {} of its rows were applied in \
                 parts; etcd cannot be rolled back: take a fresh snapshot (delete the checkpoint key under \
                 the sink's meta prefix)",
                self.file, self.txn_start, self.sent
            )));
        }
        self.pending
            .retain(|c| matches!(c.op, etcdsync_core::Op::Truncate));
        self.commit(log_pos, timestamp).await
    }

    /// `ROLLBACK TO savepoint` (logged when a non-transactional table was touched): the rows
    /// after the savepoint were undone.
    pub(super) fn rollback_to(&mut self, name: &str, log_pos: u64) -> Result<()> {
        if !self.in_txn {
            return Ok(());
        }
        let Some(i) = self
            .savepoints
            .iter()
            .rposition(|(n, _)| n.eq_ignore_ascii_case(name))
        else {
            return Err(MysqlError::Decode {
                position: format!("{}:{log_pos}", self.file),
                message: format!(
                    "ROLLBACK TO `{name}` without a SAVEPOINT `{name}` in the same transaction"
                ),
            });
        };
        let mark = self.savepoints[i].1;
        if mark < self.sent {
            return Err(MysqlError::Other(format!(
                "the transaction at {}:{} rolled back to savepoint `{name}` after more than {HELD_ROWS_LIMIT} \
                 rows following it were applied in parts; etcd cannot be rolled back: take a fresh snapshot \
                 (delete the checkpoint key under the sink's meta prefix)",
                self.file, self.txn_start
            )));
        }
        self.pending.truncate(mark - self.sent);
        self.savepoints.truncate(i + 1);
        Ok(())
    }

    /// The end of an XA transaction's prepared part: one phase commits now; otherwise its
    /// rows wait for `XA COMMIT`, and positions reported until then stay before it.
    pub(super) async fn xa_prepare(
        &mut self,
        raw: &[u8],
        log_pos: u64,
        timestamp: u32,
    ) -> Result<bool> {
        if raw.first() == Some(&1) {
            self.xa = false;
            return self.commit(log_pos, timestamp).await;
        }
        let where_ = format!("{}:{log_pos}", self.file);
        let xid = prepared_xid(raw).ok_or_else(|| MysqlError::Decode {
            position: where_.clone(),
            message: "short XA_PREPARE event".into(),
        })?;
        let skip = self.already_applied(log_pos);
        let before = self.position.clone();
        self.in_txn = false;
        self.xa = false;
        self.savepoints.clear();
        self.position.binlog = BinlogPos::new(self.file.clone(), log_pos);
        if let Some(gtid) = self.gtid.take() {
            if self.track_gtids {
                record_gtid(&mut self.position.gtid, gtid);
            }
        }
        let changes = std::mem::take(&mut self.pending);
        let sent = std::mem::take(&mut self.sent);
        if skip {
            return Ok(true);
        }
        if sent > 0 {
            return Err(MysqlError::Decode {
                position: where_,
                message: format!(
                    "XA transaction {xid} was prepared after some of its rows were sent as an ordinary transaction"
                ),
            });
        }
        tracing::debug!(xid = %xid, rows = changes.len(), at = %where_, "XA transaction prepared; its rows wait for XA COMMIT");
        self.prepared.push(Prepared {
            xid,
            before,
            at: where_,
            changes,
        });
        Ok(true)
    }

    /// `XA COMMIT` (its rows are applied now) or `XA ROLLBACK` (they are dropped).
    pub(super) async fn xa_decided(
        &mut self,
        xid: Xid,
        commit: bool,
        log_pos: u64,
        timestamp: u32,
    ) -> Result<bool> {
        let found = self.prepared.iter().position(|p| p.xid == xid);
        let skip = self.already_applied(log_pos);
        match found {
            Some(i) => {
                let prepared = self.prepared.remove(i);
                // The ones prepared after it were pinned past its prepare: a restart from them
                // would meet this commit without its rows. Pin them where this one was.
                for later in &mut self.prepared[i..] {
                    later.before = prepared.before.clone();
                }
                tracing::debug!(xid = %xid, prepared_at = %prepared.at, commit, "XA transaction decided");
                if commit && !skip {
                    self.pending = prepared.changes;
                }
            }
            None if skip || !commit => {}
            None => {
                return Err(MysqlError::Other(format!(
                    "XA COMMIT {xid} at {}:{log_pos}: the transaction was prepared before the position this stream \
                     started from (a snapshot taken while it was prepared), so its rows are unknown; take a fresh \
                     snapshot (delete the checkpoint key under the sink's meta prefix) once `XA RECOVER` lists no \
                     prepared transaction",
                    self.file
                )));
            }
        }
        self.commit(log_pos, timestamp).await
    }

    pub(super) fn too_many_held(&self, log_pos: u64) -> MysqlError {
        MysqlError::Other(format!(
            "the XA transaction at {}:{} (now at {log_pos}) has more than {HELD_ROWS_LIMIT} rows; they are held in \
             memory until XA COMMIT and the limit protects the process, so the stream cannot pass it: once it is \
             committed or rolled back (`XA RECOVER` no longer lists it), take a fresh snapshot (delete the checkpoint \
             key under the sink's meta prefix), and write XA transactions of fewer rows",
            self.file, self.txn_start
        ))
    }
}

/// The xid of an XA_PREPARE event: one_phase (1), format id (4), gtrid and bqual lengths
/// (4 each), then their bytes.
fn prepared_xid(raw: &[u8]) -> Option<Xid> {
    let word = |at: usize| {
        raw.get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
    };
    let format = word(1)?;
    let gtrid_len = usize::try_from(word(5)?).ok()?;
    let bqual_len = usize::try_from(word(9)?).ok()?;
    let gtrid = raw.get(13..13 + gtrid_len)?.to_vec();
    let bqual = raw
        .get(13 + gtrid_len..13 + gtrid_len + bqual_len)?
        .to_vec();
    Some(Xid {
        format: u64::from(format),
        gtrid,
        bqual,
    })
}
