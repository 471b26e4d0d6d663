//! One binlog event at a time into core messages: transactions (row events between BEGIN/GTID
//! and XID/COMMIT), XA transactions (held from `XA PREPARE` to `XA COMMIT`, dropped at
//! `XA ROLLBACK`), savepoints (`ROLLBACK TO` drops the rows after the savepoint), and query
//! events read by [`crate::statement`]: truncate and drop become range deletes; renames,
//! column and key changes, partition and tablespace operations and `CREATE OR REPLACE` copy
//! the affected tables again from a consistent read ([`crate::snapshot::copy_while_streaming`]).

use crate::columns::ColumnHints;
use crate::config::{OnDrop, ValidMysql};
use crate::error::{MysqlError, Result};
use crate::events::{decode_rows, rotate_file_name, Mode, ARTIFICIAL_EVENT};
use crate::position::{uuid_text, BinlogPos, Gtids, SourcePosition};
use crate::prereq::{Flavour, ServerInfo};
use crate::statement::{classify, Dialect, NameCase, Statement, Xid};
use crate::tablemap::{column_names, map_table, Mapped, TableMapError};
use etcdsync_core::pipeline::{BYTES_PER_MESSAGE, CHANGES_PER_MESSAGE};
use etcdsync_core::tables::TableSelection;
use etcdsync_core::{Change, Commit, Message, Position, TableId, TableSchema};
use hints::HintCache;
use mysql_async::binlog::events::{Event, EventData, RowsEventData, TableMapEvent};
use mysql_common::binlog::consts::StatusVarKey;
use mysql_common::binlog::events::StatusVarVal;
use mysql_common::constants::SqlMode;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// Filtered-out transactions report their position at most this often.
const HEARTBEAT_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// MariaDB's own event types, which mysql_common reports as unknown.
const MARIADB_ANNOTATE_ROWS: u8 = 160;
const MARIADB_BINLOG_CHECKPOINT: u8 = 161;
const MARIADB_GTID: u8 = 162;
const MARIADB_GTID_LIST: u8 = 163;
/// `FL_STANDALONE` in a MariaDB GTID event: the event group has no BEGIN/COMMIT (DDL).
const MARIADB_GTID_STANDALONE: u8 = 1;
/// `FL_PREPARED_XA` in a MariaDB GTID event: the group is an XA transaction's prepared part.
const MARIADB_GTID_PREPARED_XA: u8 = 64;
/// Rows held in memory for one transaction that cannot be sent in parts yet (an XA transaction
/// until its commit, the rows after an open savepoint).
pub const HELD_ROWS_LIMIT: usize = 100_000;
/// TABLE_MAP entries kept; every transaction repeats its TABLE_MAP events, so the cache is
/// emptied between transactions when it grows past this.
const TABLE_MAP_CACHE: usize = 1024;

/// The GTID of the transaction being read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TxnGtid {
    MariaDb { domain: u32, server: u32, seq: u64 },
    MySql { source: String, gno: u64 },
}

