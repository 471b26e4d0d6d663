//! `etcdsync status`: where a pipeline stands, read from the sink's metadata (the `status`
//! document the running pipeline refreshes, the checkpoint, the leader) and the source (how far
//! it is ahead of the checkpoint). Works while `etcdsync run` runs elsewhere; it writes nothing.

use super::{load_for_command, runtime, sink_inspector, source_inspector};
use etcdsync_core::change::TableId;
use etcdsync_core::inspect::{SinkInspector, SourceInspector};
use etcdsync_core::telemetry::TableProgress;
use etcdsync_core::Checkpoint;
use serde::Serialize;
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// A status document older than this means no pipeline is running (it is refreshed every ~2 s).
pub const STALE_AFTER: Duration = Duration::from_secs(15);

/// `etcdsync status --json`. Every field is always present (`null` when unknown); the names are
/// stable (docs/operations.md).
#[derive(Debug, Serialize)]
pub struct Status {
    pub pipeline: String,
    /// A pipeline refreshed its status document within the last 15 s.
    pub running: bool,
    /// `starting`, `snapshot` or `streaming`, as last published by the pipeline.
    pub phase: Option<String>,
    /// When the pipeline last refreshed its status document (RFC 3339).
    pub updated_at: Option<String>,
    pub pid: Option<u64>,
    pub host: Option<String>,
    /// The checkpoint stored with the data: `{source, position, committed_at, applied_at}`.
    pub checkpoint: Option<Checkpoint>,
    /// The checkpoint's position (the source's format: PostgreSQL LSN, MySQL GTID/file:offset).
    pub position: Option<String>,
    /// Commit time of the last source transaction applied (RFC 3339).
    pub last_commit_at: Option<String>,
    /// Seconds from that commit to its application, as the running pipeline last measured it.
    pub lag_seconds: Option<f64>,
    /// Bytes of WAL/binlog the source has beyond the checkpoint.
    pub lag_bytes: Option<u64>,
    /// The source's current position.
    pub source_position: Option<String>,
    /// Source transactions applied by the running pipeline since it started.
    pub txns_applied: Option<u64>,
    /// The leader record (`{meta}/leader`): the instance that writes, while one runs.
    pub leader: Option<Json>,
    pub tables: Vec<TableStatus>,
    /// What could not be read (the rest of the report is still valid).
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct TableStatus {
    /// `schema.table`.
    pub table: String,
    /// Keys the table has in the sink.
    pub keys: Option<u64>,
    /// Snapshot progress, while (or since) the last snapshot of this process ran.
    pub snapshot: Option<TableProgress>,
}

pub fn status(config_file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let config = load_for_command(config_file)?;
    let status = runtime()?.block_on(async {
        let mut sink = sink_inspector(&config).await?;
        let source = match source_inspector(&config).await {
            Ok(source) => Ok(source),
            Err(error) => Err(format!("{error:#}")),
        };
        collect(&config.name, sink.as_mut(), source).await
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status, SystemTime::now()));
    }
    Ok(ExitCode::SUCCESS)
}

/// Gathers the report; the sink must answer, the source may be unreachable (then its fields
/// stay `null` and `errors` says why).
pub async fn collect(
    pipeline: &str,
    sink: &mut dyn SinkInspector,
    source: Result<Box<dyn SourceInspector>, String>,
) -> anyhow::Result<Status> {
    let mut errors = Vec::new();
    let metadata = sink.metadata().await?;
    let checkpoint = sink.checkpoint().await?;
    let doc = metadata.get("status");
    let field = |name: &str| doc.and_then(|d| d.get(name)).filter(|v| !v.is_null());
    let updated_at = field("updated_at").and_then(Json::as_str).map(String::from);
    let running = updated_at
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .and_then(|t| {
            SystemTime::now()
                .duration_since(t)
                .ok()
                .or(Some(Duration::ZERO))
        })
        .is_some_and(|age| age < STALE_AFTER)
        // A sink that marks its last write on a clean stop (`"stopped": true`) is not running.
        && !field("stopped").and_then(Json::as_bool).unwrap_or(false);
    let progress: BTreeMap<String, TableProgress> = field("tables")
        .and_then(|t| serde_json::from_value(t.clone()).ok())
        .unwrap_or_default();

    let mut source_position = None;
    let mut lag_bytes = None;
    let mut table_ids: Vec<TableId> = Vec::new();
    match source {
        Ok(mut source) => {
            if let Some(checkpoint) = &checkpoint {
                match source.lag(&checkpoint.position).await {
                    Ok(lag) => {
                        source_position = lag.current_position;
                        lag_bytes = lag.bytes;
                    }
                    Err(error) => errors.push(format!("source lag: {error}")),
                }
            }
            match source.tables().await {
                Ok(tables) => table_ids = tables.iter().map(|t| t.id.clone()).collect(),
                Err(error) => errors.push(format!("source tables: {error}")),
            }
        }
        Err(error) => errors.push(format!("source: {error}")),
    }
    // Tables the pipeline reported but the source did not list (or could not).
    let listed: BTreeSet<String> = table_ids.iter().map(ToString::to_string).collect();
    for name in progress.keys().filter(|n| !listed.contains(*n)) {
        if let Some((schema, table)) = name.split_once('.') {
            table_ids.push(TableId::new(schema, table));
        }
    }
    let mut tables = Vec::with_capacity(table_ids.len());
    for id in table_ids {
        let keys = match sink.count(&id).await {
            Ok(n) => Some(n),
            Err(error) => {
                errors.push(format!("keys of {id}: {error}"));
                None
            }
        };
        let name = id.to_string();
        tables.push(TableStatus {
            snapshot: progress.get(&name).cloned(),
            table: name,
            keys,
        });
    }

    Ok(Status {
        pipeline: pipeline.to_string(),
        running,
        phase: field("phase").and_then(Json::as_str).map(String::from),
        updated_at,
        pid: field("pid").and_then(Json::as_u64),
        host: field("host").and_then(Json::as_str).map(String::from),
        position: checkpoint.as_ref().map(|c| c.position.to_string()),
        last_commit_at: field("last_commit_at")
            .and_then(Json::as_str)
            .map(String::from)
            .or_else(|| checkpoint.as_ref().and_then(|c| c.committed_at.clone())),
        checkpoint,
        lag_seconds: if running {
            field("lag_seconds").and_then(Json::as_f64)
        } else {
            None
        },
        lag_bytes,
        source_position,
        txns_applied: field("txns_applied").and_then(Json::as_u64),
        leader: metadata.get("leader").filter(|v| !v.is_null()).cloned(),
        tables,
        errors,
    })
}

