//! Binlog streaming (DESIGN §1, §5): events → core messages. Row events between BEGIN/GTID and
//! XID/COMMIT become one source transaction whose `Commit` carries the position after its last
//! event; TRUNCATE / DROP / RENAME TABLE query events become range deletes. Streaming starts
//! from the GTID state when the position has one (MariaDB `@slave_connect_state`, MySQL
//! COM_BINLOG_DUMP_GTID), else from file/offset; transactions at or before the resume point are
//! skipped; idle or filtered-out traffic yields `Heartbeat`s.

use crate::columns::{read_hints, ColumnHints};
use crate::config::{OnDrop, ValidMysql};
use crate::error::{MysqlError, Result};
use crate::position::{uuid_text, BinlogPos, Gtids, SourcePosition};
use crate::prereq::{Flavour, ServerInfo};
use crate::snapshot::with_mariadb_gtid;
use crate::source::connect;
use crate::tablemap::{
    column_names, map_table, project, read_image, Mapped, TableInfo, TableMapError,
};
use etcdsync_core::pipeline::CHANGES_PER_MESSAGE;
use etcdsync_core::tables::TableSelection;
use etcdsync_core::telemetry;
use etcdsync_core::{Change, Commit, Message, Position, TableId, TableSchema, Value};
use futures::StreamExt;
use mysql_async::binlog::events::{Event, EventData, RowsEventData, TableMapEvent};
use mysql_async::prelude::*;
use mysql_async::{BinlogStreamRequest, Conn, Opts};
use mysql_common::io::ParseBuf;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The server sends a heartbeat after this much idle time.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(5);
/// No event (not even a heartbeat) for this long means the connection is dead.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Filtered-out transactions report their position at most this often.
const HEARTBEAT_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// MariaDB's own event types, which mysql_common reports as unknown.
const MARIADB_ANNOTATE_ROWS: u8 = 160;
const MARIADB_BINLOG_CHECKPOINT: u8 = 161;
const MARIADB_GTID: u8 = 162;
const MARIADB_GTID_LIST: u8 = 163;
/// `FL_STANDALONE` in a MariaDB GTID event: the event group has no BEGIN/COMMIT (DDL).
const MARIADB_GTID_STANDALONE: u8 = 1;
/// `@mariadb_slave_capability` value announcing MariaDB GTID support (MARIA_SLAVE_CAPABILITY_GTID).
const MARIADB_CAPABILITY_GTID: u8 = 4;
/// `LOG_EVENT_ARTIFICIAL_F`: an event the server made up for this stream (the opening ROTATE).
const ARTIFICIAL_EVENT: u16 = 0x0020;

/// How the dump was requested, which decides how already-applied transactions are recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    FileOffset,
    Gtid,
}

/// Streams from `start` until shutdown, the sink going away, or an error. A purged start
/// position is reported as [`MysqlError::Purged`] before anything is sent.
pub async fn stream(
    conn: Conn,
    config: &ValidMysql,
    server: &ServerInfo,
    start: SourcePosition,
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
    let mut events = conn
        .get_binlog_stream(request)
        .await
        .map_err(|e| stream_error(e, config, &start, true))?;
    tracing::info!(position = %start, mode = ?mode, server_id = config.server_id, "binlog streaming started");
    let mut decoder = Decoder::new(config, server.flavour, mode, start.clone(), output.clone());
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

/// The GTID of the transaction being read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TxnGtid {
    MariaDb { domain: u32, server: u32, seq: u64 },
    MySql { source: String, gno: u64 },
}

/// MariaDB column hints per table, read on a side connection and cached until the table's
/// column list changes or a DDL statement passes (see `columns`).
struct HintCache {
    opts: Opts,
    conn: Option<Conn>,
    tables: HashMap<TableId, (Vec<String>, ColumnHints)>,
}

