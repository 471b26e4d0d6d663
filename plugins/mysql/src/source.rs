//! The running `mysql` source: connects, checks prerequisites, decides between resuming from
//! the checkpoint, snapshotting, or starting at the current position, then streams the binlog
//! until shutdown (Source contract in core/src/source.rs; DESIGN §5–6).

use crate::binlog;
use crate::config::{SnapshotMode, ValidMysql};
use crate::error::{MysqlError, Result};
use crate::position::SourcePosition;
use crate::prereq::{self, ServerInfo};
use crate::snapshot;
use etcdsync_core::source::{Source, SourceIo};
use etcdsync_core::{
    async_trait, telemetry, Checkpoint, Error, ErrorKind, Message, Position, TableId,
};
use mysql_async::prelude::*;
use mysql_async::Conn;
use std::collections::HashSet;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use crate::connect::connect;

/// Where streaming starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// After the checkpoint.
    Resume(SourcePosition),
    /// Snapshot first, then stream from its position.
    Snapshot,
    /// No snapshot (`snapshot: never`): from the server's current position.
    Current(SourcePosition),
}

pub struct MysqlSource {
    config: ValidMysql,
    server: ServerInfo,
    start: Start,
    /// Tables the sink holds rows of: a `DROP DATABASE` replayed after they are gone from the
    /// server still finds them.
    written_tables: HashSet<TableId>,
}

impl MysqlSource {
    pub async fn build(config: ValidMysql, resume: Option<Checkpoint>) -> Result<Self, Error> {
        let mut conn = connect(&config.opts).await?;
        let server = prereq::check(&mut conn, &config).await?;
        tracing::info!(version = %server.version, flavour = ?server.flavour, url = %config.redacted_url, "connected to the MySQL/MariaDB server");
        let start = match resume {
            Some(checkpoint) => {
                let Some(position) = SourcePosition::parse(checkpoint.position.as_str()) else {
                    return Err(Error::config(format!(
                        "the checkpoint position `{}` is not a MySQL binlog position (file:offset [gtid=…]); delete the checkpoint key to start over",
                        checkpoint.position
                    )));
                };
                // With a GTID state the server finds the start itself, even when the file
                // name is not its own (another server of the same replication topology).
                if !position.gtid.is_empty() || binlog_exists(&mut conn, &position).await? {
                    Start::Resume(position)
                } else if config.snapshot == SnapshotMode::WhenNeeded {
                    telemetry::get().error(ErrorKind::Config, "source");
                    tracing::warn!(position = %position, "the checkpoint's binlog has been purged; re-snapshotting (snapshot: when_needed)");
                    Start::Snapshot
                } else {
                    return Err(MysqlError::Purged(binlog::purged_message(
                        &position,
                        &format!(
                            "binlog file {} is not on the server (SHOW BINARY LOGS)",
                            position.binlog.file
                        ),
                    ))
                    .into());
                }
            }
            None if config.snapshot == SnapshotMode::Never => {
                Start::Current(snapshot::current_position(&mut conn, &server).await?)
            }
            None => Start::Snapshot,
        };
        drop(conn);
        Ok(Self {
            config,
            server,
            start,
            written_tables: HashSet::new(),
        })
    }

    /// The tables the sink holds rows of ([`etcdsync_core::source::SourceContext::written_tables`]).
    pub fn knowing(mut self, written_tables: HashSet<TableId>) -> Self {
        self.written_tables = written_tables;
        self
    }

    pub fn start(&self) -> &Start {
        &self.start
    }
}

/// True when the position's binlog file is still listed by `SHOW BINARY LOGS`.
async fn binlog_exists(conn: &mut Conn, position: &SourcePosition) -> Result<bool> {
    Ok(binary_logs(conn)
        .await?
        .iter()
        .any(|(file, _)| *file == position.binlog.file))
}

/// The binlog files on the server with their sizes in bytes (`SHOW BINARY LOGS`), oldest first.
pub async fn binary_logs(conn: &mut Conn) -> Result<Vec<(String, u64)>> {
    let rows: Vec<mysql_async::Row> = conn
        .query("SHOW BINARY LOGS")
        .await
        .map_err(|e| MysqlError::driver("listing binlog files (SHOW BINARY LOGS)", e))?;
    Ok(rows
        .into_iter()
        .filter_map(|mut row| {
            let file = row.take_opt::<String, _>(0)?.ok()?;
            let size = row.take_opt::<u64, _>(1).and_then(Result::ok).unwrap_or(0);
            Some((file, size))
        })
        .collect())
}

#[async_trait]
impl Source for MysqlSource {
    async fn run(self: Box<Self>, io: SourceIo) -> Result<(), Error> {
        let SourceIo {
            output,
            acked,
            shutdown,
        } = io;
        let resumed = matches!(self.start, Start::Resume(_));
        let start = match self.start.clone() {
            Start::Resume(position) => position,
            Start::Current(position) => {
                // Record where streaming starts, so a restart does not skip ahead.
                let heartbeat = Message::Heartbeat {
                    position: Position::new(position.to_string()),
                };
                if output.send(heartbeat).await.is_err() {
                    return Ok(());
                }
                position
            }
            Start::Snapshot => match self.snapshot(&output, &shutdown).await? {
                Some(position) => position,
                None => return finish(output, acked).await,
            },
        };
        let conn = connect(&self.config.opts).await?;
        let streamed = binlog::stream(
            conn,
            &self.config,
            &self.server,
            start,
            resumed,
            &self.written_tables,
            &output,
            &shutdown,
        )
        .await;
        match streamed {
            // The checkpoint's GTIDs are gone from the server's binlogs (found only when
            // streaming starts, as the GTID state names no file).
            Err(MysqlError::Purged(message))
                if resumed && self.config.snapshot == SnapshotMode::WhenNeeded =>
            {
                telemetry::get().error(ErrorKind::Config, "source");
                tracing::warn!(error = %message, "re-snapshotting (snapshot: when_needed)");
                let Some(position) = self.snapshot(&output, &shutdown).await? else {
                    return finish(output, acked).await;
                };
                let conn = connect(&self.config.opts).await?;
                binlog::stream(
                    conn,
                    &self.config,
                    &self.server,
                    position,
                    false,
                    &self.written_tables,
                    &output,
                    &shutdown,
                )
                .await?;
            }
            other => other?,
        }
        finish(output, acked).await
    }
}

impl MysqlSource {
    /// Runs the snapshot unless shutdown comes first; `None` when it did not complete.
    async fn snapshot(
        &self,
        output: &mpsc::Sender<Message>,
        shutdown: &CancellationToken,
    ) -> Result<Option<SourcePosition>> {
        tokio::select! {
            _ = shutdown.cancelled() => Ok(None),
            done = snapshot::run(&self.config, &self.server, output) => done,
        }
    }
}

/// Closes the output and waits for the sink's last acknowledgement (Source contract).
async fn finish(
    output: mpsc::Sender<Message>,
    acked: watch::Receiver<Option<Position>>,
) -> Result<(), Error> {
    drop(output);
    let last = SourceIo::final_ack(acked).await;
    tracing::info!(position = ?last.as_ref().map(|p| p.to_string()), "mysql source stopped");
    Ok(())
}