pub(crate) struct Decoder<'a> {
    config: &'a ValidMysql,
    server: &'a ServerInfo,
    selection: &'a TableSelection,
    on_drop: OnDrop,
    flavour: Flavour,
    dialect: Dialect,
    mode: Mode,
    output: mpsc::Sender<Message>,
    tables: HashMap<u64, (TableMapEvent<'static>, Arc<Mapped>)>,
    hints: HintCache,
    /// Position after the last event consumed outside a transaction.
    pub(crate) position: SourcePosition,
    /// GTIDs are recorded in positions only when the start had a complete GTID state.
    track_gtids: bool,
    file: String,
    /// The checkpoint: transactions at or before it are skipped.
    resume: SourcePosition,
    in_txn: bool,
    /// Where the current transaction starts in the binlog file ([`Change::seq`]).
    txn_start: u64,
    /// Changes of the current transaction already sent.
    sent: usize,
    pending: Vec<Change>,
    /// Roughly the bytes `pending` holds (reset whenever it is found empty).
    pending_bytes: usize,
    /// Open savepoints of the current transaction: name, changes before it.
    savepoints: Vec<(String, usize)>,
    /// The current event group is an XA transaction's prepared part: its rows wait for
    /// `XA COMMIT`.
    xa: bool,
    /// Prepared XA transactions in prepare order: their rows, and the position before them
    /// (reported instead of later ones while they wait, so a restart reads them again).
    prepared: Vec<Prepared>,
    /// Tables copied while streaming, with the binlog position their copy's read stands at:
    /// their committed row events up to it are in the copy and skipped (so values never go back),
    /// until a DDL names the table again.
    copied: HashMap<TableId, BinlogPos>,
    /// Tables known to be synced (listed at start, mapped, copied), for `DROP DATABASE`.
    synced: HashSet<TableId>,
    /// Selected tables the sink holds rows of (its table markers), also for `DROP DATABASE`: a
    /// database dropped while etcdsync was stopped is no longer listed. Kept apart from
    /// `synced`, which also decides whether a table was ever readable (and so copied).
    written: HashSet<TableId>,
    /// A DDL inside a transaction that needs a copy: done once the transaction is committed.
    deferred: Vec<Statement>,
    gtid: Option<TxnGtid>,
    last_report: Instant,
    reported: String,
    warned: HashSet<TableId>,
}

/// A prepared XA transaction waiting for its `XA COMMIT` or `XA ROLLBACK`.
struct Prepared {
    xid: Xid,
    before: SourcePosition,
    at: String,
    changes: Vec<Change>,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(
        config: &'a ValidMysql,
        server: &'a ServerInfo,
        dialect: Dialect,
        mode: Mode,
        start: SourcePosition,
        output: mpsc::Sender<Message>,
    ) -> Self {
        Self {
            config,
            server,
            selection: &config.tables,
            on_drop: config.on_drop,
            flavour: server.flavour,
            dialect,
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
            sent: 0,
            pending: Vec::new(),
            pending_bytes: 0,
            savepoints: Vec::new(),
            xa: false,
            prepared: Vec::new(),
            copied: HashMap::new(),
            synced: HashSet::new(),
            written: HashSet::new(),
            deferred: Vec::new(),
            gtid: None,
            last_report: Instant::now(),
            warned: HashSet::new(),
        }
    }

    /// The selected tables that exist where streaming starts (for `DROP DATABASE`).
    pub(crate) fn synced_at_start(&mut self, tables: impl IntoIterator<Item = TableId>) {
        self.synced.extend(tables);
    }

    /// The selected tables the sink holds rows of (for `DROP DATABASE`).
    pub(crate) fn written_by_sink(&mut self, tables: impl IntoIterator<Item = TableId>) {
        self.written.extend(tables);
    }