impl HintCache {
    async fn get(&mut self, table: &TableId, names: &[String]) -> Result<ColumnHints> {
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

    fn clear(&mut self) {
        self.tables.clear();
    }
}

struct Decoder<'a> {
    selection: &'a TableSelection,
    on_drop: OnDrop,
    flavour: Flavour,
    mode: Mode,
    output: mpsc::Sender<Message>,
    tables: HashMap<u64, (TableMapEvent<'static>, Arc<Mapped>)>,
    hints: HintCache,
    /// Position after the last event consumed outside a transaction.
    position: SourcePosition,
    /// GTIDs are recorded in positions only when the start had a complete GTID state.
    track_gtids: bool,
    file: String,
    /// The checkpoint: transactions at or before it are skipped.
    resume: SourcePosition,
    in_txn: bool,
    /// Where the current transaction starts in the binlog file ([`Change::seq`]).
    txn_start: u64,
    /// Changes of the current transaction already sent.
    sent: bool,
    pending: Vec<Change>,
    gtid: Option<TxnGtid>,
    last_report: Instant,
    reported: String,
    warned: HashSet<TableId>,
}

impl<'a> Decoder<'a> {
    fn new(
        config: &'a ValidMysql,
        flavour: Flavour,
        mode: Mode,
        start: SourcePosition,
        output: mpsc::Sender<Message>,
    ) -> Self {
        Self {
            selection: &config.tables,
            on_drop: config.on_drop,
            flavour,
            mode,
            output,
            tables: HashMap::new(),
            hints: HintCache {
                opts: config.opts.clone(),
                conn: None,
                tables: HashMap::new(),
            },
            file: start.binlog.file.clone(),
            track_gtids: !start.gtid.is_empty(),
            resume: start.clone(),
            reported: start.to_string(),
            position: start,
            in_txn: false,
            txn_start: 0,
            sent: false,
            pending: Vec::new(),
            gtid: None,
            last_report: Instant::now(),
            warned: HashSet::new(),
        }
    }

    /// Handles one event; `false` when the sink has gone away.
    async fn handle(&mut self, event: &Event) -> Result<bool> {
        let header = event.header();
        let log_pos = u64::from(header.log_pos());
        let raw_type = header.event_type_raw();
        let data = event.read_data().map_err(|e| MysqlError::Decode {
            position: format!("{}:{log_pos}", self.file),
            message: format!("event type {raw_type}: {e}"),
        })?;
        let Some(data) = data else {
            return self.handle_unknown(raw_type, event, log_pos).await;
        };
        match data {
            EventData::RotateEvent(rotate) => {
                self.file = rotate_file_name(event, rotate.name_raw());
                let artificial = header.flags_raw() & ARTIFICIAL_EVENT != 0 || log_pos == 0;
                // In GTID mode the opening ROTATE names the file but not where in it the
                // stream starts: keep the checkpoint's position until the next event says.
                let keep = artificial && self.mode == Mode::Gtid;
                if !self.in_txn && !keep {
                    self.position.binlog = BinlogPos::new(self.file.clone(), rotate.position());
                }
                Ok(true)
            }
            EventData::QueryEvent(query) => {
                let sql = query.query();
                let trimmed = sql.trim();
                if trimmed.eq_ignore_ascii_case("BEGIN") {
                    self.begin(log_pos);
                    Ok(true)
                } else if trimmed.eq_ignore_ascii_case("COMMIT") {
                    self.commit(log_pos, header.timestamp()).await
                } else {
                    let schema = query.schema().into_owned();
                    self.handle_statement(trimmed, &schema, log_pos, header.timestamp())
                        .await
                }
            }
            EventData::TableMapEvent(tme) => {
                self.map(tme.into_owned()).await?;
                Ok(true)
            }
            EventData::RowsEvent(rows) => self.rows(&rows, log_pos).await,
            EventData::XidEvent(_) => self.commit(log_pos, header.timestamp()).await,
            EventData::HeartbeatEvent => {
                self.advance_idle(log_pos);
                self.report(true).await
            }
            EventData::GtidEvent(gtid) => {
                // MySQL: a transaction follows (its BEGIN comes as a query event).
                let uuid = uuid_text(&gtid.sid());
                let source = match gtid.tag() {
                    Some(tag) => format!("{uuid}:{}", tag.as_str()),
                    None => uuid,
                };
                self.gtid = Some(TxnGtid::MySql {
                    source,
                    gno: gtid.gno(),
                });
                Ok(true)
            }
            EventData::AnonymousGtidEvent(_) => {
                self.gtid = None;
                Ok(true)
            }
            EventData::TransactionPayloadEvent(_) => Err(MysqlError::Prerequisite(format!(
                "  - the binlog at {}:{log_pos} holds a compressed transaction payload: set \
                 binlog_transaction_compression=OFF on the server (SET GLOBAL and my.cnf), then \
                 re-snapshot (delete the checkpoint key), as compressed transactions are not read",
                self.file
            ))),
            EventData::RowsQueryEvent(_)
            | EventData::FormatDescriptionEvent(_)
            | EventData::PreviousGtidsEvent(_)
            | EventData::IntvarEvent(_)
            | EventData::RandEvent(_)
            | EventData::UserVarEvent(_)
            | EventData::IgnorableEvent(_)
            | EventData::StopEvent
            | EventData::UnknownEvent => Ok(true),
            other => {
                tracing::debug!(
                    event_type = raw_type,
                    "ignoring binlog event {:?}",
                    std::mem::discriminant(&other)
                );
                Ok(true)
            }
        }
    }

