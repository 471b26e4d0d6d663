//! Binlog streaming (DESIGN §1, §5): the dump connection and its errors, and the decoding of
//! row events; what each event means is [`crate::decoder`]'s. Streaming starts
//! from the GTID state when the position has one (MariaDB `@slave_connect_state`, MySQL
//! COM_BINLOG_DUMP_GTID), else from file/offset; transactions at or before the resume point are
//! skipped; idle or filtered-out traffic yields `Heartbeat`s.

use crate::config::ValidMysql;
use crate::decoder::Decoder;
use crate::error::{MysqlError, Result};
pub use crate::events::Mode;
use crate::position::{Gtids, SourcePosition};
use crate::prereq::{Flavour, ServerInfo};
use crate::snapshot::with_mariadb_gtid;
use crate::statement::{Dialect, NameCase};
use etcdsync_core::{Message, TableId};
use futures::StreamExt;
use mysql_async::prelude::*;
use mysql_async::BinlogStreamRequest;
use mysql_async::Conn;
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The server sends a heartbeat after this much idle time.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(5);
/// No event (not even a heartbeat) for this long means the connection is dead.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// `@mariadb_slave_capability` value announcing MariaDB GTID support (MARIA_SLAVE_CAPABILITY_GTID).
const MARIADB_CAPABILITY_GTID: u8 = 4;
/// Streams from `start` until shutdown, the sink going away, or an error. A purged start
/// position is reported as [`MysqlError::Purged`] before anything is sent. `resumed`: `start` is
/// a checkpoint, so selected tables the sink never wrote (the selection grew while etcdsync was
/// stopped) are copied before their changes stream.
#[allow(clippy::too_many_arguments)]
pub async fn stream(
    conn: Conn,
    config: &ValidMysql,
    server: &ServerInfo,
    start: SourcePosition,
    resumed: bool,
    written_tables: &HashSet<TableId>,
    output: &mpsc::Sender<Message>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let mut conn = conn;
    let heartbeat_ns = HEARTBEAT_PERIOD.as_nanos();
    conn.query_drop(format!("SET @master_heartbeat_period = {heartbeat_ns}"))
        .await
        .map_err(|e| MysqlError::driver("setting the binlog heartbeat period", e))?;
    let mut start = start;
    if server.flavour == Flavour::MariaDb {
        conn.query_drop(format!(
            "SET @mariadb_slave_capability = {MARIADB_CAPABILITY_GTID}"
        ))
        .await
        .map_err(|e| MysqlError::driver("announcing MariaDB GTID support", e))?;
        if start.gtid.is_empty() {
            // A checkpoint without GTIDs (written before they were recorded): look the GTID
            // state of its file/offset up, so positions from now on carry a complete one.
            start = match with_mariadb_gtid(&mut conn, server.flavour, start.clone()).await {
                Ok(with) => with,
                Err(e) => {
                    tracing::debug!(error = %e, position = %start, "no GTID position for the start position; streaming by file and offset");
                    start
                }
            };
        }
    }
    let file = start.binlog.file.clone();
    let host = crate::config::replica_host(&config.pipeline);
    let mut request = BinlogStreamRequest::new(config.server_id).with_hostname(host.as_bytes());
    let mode = match (&start.gtid, server.flavour) {
        (Gtids::MariaDb(pos), Flavour::MariaDb) if !pos.is_empty() => {
            // With @slave_connect_state set, the server finds the start by GTID and ignores
            // the file and offset of COM_BINLOG_DUMP.
            conn.query_drop(format!(
                "SET @slave_connect_state = '{pos}', @slave_gtid_strict_mode = 0, \
                 @slave_gtid_ignore_duplicates = 0"
            ))
            .await
            .map_err(|e| MysqlError::driver("setting the GTID start (@slave_connect_state)", e))?;
            Mode::Gtid
        }
        (Gtids::MySql(set), Flavour::MySql) if !set.is_empty() => {
            let sids = set.to_sids().map_err(|e| {
                MysqlError::Other(format!("cannot resume from the GTID set of {start}: {e}"))
            })?;
            request = request.with_gtid().with_gtid_set(sids);
            Mode::Gtid
        }
        _ => {
            request = request
                .with_filename(file.as_bytes())
                .with_pos(start.binlog.offset);
            Mode::FileOffset
        }
    };
    let listed = crate::snapshot::selected_tables(&mut conn, &config.tables).await?;
    let mut never_written = Vec::new();
    if resumed && config.snapshot != crate::config::SnapshotMode::Never {
        for (id, _) in listed.iter().filter(|(id, _)| !written_tables.contains(id)) {
            if has_rows(&mut conn, id).await? {
                never_written.push(id.clone());
            }
        }
    }
    let lower_case_names: u8 = conn
        .query_first("SELECT @@lower_case_table_names")
        .await
        .map_err(|e| MysqlError::driver("reading lower_case_table_names", e))?
        .unwrap_or(0);
    let dialect = Dialect {
        ansi_quotes: false,
        names: NameCase::from_setting(lower_case_names),
        no_backslash_escapes: false,
    };
    let mut decoder = Decoder::new(config, server, dialect, mode, start.clone(), output.clone());
    decoder.synced_at_start(listed.into_iter().map(|(id, _)| id));
    // A table dropped while etcdsync was stopped is no longer listed, yet a replayed
    // `DROP DATABASE` must remove its keys.
    decoder.written_by_sink(
        written_tables
            .iter()
            .filter(|t| config.tables.matches(t))
            .cloned(),
    );
    if !never_written.is_empty() {
        tracing::warn!(tables = ?never_written.iter().map(ToString::to_string).collect::<Vec<_>>(), "selected tables the sink holds no row of (the selection grew while etcdsync was stopped); copying them first");
        if !decoder
            .copy_for(crate::statement::Statement::Recopy(never_written))
            .await?
        {
            return Ok(());
        }
    }
    let mut events = conn
        .get_binlog_stream(request)
        .await
        .map_err(|e| stream_error(e, config, &start, true))?;
    tracing::info!(position = %start, mode = ?mode, server_id = config.server_id, "binlog streaming started");
    let mut first = true;
    // Until the first event: end a deposed instance's dump thread that blocks this one.
    let reaper = crate::takeover::end_stuck_dumps(&config.opts);
    tokio::pin!(reaper);
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = tokio::time::timeout(READ_TIMEOUT, events.next()) => next,
            _ = &mut reaper, if first => continue,
        };
        let event = match next {
            Err(_) => {
                return Err(MysqlError::Connection {
                    context: format!(
                        "no binlog event or heartbeat for {} s at {}",
                        READ_TIMEOUT.as_secs(),
                        decoder.position
                    ),
                    source: mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed),
                })
            }
            Ok(None) => {
                return Err(MysqlError::Connection {
                    context: format!("the server ended the binlog stream at {}", decoder.position),
                    source: mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed),
                })
            }
            // The server refuses a start position with the first packet of the stream.
            Ok(Some(Err(e))) if first => return Err(stream_error(e, config, &start, true)),
            Ok(Some(Err(e))) => return Err(stream_error(e, config, &decoder.position, false)),
            Ok(Some(Ok(event))) => event,
        };
        first = false;
        if !decoder.handle(&event).await? {
            break;
        }
    }
    // Dropping the stream closes the connection; an unfinished transaction is not sent.
    drop(events);
    Ok(())
}

