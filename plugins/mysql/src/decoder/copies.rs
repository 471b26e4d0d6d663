//! Tables copied again while streaming: which a DDL affects, and the copy itself
//! ([`crate::snapshot::copy_while_streaming`]).

use super::Decoder;
use crate::error::Result;
use crate::statement::Statement;
use etcdsync_core::{Position, TableId};
use std::time::Instant;

impl Decoder<'_> {
    /// Copies the tables a rename or a row-changing DDL affected, and removes the keys of names
    /// that are gone, from a consistent read taken now; their row events up to that read are
    /// in the copy.
    pub(crate) async fn copy_for(&mut self, statement: Statement) -> Result<bool> {
        let (copy, retire): (Vec<TableId>, Vec<TableId>) = match statement {
            Statement::Rename(pairs) => {
                let mut exists: Vec<(TableId, bool)> = Vec::new();
                let mut set =
                    |id: TableId, now: bool| match exists.iter_mut().find(|(t, _)| *t == id) {
                        Some(entry) => entry.1 = now,
                        None => exists.push((id, now)),
                    };
                for (from, to) in pairs {
                    set(from, false);
                    set(to, true);
                }
                let (present, gone): (Vec<_>, Vec<_>) =
                    exists.into_iter().partition(|(_, now)| *now);
                (
                    present.into_iter().map(|(t, _)| t).collect(),
                    gone.into_iter().map(|(t, _)| t).collect(),
                )
            }
            Statement::Recopy(tables) => (tables, Vec::new()),
            _ => return Ok(true),
        };
        let copy: Vec<TableId> = copy
            .into_iter()
            .filter(|t| self.selection.matches(t))
            .collect();
        let retire: Vec<TableId> = retire
            .into_iter()
            .filter(|t| self.selection.matches(t))
            .collect();
        if copy.is_empty() && retire.is_empty() {
            return Ok(true);
        }
        let at = self.reportable().to_string();
        tracing::info!(copy = ?copy.iter().map(ToString::to_string).collect::<Vec<_>>(), retire = ?retire.iter().map(ToString::to_string).collect::<Vec<_>>(), position = %at, "a DDL changed rows without row events; copying the tables again");
        let Some(done) = crate::snapshot::copy_while_streaming(
            self.config,
            self.server,
            &copy,
            &retire,
            Position::new(at.clone()),
            &self.output,
        )
        .await?
        else {
            return Ok(false);
        };
        if done.copied.is_empty() && done.retired.is_empty() {
            // Nothing to copy (tablespaces discarded): no step was sent.
            return Ok(true);
        }
        for id in done.retired {
            self.synced.remove(&id);
            self.written.remove(&id);
            self.copied.remove(&id);
        }
        for id in done.copied {
            self.synced.insert(id.clone());
            self.copied.insert(id, done.position.binlog.clone());
        }
        self.reported = at;
        self.last_report = Instant::now();
        Ok(true)
    }
}

/// The tables a DDL statement names.
pub(super) fn statement_tables(statement: &Statement) -> Vec<&TableId> {
    match statement {
        Statement::Truncate(tables) | Statement::Drop(tables) | Statement::Recopy(tables) => {
            tables.iter().collect()
        }
        Statement::Rename(pairs) => pairs.iter().flat_map(|(a, b)| [a, b]).collect(),
        _ => Vec::new(),
    }
}