    /// Outside a transaction, moves the position forward to `log_pos` of the current file.
    fn advance_idle(&mut self, log_pos: u64) {
        if !self.in_txn && log_pos > 0 {
            let candidate = BinlogPos::new(self.file.clone(), log_pos);
            if candidate.compare(&self.position.binlog) == Some(Ordering::Greater) {
                self.position.binlog = candidate;
            }
        }
    }

    async fn handle_unknown(&mut self, raw_type: u8, event: &Event, log_pos: u64) -> Result<bool> {
        match raw_type {
            MARIADB_GTID => {
                let data = event.data();
                let (Some(seq), Some(domain), Some(flags)) = (
                    data.get(0..8).and_then(|b| <[u8; 8]>::try_from(b).ok()),
                    data.get(8..12).and_then(|b| <[u8; 4]>::try_from(b).ok()),
                    data.get(12).copied(),
                ) else {
                    return Err(MysqlError::Decode {
                        position: format!("{}:{log_pos}", self.file),
                        message: "short MariaDB GTID event".into(),
                    });
                };
                self.gtid = Some(TxnGtid::MariaDb {
                    domain: u32::from_le_bytes(domain),
                    server: event.header().server_id(),
                    seq: u64::from_le_bytes(seq),
                });
                if flags & MARIADB_GTID_STANDALONE == 0 {
                    self.begin(log_pos);
                }
                Ok(true)
            }
            // The GTID list the server sends where a GTID-mode stream starts carries that
            // position in its header.
            MARIADB_GTID_LIST => {
                self.advance_idle(log_pos);
                Ok(true)
            }
            MARIADB_ANNOTATE_ROWS | MARIADB_BINLOG_CHECKPOINT => Ok(true),
            other => {
                tracing::debug!(event_type = other, "ignoring unknown binlog event");
                Ok(true)
            }
        }
    }

    fn begin(&mut self, log_pos: u64) {
        self.txn_start = log_pos;
        self.in_txn = true;
        self.sent = false;
        self.pending.clear();
    }

    async fn map(&mut self, tme: TableMapEvent<'static>) -> Result<()> {
        let table_id = tme.table_id();
        if let Some((known, _)) = self.tables.get(&table_id) {
            if *known == tme {
                return Ok(());
            }
        }
        let id = TableId::new(tme.database_name(), tme.table_name());
        let hints = if self.flavour == Flavour::MariaDb && self.selection.matches(&id) {
            let names = column_names(&tme).map_err(|e| MysqlError::Other(e.to_string()))?;
            self.hints.get(&id, &names).await?
        } else {
            ColumnHints::default()
        };
        let mapped = map_table(&tme, self.selection, &hints).map_err(|e| match e {
            TableMapError::KeyExcluded { .. } => MysqlError::Config(e.to_string()),
            other => MysqlError::Other(other.to_string()),
        })?;
        if let Mapped::Ignored = mapped {
            if self.selection.matches(&id) && self.warned.insert(id.clone()) {
                tracing::warn!(table = %id, "table has no primary key; its changes are not synced (add a PRIMARY KEY or exclude it)");
            }
        }
        self.tables.insert(table_id, (tme, Arc::new(mapped)));
        Ok(())
    }

    /// True when the event group ending at `log_pos` was applied before the checkpoint: by
    /// GTID in GTID mode (any server's file names), by file and offset otherwise.
    fn already_applied(&self, log_pos: u64) -> bool {
        if self.mode == Mode::Gtid {
            return match (&self.gtid, &self.resume.gtid) {
                (Some(TxnGtid::MariaDb { domain, seq, .. }), Gtids::MariaDb(pos)) => {
                    pos.covers(*domain, *seq)
                }
                (Some(TxnGtid::MySql { source, gno }), Gtids::MySql(set)) => {
                    set.contains(source, *gno)
                }
                _ => false,
            };
        }
        let here = BinlogPos::new(self.file.clone(), log_pos);
        matches!(
            here.compare(&self.resume.binlog),
            Some(Ordering::Less | Ordering::Equal)
        )
    }