    /// Handles one event; `false` when the sink has gone away.
    pub(crate) async fn handle(&mut self, event: &Event) -> Result<bool> {
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
                    let mode = query
                        .status_vars()
                        .get_status_var(StatusVarKey::SqlMode)
                        .and_then(|var| match var.get_value() {
                            Ok(StatusVarVal::SqlMode(mode)) => Some(mode.get()),
                            _ => None,
                        })
                        .unwrap_or(SqlMode::empty());
                    let dialect = Dialect {
                        ansi_quotes: mode.contains(SqlMode::MODE_ANSI_QUOTES),
                        no_backslash_escapes: mode.contains(SqlMode::MODE_NO_BACKSLASH_ESCAPES),
                        ..self.dialect
                    };
                    let statement = self.stored_names(classify(trimmed, &schema, dialect));
                    self.handle_statement(statement, trimmed, log_pos, header.timestamp())
                        .await
                }
            }
            EventData::ExecuteLoadQueryEvent(load) => {
                let schema = load.schema().into_owned();
                let sql = load.query().into_owned();
                let statement = match self.stored_names(classify(&sql, &schema, self.dialect)) {
                    Statement::Dml(tables) => Statement::Dml(tables),
                    // A LOAD whose table cannot be read is taken to touch a synced one.
                    _ => Statement::Dml(Vec::new()),
                };
                self.handle_statement(statement, &sql, log_pos, header.timestamp())
                    .await
            }
            EventData::XaPrepareLogEvent(raw) => {
                self.xa_prepare(&raw, log_pos, header.timestamp()).await
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

    /// The statement with existing tables named as the server stores them (matters under
    /// `lower_case_table_names=2` only; see [`Statement::with_stored_names`]).
    fn stored_names(&self, statement: Statement) -> Statement {
        let names_tables = matches!(
            statement,
            Statement::Truncate(_)
                | Statement::Drop(_)
                | Statement::Recopy(_)
                | Statement::Dml(_)
                | Statement::Rename(_)
        );
        if self.dialect.names != NameCase::Insensitive || !names_tables {
            return statement;
        }
        let mapped = self
            .tables
            .values()
            .map(|(tme, _)| TableId::new(tme.database_name(), tme.table_name()));
        let known: Vec<TableId> = mapped
            .chain(self.copied.keys().cloned())
            .chain(self.synced.iter().chain(&self.written).cloned())
            .collect();
        statement.with_stored_names(self.dialect.names, &known)
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
                    self.xa = flags & MARIADB_GTID_PREPARED_XA != 0;
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
                if let Some(error) = crate::decode::compressed_event_error(
                    other,
                    &format!("{}:{log_pos}", self.file),
                ) {
                    return Err(error);
                }
                tracing::debug!(event_type = other, "ignoring unknown binlog event");
                Ok(true)
            }
        }
    }

    fn begin(&mut self, log_pos: u64) {
        self.txn_start = log_pos;
        self.in_txn = true;
        self.sent = 0;
        self.pending.clear();
        self.savepoints.clear();
        self.xa = false;
        if self.tables.len() > TABLE_MAP_CACHE {
            self.tables.clear();
        }
    }

    /// The position a commit or heartbeat reports: the current one, or the one before the
    /// oldest prepared XA transaction while one waits (a restart must read it again).
    fn reportable(&self) -> SourcePosition {
        self.prepared
            .first()
            .map_or_else(|| self.position.clone(), |p| p.before.clone())
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
            TableMapError::KeyExcluded { .. } | TableMapError::UnsupportedCharset { .. } => {
                MysqlError::Config(e.to_string())
            }
            other => MysqlError::Other(other.to_string()),
        })?;
        if let Mapped::Synced(_) = mapped {
            if !self.synced.contains(&id) && !self.hints.readable(&id).await? {
                // The snapshot lists only tables the user can see, so it never copied this one:
                // streaming its changes alone would leave its older rows out of etcd.
                return Err(MysqlError::Prerequisite(format!(
                    "  - the etcdsync user cannot read {id}, which `source.tables` selects and the binlog \
                     changes: GRANT SELECT ON {}.* TO the etcdsync user (then take a fresh snapshot), or \
                     leave the table out with `source.tables.exclude`",
                    crate::statement::quote_ident(&id.schema)
                )));
            }
            self.synced.insert(id.clone());
        }
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
        // An XA transaction's rows were not committed when the copy read: never skipped.
        if !self.xa {
            if let Some(copied_at) = self.copied.get(&info.schema.id) {
                let here = BinlogPos::new(self.file.clone(), log_pos);
                match here.compare(copied_at) {
                    Some(Ordering::Less | Ordering::Equal) => return Ok(true),
                    _ => {
                        self.copied.remove(&info.schema.id);
                    }
                }
            }
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
            if self.pending.is_empty() {
                self.pending_bytes = 0;
            }
            self.pending_bytes += change.approx_bytes();
            self.pending.push(change.at(Change::seq_of(start, place)));
            if self.xa {
                if self.pending.len() > HELD_ROWS_LIMIT {
                    return Err(self.too_many_held(log_pos));
                }
                continue;
            }
            // After a savepoint rows are held, so a ROLLBACK TO can drop them.
            let limit = if self.savepoints.is_empty() {
                CHANGES_PER_MESSAGE
            } else {
                HELD_ROWS_LIMIT
            };
            let big = self.savepoints.is_empty() && self.pending_bytes >= BYTES_PER_MESSAGE;
            if self.pending.len() >= limit || big {
                let chunk = std::mem::take(&mut self.pending);
                self.pending_bytes = 0;
                self.sent += chunk.len();
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
        // Where a restart must begin while this group's copies are not done yet.
        let before = self.reportable();
        self.in_txn = false;
        self.position.binlog = BinlogPos::new(self.file.clone(), log_pos);
        if let Some(gtid) = self.gtid.take() {
            if self.track_gtids {
                record_gtid(&mut self.position.gtid, gtid);
            }
        }
        self.xa = false;
        self.savepoints.clear();
        let mut pending = std::mem::take(&mut self.pending);
        // Held rows (an XA transaction's) of a table copied after this commit: the copy read
        // them already, and applying them now would undo later changes the copy also read.
        if !self.copied.is_empty() {
            let here = &self.position.binlog;
            pending.retain(|change| {
                !self.copied.get(&change.table.id).is_some_and(|copied_at| {
                    matches!(
                        here.compare(copied_at),
                        Some(Ordering::Less | Ordering::Equal)
                    )
                })
            });
        }
        let sent = std::mem::take(&mut self.sent);
        let deferred = std::mem::take(&mut self.deferred);
        if skip {
            return Ok(true);
        }
        if pending.is_empty() && sent == 0 {
            if deferred.is_empty() {
                return self.report(false).await;
            }
            return self.run_deferred(deferred).await;
        }
        if !pending.is_empty() && self.output.send(Message::Changes(pending)).await.is_err() {
            return Ok(false);
        }
        // A group whose DDL needs copies commits at the position before it: the copy's end
        // records the position after it, so a restart during the copy meets the DDL again (the
        // group's changes replay, which converges).
        let at = if deferred.is_empty() {
            self.reportable()
        } else {
            before
        };
        if !self.send_commit(at, timestamp).await {
            return Ok(false);
        }
        self.run_deferred(deferred).await
    }

    async fn run_deferred(&mut self, deferred: Vec<Statement>) -> Result<bool> {
        for statement in deferred {
            if !self.copy_for(statement).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Closes the transaction whose changes were sent, at `at`.
    async fn send_commit(&mut self, at: SourcePosition, timestamp: u32) -> bool {
        let position = at.to_string();
        self.reported = position.clone();
        self.last_report = Instant::now();
        let commit = Commit {
            position: Position::new(position),
            commit_time: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(timestamp))),
        };
        etcdsync_core::telemetry::get().commit_decoded(commit.commit_time);
        self.output.send(Message::Commit(commit)).await.is_ok()
    }

    /// Reports the current position as a heartbeat when it moved (at most once a second
    /// unless `idle`, which is the server's heartbeat after idle time).
    async fn report(&mut self, idle: bool) -> Result<bool> {
        if self.in_txn {
            return Ok(true);
        }
        let position = self.reportable().to_string();
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

    /// A query event that is not BEGIN/COMMIT: DDL (its own transaction), statement-format DML,
    /// a savepoint or an XA step.
    async fn handle_statement(
        &mut self,
        statement: Statement,
        sql: &str,
        log_pos: u64,
        timestamp: u32,
    ) -> Result<bool> {
        match statement {
            Statement::Savepoint(name) => {
                if self.in_txn {
                    self.savepoints.push((name, self.sent + self.pending.len()));
                }
                return Ok(true);
            }
            Statement::RollbackTo(name) => return self.rollback_to(&name, log_pos).map(|()| true),
            Statement::Rollback => return self.rollback(log_pos, timestamp).await,
            Statement::XaStart(_) => {
                // MySQL: an XA transaction's prepared part starts here, without BEGIN.
                if !self.in_txn {
                    self.begin(log_pos);
                }
                self.xa = true;
                return Ok(true);
            }
            Statement::XaEnd => return Ok(true),
            // Inside the XA group that is still open (not prepared): `XA COMMIT … ONE PHASE`
            // commits its rows now (MySQL and MariaDB log a one-phase commit otherwise, as an
            // XA_PREPARE event with one_phase set or as an ordinary commit).
            Statement::XaCommit(_) if self.in_txn && self.xa => {
                self.xa = false;
                return self.commit(log_pos, timestamp).await;
            }
            Statement::XaCommit(xid) => {
                return self.xa_decided(xid, true, log_pos, timestamp).await
            }
            Statement::XaRollback(xid) => {
                return self.xa_decided(xid, false, log_pos, timestamp).await
            }
            Statement::Dml(tables) => {
                // Tables that cannot be read from the statement are taken to be synced ones.
                let touched = tables.is_empty() || tables.iter().any(|t| self.selection.matches(t));
                if touched && !self.already_applied(log_pos) {
                    let named = tables
                        .iter()
                        .find(|t| self.selection.matches(t))
                        .map_or_else(|| "a synced table".to_string(), ToString::to_string);
                    return Err(MysqlError::Prerequisite(format!(
                        "  - a change to {named} was written to the binlog as a statement, not as row events (at {}:{log_pos}: `{}`): \
                         a session or the server uses binlog_format=STATEMENT/MIXED (or LOAD DATA ran under it); set \
                         binlog_format=ROW globally (SET GLOBAL binlog_format=ROW and my.cnf) and do not override it per \
                         session, then re-snapshot (delete the checkpoint key)",
                        self.file,
                        sql.chars().take(160).collect::<String>()
                    )));
                }
                return Ok(true);
            }
            _ => {}
        }
        // A DDL on a copied table ends the skipping of its events: what the copy read is replayed
        // from here, which converges (a truncate or drop must not meet skipped inserts).
        for named in copies::statement_tables(&statement) {
            self.copied.remove(named);
        }
        let names = self.dialect.names;
        if let Statement::DropSchema(schema) = &statement {
            self.copied
                .retain(|table, _| !names.same(&table.schema, schema));
        }
        // Any DDL may change a CHECK constraint or a column type: map tables afresh and re-read
        // their hints on next use (every transaction repeats its TABLE_MAP events).
        self.hints.clear();
        if !self.in_txn {
            self.tables.clear();
        }
        let removed: Vec<TableId> = match &statement {
            Statement::Truncate(tables) => tables.clone(),
            Statement::Drop(tables) if self.on_drop == OnDrop::Delete => tables.clone(),
            Statement::DropSchema(schema) if self.on_drop == OnDrop::Delete => self
                .synced
                .union(&self.written)
                .filter(|t| names.same(&t.schema, schema))
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        let changes: Vec<Change> = removed
            .into_iter()
            .filter(|t| self.selection.matches(t))
            .map(|t| Change::truncate(Arc::new(TableSchema::name_only(t))))
            .collect();
        if !changes.is_empty() || matches!(statement, Statement::DropSchema(_)) {
            tracing::debug!(statement = ?statement, truncates = changes.len(), in_txn = self.in_txn, at = log_pos, "DDL removes tables' keys");
        }
        if let Statement::Rename(_) | Statement::Recopy(_) = statement {
            self.deferred.push(statement);
        }
        if self.in_txn {
            // DDL implicitly commits; MariaDB logs it standalone, so this is unusual.
            self.pending.extend(changes);
            return Ok(true);
        }
        // A DDL outside a transaction moves the position even when it is not ours.
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

mod copies;
mod hints;
mod undo;

#[cfg(test)]
mod tests;
