//! `etcdsync check`: the config (parsed and validated), each transform (built, and tried on a
//! sample row of every selected table), then every prerequisite the source and sink inspectors
//! report — one line each with the exact fix for a failure; exit 1 on any failure. Read-only
//! unless `--write-probe` lets the sink write a probe (its inspector says what it writes).

use super::{load_for_command, runtime, sink_inspector, source_inspector};
use crate::logging;
use etcdsync_core::config::{LogConfig, PipelineConfig};
use etcdsync_core::inspect::{CheckOptions, CheckResult, SinkInspector, SourceInspector};
use etcdsync_core::transform::Chain;
use etcdsync_core::{Change, Op};
use serde::Serialize;
use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// How long one inspector call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// One printed line: a check and the part of the setup it concerns.
#[derive(Debug, Serialize)]
pub struct Line {
    /// `config`, `transforms`, `source` or `sink`.
    pub scope: &'static str,
    #[serde(flatten)]
    pub result: CheckResult,
}

#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    passed: usize,
    failed: usize,
    checks: Vec<Line>,
}

pub fn check(config_file: &Path, json: bool, options: CheckOptions) -> anyhow::Result<ExitCode> {
    let mut lines = Vec::new();
    match load_for_command(config_file) {
        Ok(config) => {
            lines.push(Line {
                scope: "config",
                result: CheckResult::pass(
                    "config file",
                    format!(
                        "{} parsed and validated (source `{}`, {} transform(s), sink `{}`)",
                        config_file.display(),
                        config.source.typetag_name(),
                        config.transforms.len(),
                        config.sink.typetag_name()
                    ),
                ),
            });
            runtime()?.block_on(check_all(&config, options, &mut lines));
        }
        Err(error) => {
            let _ = logging::init(&LogConfig::default(), "warn");
            lines.push(Line {
                scope: "config",
                result: CheckResult::fail(
                    "config file",
                    format!("{error:#}"),
                    "edit the config file as the message says (it names the key); `etcdsync plugins --examples` shows valid sections",
                ),
            });
        }
    }
    let failed = lines.iter().filter(|l| !l.result.ok).count();
    if json {
        let report = Report {
            ok: failed == 0,
            passed: lines.len() - failed,
            failed,
            checks: lines,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for line in &lines {
            println!("{}", render(line));
        }
        if failed == 0 {
            println!("all {} checks passed", lines.len());
        } else {
            println!("{failed} of {} checks FAILED", lines.len());
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `[ok]   scope: name: detail` or `[FAIL] scope: name: detail — fix: …`.
pub fn render(line: &Line) -> String {
    let r = &line.result;
    let mut text = format!(
        "{:<6} {}: {}: {}",
        if r.ok { "[ok]" } else { "[FAIL]" },
        line.scope,
        r.name,
        r.detail
    );
    if let Some(fix) = r.fix.as_deref().filter(|_| !r.ok) {
        text.push_str(" — fix: ");
        text.push_str(fix);
    }
    text
}

async fn bounded<T>(what: &str, call: impl Future<Output = T>) -> Result<T, CheckResult> {
    tokio::time::timeout(CALL_TIMEOUT, call).await.map_err(|_| {
        CheckResult::fail(
            what,
            format!("no answer within {}s", CALL_TIMEOUT.as_secs()),
            "make sure the server is reachable from this host (firewall, address, port)",
        )
    })
}

async fn check_all(config: &PipelineConfig, options: CheckOptions, lines: &mut Vec<Line>) {
    let mut push = |scope: &'static str, result: CheckResult| lines.push(Line { scope, result });

    // Transforms: each must build.
    let mut built = Vec::new();
    let mut all_built = true;
    for (i, transform) in config.transforms.iter().enumerate() {
        let name = format!("transforms[{i}] ({})", transform.typetag_name());
        match transform.build() {
            Ok(t) => {
                built.push(t);
                push("transforms", CheckResult::pass(name, "valid and built"));
            }
            Err(error) => {
                all_built = false;
                push(
                    "transforms",
                    CheckResult::fail(
                        name,
                        error.to_string(),
                        format!("correct `transforms[{i}]` as the message says"),
                    ),
                );
            }
        }
    }

    // The source.
    let source_type = config.source.typetag_name();
    let mut source = match bounded("connect", source_inspector(config)).await {
        Ok(Ok(inspector)) => Some(inspector),
        Ok(Err(error)) => {
            push(
                "source",
                CheckResult::fail(
                    "connect",
                    format!("{error:#}"),
                    format!("correct `source` ({source_type}) or make the server reachable, as the message says"),
                ),
            );
            None
        }
        Err(result) => {
            push("source", result);
            None
        }
    };
    if let Some(inspector) = source.as_mut() {
        match bounded("prerequisites", inspector.check()).await {
            Ok(results) => results.into_iter().for_each(|r| push("source", r)),
            Err(result) => push("source", result),
        }
    }

    // The sink.
    let sink_type = config.sink.typetag_name();
    let mut sink = match bounded("connect", sink_inspector(config)).await {
        Ok(Ok(inspector)) => Some(inspector),
        Ok(Err(error)) => {
            push(
                "sink",
                CheckResult::fail(
                    "connect",
                    format!("{error:#}"),
                    format!("correct `sink` ({sink_type}) or make the server reachable, as the message says"),
                ),
            );
            None
        }
        Err(result) => {
            push("sink", result);
            None
        }
    };
    if let Some(inspector) = sink.as_mut() {
        match bounded("prerequisites", inspector.check(options)).await {
            Ok(results) => results.into_iter().for_each(|r| push("sink", r)),
            Err(result) => push("sink", result),
        }
    }

    // The transforms tried on one row of each selected table (the source's own checks report
    // the selection itself).
    if let (Some(source), true) = (source.as_mut(), all_built && !built.is_empty()) {
        let mut chain = Chain::new(built);
        for (scope, result) in sample_checks(source.as_mut(), sink.as_deref(), &mut chain).await {
            push(scope, result);
        }
    }
}

/// The transform chain applied to one sample row of each selected table, showing the key it
/// maps to.
async fn sample_checks(
    source: &mut dyn SourceInspector,
    sink: Option<&dyn SinkInspector>,
    chain: &mut Chain,
) -> Vec<(&'static str, CheckResult)> {
    let mut out = Vec::new();
    let tables = match bounded("selected tables", source.tables()).await {
        Ok(Ok(tables)) => tables,
        Ok(Err(error)) => {
            out.push((
                "source",
                CheckResult::fail(
                    "selected tables",
                    error.to_string(),
                    "see the message; the role needs SELECT on the tables",
                ),
            ));
            return out;
        }
        Err(result) => {
            out.push(("source", result));
            return out;
        }
    };
    for table in tables.iter().filter(|t| !t.key.is_empty()) {
        let name = format!("transforms on {}", table.id);
        let rows = match bounded(&name, source.scan(table, None, 1)).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(error)) => {
                out.push((
                    "transforms",
                    CheckResult::fail(
                        name,
                        format!("cannot read a sample row: {error}"),
                        "see the message; the role needs SELECT on the table",
                    ),
                ));
                continue;
            }
            Err(result) => {
                out.push(("transforms", result));
                continue;
            }
        };
        let Some(row) = rows.into_iter().next() else {
            out.push((
                "transforms",
                CheckResult::pass(name, "the table is empty; nothing to try"),
            ));
            continue;
        };
        match chain.apply(vec![Change::insert(table.clone(), row)]) {
            Ok(changes) => {
                let keys: Vec<String> = changes
                    .iter()
                    .filter(|c| matches!(c.op, Op::Insert { .. } | Op::Update { .. }))
                    .map(|c| match (&c.route.key, sink) {
                        (Some(key), Some(sink)) => sink.route_key(key),
                        (Some(key), None) => key.clone(),
                        (None, Some(sink)) => match &c.op {
                            Op::Insert { row } | Op::Update { row, .. } => {
                                sink.row_key(&c.table.id, &c.table.key_of(row))
                            }
                            _ => String::new(),
                        },
                        (None, None) => "(default key)".into(),
                    })
                    .collect();
                let detail = if keys.is_empty() {
                    "a sample row is filtered out".to_string()
                } else {
                    format!("a sample row maps to {}", keys.join(", "))
                };
                out.push(("transforms", CheckResult::pass(name, detail)));
            }
            Err(error) => out.push((
                "transforms",
                CheckResult::fail(
                    name,
                    error.to_string(),
                    "correct the transform the message names (columns and templates must match the table)",
                ),
            )),
        }
    }
    out
}