    async fn rows(&mut self, rows: &RowsEventData<'_>, log_pos: u64) -> Result<bool> {
        let Some((_, mapped)) = self.tables.get(&rows.table_id()) else {
            return Err(MysqlError::Decode {
                position: format!("{}:{log_pos}", self.file),
                message: format!("rows event for unknown table id {}", rows.table_id()),
            });
        };
        let Mapped::Synced(info) = mapped.as_ref() else {
            return Ok(true);
        };
        if self.already_applied(log_pos) {
            return Ok(true);
        }
        let info = info.clone();
        let changes = decode_rows(&info, rows).map_err(|e| MysqlError::Decode {
            position: format!("{}:{log_pos}", self.file),
            message: format!("rows of {}: {e}", info.schema.id),
        })?;
        for (row, change) in changes.into_iter().enumerate() {
            // The transaction (where it starts in this binlog), then the event's offset in it and
            // the row's index in the event.
            let start = self.txn_start;
            let offset = log_pos.saturating_sub(start);
            let place = (offset.min((1 << 44) - 1) << 20) | (row.min((1 << 20) - 1) as u64);
            self.pending.push(change.at(Change::seq_of(start, place)));
            if self.pending.len() >= CHANGES_PER_MESSAGE {
                let chunk = std::mem::take(&mut self.pending);
                self.sent = true;
                if self.output.send(Message::Changes(chunk)).await.is_err() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Ends the current transaction at `log_pos`.
    async fn commit(&mut self, log_pos: u64, timestamp: u32) -> Result<bool> {
        let skip = self.already_applied(log_pos);
        self.in_txn = false;
        self.position.binlog = BinlogPos::new(self.file.clone(), log_pos);
        if let Some(gtid) = self.gtid.take() {
            if self.track_gtids {
                record_gtid(&mut self.position.gtid, gtid);
            }
        }
        let pending = std::mem::take(&mut self.pending);
        let sent = std::mem::replace(&mut self.sent, false);
        if skip {
            return Ok(true);
        }
        if pending.is_empty() && !sent {
            return self.report(false).await;
        }
        if !pending.is_empty() && self.output.send(Message::Changes(pending)).await.is_err() {
            return Ok(false);
        }
        let position = self.position.to_string();
        self.reported = position.clone();
        self.last_report = Instant::now();
        let commit = Commit {
            position: Position::new(position),
            commit_time: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(timestamp))),
        };
        Ok(self.output.send(Message::Commit(commit)).await.is_ok())
    }

    /// Reports the current position as a heartbeat when it moved (at most once a second
    /// unless `idle`, which is the server's heartbeat after idle time).
    async fn report(&mut self, idle: bool) -> Result<bool> {
        if self.in_txn {
            return Ok(true);
        }
        let position = self.position.to_string();
        if position == self.reported
            || (!idle && self.last_report.elapsed() < HEARTBEAT_MIN_INTERVAL)
        {
            return Ok(true);
        }
        self.reported = position.clone();
        self.last_report = Instant::now();
        Ok(self
            .output
            .send(Message::Heartbeat {
                position: Position::new(position),
            })
            .await
            .is_ok())
    }

    /// A query event that is not BEGIN/COMMIT: DDL (its own transaction) or statement-format DML.
    async fn handle_statement(
        &mut self,
        sql: &str,
        schema: &str,
        log_pos: u64,
        timestamp: u32,
    ) -> Result<bool> {
        if let Some(table) = statement_dml_target(sql, schema) {
            if self.selection.matches(&table) && !self.already_applied(log_pos) {
                return Err(MysqlError::Prerequisite(format!(
                    "  - a change to {table} was written to the binlog as a statement, not as row events (at {}:{log_pos}: `{}`): \
                     a session or the server uses binlog_format=STATEMENT/MIXED; set binlog_format=ROW globally \
                     (SET GLOBAL binlog_format=ROW and my.cnf) and do not override it per session, then re-snapshot \
                     (delete the checkpoint key)",
                    self.file,
                    sql.chars().take(120).collect::<String>()
                )));
            }
            return Ok(true);
        }
        // Any DDL may change a CHECK constraint or a column type: map tables afresh and re-read
        // their hints on next use (every transaction repeats its TABLE_MAP events).
        self.hints.clear();
        if !self.in_txn {
            self.tables.clear();
        }
        let tables: Vec<TableId> = match parse_ddl(sql, schema) {
            Some(Ddl::Truncate(tables)) => tables,
            Some(Ddl::Drop(tables)) => match self.on_drop {
                OnDrop::Delete => tables,
                OnDrop::Keep => Vec::new(),
            },
            Some(Ddl::Rename(pairs)) => {
                for (_, to) in &pairs {
                    if self.selection.matches(to) {
                        tracing::warn!(table = %to, "a table was renamed into the selection; its existing rows reach etcd only with a re-snapshot");
                    }
                }
                pairs.into_iter().map(|(from, _)| from).collect()
            }
            None => Vec::new(),
        };
        let changes: Vec<Change> = tables
            .into_iter()
            .filter(|t| self.selection.matches(t))
            .map(|t| Change::truncate(Arc::new(TableSchema::name_only(t))))
            .collect();
        if changes.is_empty() {
            // Not ours; a DDL outside a transaction still moves the position.
            if !self.in_txn {
                return self.commit(log_pos, timestamp).await;
            }
            return Ok(true);
        }
        if self.in_txn {
            // DDL implicitly commits; MariaDB logs it standalone, so this is unusual.
            self.pending.extend(changes);
            return Ok(true);
        }
        self.pending = changes;
        self.commit(log_pos, timestamp).await
    }
}

/// Adds a committed transaction's GTID to the position's GTID state.
fn record_gtid(state: &mut Gtids, gtid: TxnGtid) {
    match (state, gtid) {
        (
            Gtids::MariaDb(pos),
            TxnGtid::MariaDb {
                domain,
                server,
                seq,
            },
        ) => pos.advance(domain, server, seq),
        (Gtids::MySql(set), TxnGtid::MySql { source, gno }) => set.add(&source, gno),
        _ => {}
    }
}

/// The file name of a ROTATE event. The fake ROTATE that opens a stream arrives before the
/// FORMAT_DESCRIPTION event, so mysql_common cannot know it carries a CRC32 and leaves the
/// 4 checksum bytes on the name: they are removed when they are the event's CRC32.
fn rotate_file_name(event: &Event, name: &[u8]) -> String {
    if name.len() > 4 && event.checksum().is_none() {
        let (bare, tail) = name.split_at(name.len() - 4);
        let mut header = Vec::with_capacity(19);
        let h = event.header();
        header.extend_from_slice(&h.timestamp().to_le_bytes());
        header.push(h.event_type_raw());
        header.extend_from_slice(&h.server_id().to_le_bytes());
        header.extend_from_slice(&h.event_size().to_le_bytes());
        header.extend_from_slice(&h.log_pos().to_le_bytes());
        header.extend_from_slice(&h.flags_raw().to_le_bytes());
        let data = event.data();
        let crc = crc32(&[&header, &data[..data.len() - 4]]);
        if tail == crc.to_le_bytes() {
            return String::from_utf8_lossy(bare).into_owned();
        }
    }
    String::from_utf8_lossy(name).into_owned()
}

/// CRC-32 (IEEE), as the binlog's `binlog_checksum=CRC32`.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        for &byte in *part {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
    }
    !crc
}