/// The human-readable report.
pub fn render(status: &Status, now: SystemTime) -> String {
    let mut out = String::new();
    let dash = || "-".to_string();
    let run_state = match (&status.updated_at, status.running) {
        (None, _) => "no status published (never ran, or an older version)".to_string(),
        (Some(at), running) => {
            let age = humantime::parse_rfc3339_weak(at)
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .map(|d| format!("{}s ago", d.as_secs()))
                .unwrap_or_else(|| at.clone());
            let who = match (&status.pid, &status.host) {
                (Some(pid), Some(host)) => format!("pid {pid} on {host}, "),
                (Some(pid), None) => format!("pid {pid}, "),
                _ => String::new(),
            };
            if running {
                format!("running ({who}updated {age})")
            } else {
                format!("NOT running (last update {age}, {who}stale)")
            }
        }
    };
    let _ = writeln!(out, "pipeline      {}: {run_state}", status.pipeline);
    let phase = status.phase.clone().unwrap_or_else(dash);
    let _ = writeln!(
        out,
        "phase         {phase}{}",
        if status.running || status.phase.is_none() {
            ""
        } else {
            " (last published)"
        }
    );
    match &status.checkpoint {
        Some(c) => {
            let _ = writeln!(
                out,
                "checkpoint    {} ({}, applied {})",
                c.position, c.source, c.applied_at
            );
        }
        None => {
            let _ = writeln!(out, "checkpoint    none (the first run will snapshot)");
        }
    }
    let _ = writeln!(
        out,
        "last commit   {}",
        status.last_commit_at.clone().unwrap_or_else(dash)
    );
    let mut lag = Vec::new();
    if let Some(seconds) = status.lag_seconds {
        lag.push(format!("{seconds:.3} s"));
    }
    if let Some(bytes) = status.lag_bytes {
        lag.push(format!("{bytes} bytes"));
    }
    if let Some(position) = &status.source_position {
        lag.push(format!("source at {position}"));
    }
    let _ = writeln!(
        out,
        "lag           {}",
        if lag.is_empty() {
            dash()
        } else {
            lag.join(", ")
        }
    );
    if let Some(n) = status.txns_applied {
        let _ = writeln!(out, "txns applied  {n}");
    }
    let _ = writeln!(
        out,
        "leader        {}",
        status
            .leader
            .as_ref()
            .map(describe_leader)
            .unwrap_or_else(dash)
    );
    if !status.tables.is_empty() {
        let width = status
            .tables
            .iter()
            .map(|t| t.table.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<width$}  {:>12}  snapshot", "table", "keys");
        for table in &status.tables {
            let keys = table.keys.map_or_else(dash, |n| n.to_string());
            let snapshot = match &table.snapshot {
                None => dash(),
                Some(p) if p.done => format!("done ({} rows)", p.rows),
                Some(p) => match p.estimated_rows {
                    Some(estimate) if estimate > 0 => format!(
                        "{}/~{} rows ({}%)",
                        p.rows,
                        estimate.max(p.rows),
                        p.rows.saturating_mul(100) / estimate.max(p.rows)
                    ),
                    _ => format!("{} rows", p.rows),
                },
            };
            let _ = writeln!(out, "{:<width$}  {keys:>12}  {snapshot}", table.table);
        }
    }
    for error in &status.errors {
        let _ = writeln!(out, "warning: {error}");
    }
    out
}

/// `host H, pid P (instance I, since S)` from the leader record; its JSON if it has another shape.
fn describe_leader(leader: &Json) -> String {
    match (
        leader["host"].as_str(),
        leader["pid"].as_u64(),
        leader["instance"].as_str(),
        leader["since"].as_str(),
    ) {
        (Some(host), Some(pid), Some(instance), Some(since)) => {
            format!("host {host}, pid {pid} (instance {instance}, since {since})")
        }
        _ => leader.to_string(),
    }
}