/// Whether `table` has a row: one the sink never wrote (it writes a table's marker before its
/// first key) has rows etcd lacks; an empty one has nothing to copy, nor has a table whose
/// tablespace is discarded (`IMPORT TABLESPACE` copies it).
async fn has_rows(conn: &mut Conn, table: &TableId) -> Result<bool> {
    use crate::snapshot::RowProbe;
    // A table redefined under a read view (the server's autocommit off) is taken as having rows:
    // copying it again costs time, missing its rows would lose them.
    Ok(matches!(
        crate::snapshot::probe_row(conn, table).await?,
        RowProbe::Row | RowProbe::Redefined
    ))
}

/// Maps a binlog stream error: purged binlog and server-id clashes get their own messages.
/// Error 1236 means "purged" only as the answer to the start position (`first`): later in the
/// stream part of a transaction may have been sent already, so it is a connection error and
/// the restart from the checkpoint meets the purge, if it is one, before anything is sent.
fn stream_error(
    error: mysql_async::Error,
    config: &ValidMysql,
    at: &SourcePosition,
    first: bool,
) -> MysqlError {
    if let mysql_async::Error::Server(server) = &error {
        let message = server.message.to_ascii_lowercase();
        if message.contains("same server_uuid/server_id") || message.contains("same server_id") {
            // A new leader of this pipeline replaces a deposed one's connection this way; the
            // restart confirms leadership first, and the start-up check names any other replica.
            return MysqlError::Connection {
                context: format!(
                    "another binlog connection registered with server_id {} and the server ended this one at {at} \
                     (a new instance of this pipeline taking over, or another replica using that id: then set \
                     source.server_id to a unique value)",
                    config.server_id
                ),
                source: error,
            };
        }
        if server.code == 1236 && first {
            return MysqlError::Purged(purged_message(at, &server.message));
        }
        if server.code == 1236 {
            return MysqlError::Connection {
                context: format!(
                    "the server stopped the binlog stream at {at} ({}); reconnecting",
                    server.message
                ),
                source: error,
            };
        }
    }
    MysqlError::driver(format!("reading the binlog at {at}"), error)
}

/// The error for a checkpoint whose binlog is no longer on the server.
pub fn purged_message(at: &SourcePosition, detail: &str) -> String {
    format!(
        "cannot resume from binlog position {at}: {detail}. The binlog holding it has been purged \
         (expire_logs_days / binlog_expire_logs_seconds / PURGE BINARY LOGS), so changes since the \
         checkpoint are lost to etcdsync. Fix: set `source.snapshot: when_needed` to re-snapshot \
         automatically, or delete the pipeline's checkpoint key in etcd to start over with a snapshot; \
         keep binlogs longer than the longest outage"
    )
}