/// Decodes every row of a rows event into changes.
fn decode_rows(info: &TableInfo, rows: &RowsEventData<'_>) -> std::io::Result<Vec<Change>> {
    let count = usize::try_from(rows.num_columns()).unwrap_or(usize::MAX);
    let before: Option<Vec<bool>> = rows
        .columns_before_image()
        .map(|b| (0..count).map(|i| b.get(i).is_some_and(|x| *x)).collect());
    let after: Option<Vec<bool>> = rows
        .columns_after_image()
        .map(|b| (0..count).map(|i| b.get(i).is_some_and(|x| *x)).collect());
    if count != info.columns.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "rows event has {count} columns, TABLE_MAP {}",
                info.columns.len()
            ),
        ));
    }
    let mut buf = ParseBuf(rows.rows_data());
    let mut changes = Vec::new();
    while !buf.is_empty() {
        let old = match &before {
            Some(present) => Some(read_image(info, present, &mut buf)?),
            None => None,
        };
        let new = match &after {
            Some(present) => Some(read_image(info, present, &mut buf)?),
            None => None,
        };
        let schema = info.schema.clone();
        let change = match (old, new) {
            (None, Some(new)) => Change::insert(schema, project(info, new)),
            (Some(old), Some(new)) => {
                Change::update(schema, Some(project(info, old)), project(info, new))
            }
            (Some(old), None) => Change::delete(schema, project(info, old)),
            (None, None) => continue,
        };
        if let etcdsync_core::Op::Update { row, .. } | etcdsync_core::Op::Insert { row } =
            &change.op
        {
            if row.iter().any(|v| matches!(v, Value::Missing)) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the row image lacks columns: set binlog_row_image=FULL (and on MySQL \
                     binlog_row_value_options='') on the server, then re-snapshot",
                ));
            }
        }
        changes.push(change);
    }
    Ok(changes)
}

/// A DDL statement that changes which rows exist in etcd.
#[derive(Debug, PartialEq, Eq)]
pub enum Ddl {
    Truncate(Vec<TableId>),
    Drop(Vec<TableId>),
    Rename(Vec<(TableId, TableId)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Dot,
    Comma,
    Other,
}

impl Token {
    fn is(&self, keyword: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(keyword))
    }

    fn name(&self) -> Option<&str> {
        match self {
            Token::Word(w) | Token::Quoted(w) => Some(w),
            _ => None,
        }
    }
}

/// Splits SQL into words, backquoted names, dots and commas; comments are dropped.
fn tokenize(sql: &str) -> Vec<Token> {
    let chars: Vec<char> = sql.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
        } else if c == '#' || (c == '-' && chars.get(i + 1) == Some(&'-')) {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '`' {
            let mut name = String::new();
            i += 1;
            while i < chars.len() {
                if chars[i] == '`' {
                    if chars.get(i + 1) == Some(&'`') {
                        name.push('`');
                        i += 2;
                        continue;
                    }
                    break;
                }
                name.push(chars[i]);
                i += 1;
            }
            i += 1;
            tokens.push(Token::Quoted(name));
        } else if c == '.' {
            tokens.push(Token::Dot);
            i += 1;
        } else if c == ',' {
            tokens.push(Token::Comma);
            i += 1;
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                i += 1;
            }
            tokens.push(Token::Word(chars[start..i].iter().collect()));
        } else {
            tokens.push(Token::Other);
            i += 1;
        }
    }
    tokens
}

