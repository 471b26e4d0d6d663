//! The MariaDB column hints the decoder reads per table on a side connection (see
//! [`crate::columns`]), and whether the user may read a table.

use crate::columns::{read_hints, ColumnHints};
use crate::connect::connect;
use crate::error::{MysqlError, Result};
use etcdsync_core::{telemetry, TableId};
use mysql_async::prelude::Queryable as _;
use mysql_async::{Conn, Opts};
use std::collections::HashMap;

/// MariaDB column hints per table, read on a side connection and cached until the table's
/// column list changes or a DDL statement passes (see `columns`).
pub(super) struct HintCache {
    pub(super) opts: Opts,
    pub(super) conn: Option<Conn>,
    pub(super) tables: HashMap<TableId, (Vec<String>, ColumnHints)>,
}

impl HintCache {
    pub(super) async fn get(&mut self, table: &TableId, names: &[String]) -> Result<ColumnHints> {
        if let Some((known, hints)) = self.tables.get(table) {
            if known.as_slice() == names {
                return Ok(hints.clone());
            }
        }
        // The side connection idles between DDLs and may have been closed by the server
        // (wait_timeout): one fresh attempt before giving up.
        let mut attempt = 0;
        let hints = loop {
            attempt += 1;
            let conn = match &mut self.conn {
                Some(conn) => conn,
                None => self.conn.insert(connect(&self.opts).await?),
            };
            match read_hints(conn, table).await {
                Ok(hints) => break hints,
                Err(e) => {
                    self.conn = None;
                    if attempt > 1 || !matches!(e, MysqlError::Connection { .. }) {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, table = %table, "reconnecting the side connection to read column hints");
                    telemetry::get().retry("source");
                }
            }
        };
        self.tables
            .insert(table.clone(), (names.to_vec(), hints.clone()));
        Ok(hints)
    }

    pub(super) fn clear(&mut self) {
        self.tables.clear();
    }

    /// Whether the user may read `table`: `false` only when the server says so (error 1142);
    /// a table dropped since the event is readable as far as this goes.
    pub(super) async fn readable(&mut self, table: &TableId) -> Result<bool> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(connect(&self.opts).await?),
        };
        let probe = format!(
            "SELECT 1 FROM {} LIMIT 0",
            crate::statement::quote_table(table)
        );
        match conn.query_drop(probe).await {
            Ok(()) => Ok(true),
            Err(e) if crate::error::server_code(&e) == Some(1142) => Ok(false),
            Err(e) if crate::error::server_code(&e).is_some() => Ok(true),
            Err(e) => {
                self.conn = None;
                Err(MysqlError::driver(
                    format!("checking that {table} can be read"),
                    e,
                ))
            }
        }
    }
}