/// Reads `name` or `schema.name` at `*i`.
fn table_name(tokens: &[Token], i: &mut usize, schema: &str) -> Option<TableId> {
    let first = tokens.get(*i)?.name()?.to_string();
    *i += 1;
    if tokens.get(*i) == Some(&Token::Dot) {
        let second = tokens.get(*i + 1)?.name()?.to_string();
        *i += 2;
        Some(TableId::new(first, second))
    } else {
        Some(TableId::new(schema, first))
    }
}

/// Recognises TRUNCATE [TABLE] t; DROP TABLE [IF EXISTS] t[, …]; RENAME TABLE a TO b[, …];
/// ALTER TABLE a RENAME [TO|AS] b. Unqualified names belong to `schema` (the event's database).
pub fn parse_ddl(sql: &str, schema: &str) -> Option<Ddl> {
    let tokens = tokenize(sql);
    let mut i = 0;
    let first = tokens.first()?;
    if first.is("TRUNCATE") {
        i += 1;
        if tokens.get(i).is_some_and(|t| t.is("TABLE")) {
            i += 1;
        }
        return Some(Ddl::Truncate(vec![table_name(&tokens, &mut i, schema)?]));
    }
    if first.is("DROP") {
        i += 1;
        if tokens.get(i).is_some_and(|t| t.is("TEMPORARY")) {
            return None;
        }
        if !tokens.get(i)?.is("TABLE") {
            return None;
        }
        i += 1;
        if tokens.get(i).is_some_and(|t| t.is("IF"))
            && tokens.get(i + 1).is_some_and(|t| t.is("EXISTS"))
        {
            i += 2;
        }
        let mut tables = vec![table_name(&tokens, &mut i, schema)?];
        while tokens.get(i) == Some(&Token::Comma) {
            i += 1;
            tables.push(table_name(&tokens, &mut i, schema)?);
        }
        return Some(Ddl::Drop(tables));
    }
    if first.is("RENAME") {
        i += 1;
        if !tokens.get(i)?.is("TABLE") {
            return None;
        }
        i += 1;
        let mut pairs = Vec::new();
        loop {
            let from = table_name(&tokens, &mut i, schema)?;
            if !tokens.get(i)?.is("TO") {
                return None;
            }
            i += 1;
            let to = table_name(&tokens, &mut i, schema)?;
            pairs.push((from, to));
            if tokens.get(i) == Some(&Token::Comma) {
                i += 1;
            } else {
                break;
            }
        }
        return Some(Ddl::Rename(pairs));
    }
    if first.is("ALTER") {
        i += 1;
        if tokens
            .get(i)
            .is_some_and(|t| t.is("ONLINE") || t.is("IGNORE"))
        {
            i += 1;
        }
        if !tokens.get(i)?.is("TABLE") {
            return None;
        }
        i += 1;
        let from = table_name(&tokens, &mut i, schema)?;
        // Find a top-level `RENAME [TO|AS] name` clause (not RENAME COLUMN/INDEX/KEY).
        while i < tokens.len() {
            if tokens[i].is("RENAME") {
                let mut j = i + 1;
                if tokens
                    .get(j)
                    .is_some_and(|t| t.is("COLUMN") || t.is("INDEX") || t.is("KEY"))
                {
                    i += 1;
                    continue;
                }
                if tokens.get(j).is_some_and(|t| t.is("TO") || t.is("AS")) {
                    j += 1;
                }
                let to = table_name(&tokens, &mut j, schema)?;
                return Some(Ddl::Rename(vec![(from, to)]));
            }
            i += 1;
        }
        return None;
    }
    None
}

/// The target table of a statement-format DML statement (INSERT/REPLACE/UPDATE/DELETE).
fn statement_dml_target(sql: &str, schema: &str) -> Option<TableId> {
    let tokens = tokenize(sql);
    let mut i = 1;
    let first = tokens.first()?;
    let skip = |tokens: &[Token], i: &mut usize, words: &[&str]| {
        while tokens
            .get(*i)
            .is_some_and(|t| words.iter().any(|w| t.is(w)))
        {
            *i += 1;
        }
    };
    if first.is("INSERT") || first.is("REPLACE") {
        skip(
            &tokens,
            &mut i,
            &["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"],
        );
    } else if first.is("UPDATE") {
        skip(&tokens, &mut i, &["LOW_PRIORITY", "IGNORE"]);
    } else if first.is("DELETE") {
        skip(
            &tokens,
            &mut i,
            &["LOW_PRIORITY", "QUICK", "IGNORE", "FROM"],
        );
    } else {
        return None;
    }
    table_name(&tokens, &mut i, schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MysqlConfig;
    use mysql_common::binlog::consts::{BinlogVersion, EventType};
    use mysql_common::binlog::events::{
        FormatDescriptionEvent, GtidEvent, QueryEvent, RotateEvent,
    };
    use mysql_common::proto::MySerialize;

    const UUID: [u8; 16] = [
        0x3e, 0x11, 0xfa, 0x47, 0x71, 0xca, 0x11, 0xe1, 0x9e, 0x33, 0xc8, 0x0a, 0xa9, 0x42, 0x95,
        0x62,
    ];
    const U: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";

    fn config() -> ValidMysql {
        serde_yaml::from_str::<MysqlConfig>(
            "url: mysql://u:p@127.0.0.1:1/\ntables: { include: [\"db.*\"] }\n",
        )
        .expect("yaml")
        .validate_config("unit")
        .expect("valid")
    }

    /// An event as the server frames it: the 19-byte v4 header, then `data` (no checksum).
    fn event(event_type: u8, log_pos: u32, flags: u16, server_id: u32, data: &[u8]) -> Event {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        bytes.push(event_type);
        bytes.extend_from_slice(&server_id.to_le_bytes());
        bytes.extend_from_slice(&(19 + data.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&log_pos.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(data);
        let fde = FormatDescriptionEvent::new(BinlogVersion::Version4);
        Event::read(&fde, &bytes[..]).expect("event bytes")
    }

    fn serialized(value: &impl MySerialize) -> Vec<u8> {
        let mut buf = Vec::new();
        value.serialize(&mut buf);
        buf
    }

    fn query(sql: &str, log_pos: u32) -> Event {
        let q = QueryEvent::new(Vec::new(), b"db".to_vec()).with_query(sql.as_bytes().to_vec());
        event(EventType::QUERY_EVENT as u8, log_pos, 0, 1, &serialized(&q))
    }

    fn mysql_gtid(gno: u64, log_pos: u32) -> Event {
        let g = GtidEvent::new(UUID, gno);
        event(EventType::GTID_EVENT as u8, log_pos, 0, 1, &serialized(&g))
    }

    fn mariadb_gtid(domain: u32, seq: u64, standalone: bool, log_pos: u32) -> Event {
        let mut data = Vec::new();
        data.extend_from_slice(&seq.to_le_bytes());
        data.extend_from_slice(&domain.to_le_bytes());
        data.push(u8::from(standalone));
        data.extend_from_slice(&[0; 6]);
        event(MARIADB_GTID, log_pos, 0, 7, &data)
    }

    fn rotate(name: &str, position: u64, artificial: bool) -> Event {
        let r = RotateEvent::new(position, name.as_bytes().to_vec());
        let (log_pos, flags) = if artificial {
            (0, ARTIFICIAL_EVENT)
        } else {
            (9, 0)
        };
        event(
            EventType::ROTATE_EVENT as u8,
            log_pos,
            flags,
            1,
            &serialized(&r),
        )
    }

    async fn feed(
        flavour: Flavour,
        mode: Mode,
        start: &str,
        events: &[Event],
    ) -> (Vec<Message>, SourcePosition) {
        let config = config();
        let (tx, mut rx) = mpsc::channel(64);
        let start = SourcePosition::parse(start).expect("start");
        let mut decoder = Decoder::new(&config, flavour, mode, start, tx);
        for e in events {
            assert!(decoder.handle(e).await.expect("handle"));
        }
        let position = decoder.position.clone();
        drop(decoder);
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(m);
        }
        (out, position)
    }

    fn commit_positions(messages: &[Message]) -> Vec<String> {
        messages
            .iter()
            .filter_map(|m| match m {
                Message::Commit(c) => Some(c.position.to_string()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn mysql_gtid_stream_skips_executed_transactions_and_extends_the_set() {
        let events = [
            // The opening ROTATE of a GTID dump names the file, not the offset.
            rotate("binlog.000003", 4, true),
            // Already in the checkpoint's set: skipped.
            mysql_gtid(5, 200),
            query("TRUNCATE TABLE t", 300),
            mysql_gtid(6, 350),
            query("TRUNCATE TABLE t", 400),
            // A transaction of another table: the position moves, nothing is sent.
            mysql_gtid(7, 450),
            query("BEGIN", 480),
            event(EventType::XID_EVENT as u8, 500, 0, 1, &9u64.to_le_bytes()),
        ];
        let start = format!("binlog.000002:900 gtid={U}:1-5");
        let (messages, position) = feed(Flavour::MySql, Mode::Gtid, &start, &events).await;
        assert_eq!(
            commit_positions(&messages),
            vec![format!("binlog.000003:400 gtid={U}:1-6")]
        );
        let truncates: Vec<&Change> = messages
            .iter()
            .filter_map(|m| match m {
                Message::Changes(c) => Some(c.iter()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(truncates.len(), 1);
        assert_eq!(truncates[0].table.id, TableId::new("db", "t"));
        assert_eq!(
            position.to_string(),
            format!("binlog.000003:500 gtid={U}:1-7")
        );
        assert!(matches!(position.gtid, Gtids::MySql(ref set) if set.contains(U, 7)));
    }

    #[tokio::test]
    async fn mariadb_gtid_events_advance_the_domain_and_file_mode_skips_by_offset() {
        let events = [
            rotate("mysql-bin.000001", 1000, true),
            // At or before the checkpoint offset: skipped in file/offset mode.
            mariadb_gtid(0, 41, true, 950),
            query("TRUNCATE TABLE t", 1000),
            mariadb_gtid(0, 42, true, 1050),
            query("TRUNCATE TABLE t", 1100),
            mariadb_gtid(2, 9, false, 1150),
            query("BEGIN", 1160),
            event(EventType::XID_EVENT as u8, 1200, 0, 1, &1u64.to_le_bytes()),
        ];
        let (messages, position) = feed(
            Flavour::MariaDb,
            Mode::FileOffset,
            "mysql-bin.000001:1000 gtid=0-1-41",
            &events,
        )
        .await;
        assert_eq!(
            commit_positions(&messages),
            vec!["mysql-bin.000001:1100 gtid=0-7-42".to_string()]
        );
        assert_eq!(
            position.to_string(),
            "mysql-bin.000001:1200 gtid=0-7-42,2-7-9"
        );
        // Without a GTID state at the start, none is invented from a partial view.
        let (_, position) = feed(
            Flavour::MariaDb,
            Mode::FileOffset,
            "mysql-bin.000001:1000",
            &events,
        )
        .await;
        assert_eq!(position.to_string(), "mysql-bin.000001:1200");
    }

    fn t(s: &str, n: &str) -> TableId {
        TableId::new(s, n)
    }

    #[test]
    fn ddl_statements() {
        assert_eq!(
            parse_ddl("TRUNCATE TABLE `a`.`b`", "x"),
            Some(Ddl::Truncate(vec![t("a", "b")]))
        );
        assert_eq!(
            parse_ddl("truncate orders", "shop"),
            Some(Ddl::Truncate(vec![t("shop", "orders")]))
        );
        assert_eq!(
            parse_ddl(
                "DROP TABLE IF EXISTS `t1`,db2.`t``2` /* generated by server */",
                "db"
            ),
            Some(Ddl::Drop(vec![t("db", "t1"), t("db2", "t`2")]))
        );
        assert_eq!(parse_ddl("DROP TEMPORARY TABLE t", "db"), None);
        assert_eq!(parse_ddl("DROP DATABASE db", "db"), None);
        assert_eq!(
            parse_ddl("RENAME TABLE a TO b, x.c TO y.d", "db"),
            Some(Ddl::Rename(vec![
                (t("db", "a"), t("db", "b")),
                (t("x", "c"), t("y", "d"))
            ]))
        );
        assert_eq!(
            parse_ddl("ALTER TABLE `a` RENAME TO `b`", "db"),
            Some(Ddl::Rename(vec![(t("db", "a"), t("db", "b"))]))
        );
        assert_eq!(parse_ddl("ALTER TABLE a RENAME COLUMN x TO y", "db"), None);
        assert_eq!(parse_ddl("ALTER TABLE a ADD COLUMN b INT", "db"), None);
        assert_eq!(
            parse_ddl("/* c */ -- x\n TRUNCATE t", "db"),
            Some(Ddl::Truncate(vec![t("db", "t")]))
        );
        assert_eq!(parse_ddl("CREATE TABLE t (id int)", "db"), None);
    }

    #[test]
    fn crc32_matches_the_reference() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
    }

    #[test]
    fn statement_dml() {
        assert_eq!(
            statement_dml_target("INSERT INTO t VALUES (1)", "db"),
            Some(t("db", "t"))
        );
        assert_eq!(
            statement_dml_target("insert ignore into `a`.`b` values (1)", "db"),
            Some(t("a", "b"))
        );
        assert_eq!(
            statement_dml_target("UPDATE x.y SET a=1", "db"),
            Some(t("x", "y"))
        );
        assert_eq!(
            statement_dml_target("DELETE FROM t WHERE 1", "db"),
            Some(t("db", "t"))
        );
        assert_eq!(statement_dml_target("CREATE TABLE t (a int)", "db"), None);
    }
}
