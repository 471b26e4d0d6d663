//! `etcdsync verify`: proves the sink holds exactly what the configured mapping makes of the
//! source. Pass 1 pages through every selected table in key order, runs each row through the
//! transform chain as a snapshot insert and computes its key and value as the sink would, then
//! reads those keys back in batches (missing / different). Pass 2 pages through the sink's data
//! keys, maps each to the row that owns it and asks the source, in batches per table, which of
//! those rows exist (extra). Memory is bounded by the page size, never by a table.
//! `--repair` writes the missing and different values and deletes the extra keys.

use super::{
    load_for_command, runtime, sink_inspector_fenced, source_inspector, take_leadership_for_repair,
};
use anyhow::Context as _;
use etcdsync_core::change::{Change, Op, TableId, TableSchema};
use etcdsync_core::encode::json::encode_row;
use etcdsync_core::encode::key::is_valid_relative_key;
use etcdsync_core::inspect::{SinkInspector, SourceInspector};
use etcdsync_core::transform::{Chain, TransformConfig};
use etcdsync_core::Value;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// Rows (pass 1) and keys (pass 2) per page.
pub const PAGE: usize = 500;
/// Characters of a value shown for a `different` key.
const SHOWN_VALUE_CHARS: usize = 200;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub repair: bool,
    /// Keys of tables this pipeline wrote and no longer selects are extra (and repaired).
    pub delete_unselected: bool,
    pub max_report: usize,
    pub json: bool,
}

/// `etcdsync verify --json`.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Tables compared.
    pub tables: Vec<String>,
    /// Selected tables that could not be compared (no key columns), with the reason.
    pub skipped: Vec<String>,
    /// Rows read from the source.
    pub source_rows: u64,
    /// Keys read under the sink's data prefix (before any repair of extras).
    pub sink_keys: u64,
    /// A row's key is absent from the sink.
    pub missing: Found,
    /// A row's key holds another value.
    pub different: Found,
    /// A key that no selected row maps to, of a table this pipeline has written.
    pub extra: Found,
    /// Keys under the data prefix of tables this pipeline has not written (another pipeline
    /// sharing the prefix), or that no row layout explains: reported, never deleted.
    pub not_ours: Found,
    /// Keys of tables this pipeline wrote and no longer selects, without `--delete-unselected`:
    /// reported, not counted as drift, never deleted (another pipeline may have taken the table
    /// over).
    pub unselected: Found,
    /// What `--repair` did; `null` without `--repair`.
    pub repaired: Option<Repaired>,
}

#[derive(Debug, Default, Serialize)]
pub struct Found {
    /// How many there are in all.
    pub count: u64,
    /// The first `--max-report` of them.
    pub keys: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub key: String,
    /// The owning row's table (`schema.table`), when known.
    pub table: Option<String>,
    /// The owning row's key column values as text, when known.
    pub row: Option<Vec<String>>,
    /// Why it counts (for extra keys), e.g. `no such row in the source`.
    pub reason: Option<String>,
    /// For different keys: the expected value (from the source) and the value in the sink,
    /// lossy UTF-8, shortened to 200 characters.
    pub expected: Option<String>,
    pub found: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Repaired {
    /// Keys written (missing and different).
    pub written: u64,
    /// Keys deleted (extra).
    pub deleted: u64,
}

impl Report {
    pub fn drift(&self) -> u64 {
        self.missing.count + self.different.count + self.extra.count
    }
}

impl Found {
    fn add(&mut self, max: usize, entry: impl FnOnce() -> Entry) {
        self.count += 1;
        if self.keys.len() < max {
            self.keys.push(entry());
        }
    }
}

pub fn verify(config_file: &Path, options: Options) -> anyhow::Result<ExitCode> {
    let config = load_for_command(config_file)?;
    let report = runtime()?.block_on(async {
        // Repair writes as the pipeline would: only while holding its leadership, so never
        // beside a running instance, and every write fenced (DESIGN §7).
        let leadership = match options.repair {
            true => Some(take_leadership_for_repair(&config).await?),
            false => None,
        };
        let fence = leadership
            .as_ref()
            .and_then(|l| l.as_ref().map(|l| l.fence()));
        let result = async {
            let mut source = source_inspector(&config).await?;
            let mut sink = sink_inspector_fenced(&config, fence).await?;
            run(&config.transforms, source.as_mut(), sink.as_mut(), options).await
        }
        .await;
        if let Some(Some(leadership)) = leadership {
            leadership.resign().await;
        }
        result
    })?;
    if options.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    let clean = report.drift() == 0 || report.repaired.is_some();
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Both passes; with `options.repair`, repairs page by page as drift is found.
pub async fn run(
    transforms: &[Box<dyn TransformConfig>],
    source: &mut dyn SourceInspector,
    sink: &mut dyn SinkInspector,
    options: Options,
) -> anyhow::Result<Report> {
    let mut chain = Chain::new(
        transforms
            .iter()
            .enumerate()
            .map(|(i, t)| t.build().map_err(|e| e.context(format!("transforms[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?,
    );
    let mut report = Report {
        repaired: options.repair.then(Repaired::default),
        ..Report::default()
    };
    let tables = source
        .tables()
        .await
        .context("listing the source's tables")?;
    let mut selected: HashMap<TableId, Arc<TableSchema>> = HashMap::new();
    for table in tables {
        if table.key.is_empty() {
            report.skipped.push(format!(
                "{}: no key columns (give it a primary key, or `key_columns` in the source)",
                table.id
            ));
            continue;
        }
        report.tables.push(table.id.to_string());
        selected.insert(table.id.clone(), table);
    }
    if options.repair && selected.is_empty() {
        anyhow::bail!(
            "the selection (`source.tables`) matches no table with a key, so verify --repair would \
             compare nothing and could only delete; nothing was written — check `source.tables` and \
             the source's connection (database, schema)"
        );
    }
    let written = sink
        .written_tables()
        .await
        .context("reading which tables this pipeline has written")?;
    let mut order: Vec<&Arc<TableSchema>> = selected.values().collect();
    order.sort_by(|a, b| a.id.cmp(&b.id));

    // Keys pass 1 already reported as extra, so pass 2 does not count them twice.
    let mut reported_extra: HashSet<String> = HashSet::new();
    for table in order {
        let started = std::time::Instant::now();
        let rows_before = report.source_rows;
        compare_table(
            table,
            &mut chain,
            source,
            sink,
            options,
            &mut report,
            &mut reported_extra,
        )
        .await
        .with_context(|| format!("verifying {}", table.id))?;
        tracing::debug!(table = %table.id, rows = report.source_rows - rows_before, elapsed = ?started.elapsed(), "table compared");
    }
    let started = std::time::Instant::now();
    find_extra(
        &selected,
        written.as_ref(),
        source,
        sink,
        options,
        &mut report,
        &reported_extra,
    )
    .await?;
    tracing::debug!(keys = report.sink_keys, elapsed = ?started.elapsed(), "sink keys checked");
    Ok(report)
}

/// The key and value the sink should hold for one row, as the pipeline would write it.
struct Expected {
    key: String,
    value: Vec<u8>,
    row: Vec<String>,
}

/// Pass 1 for one table.
async fn compare_table(
    table: &Arc<TableSchema>,
    chain: &mut Chain,
    source: &mut dyn SourceInspector,
    sink: &mut dyn SinkInspector,
    options: Options,
    report: &mut Report,
    reported_extra: &mut HashSet<String>,
) -> anyhow::Result<()> {
    let max = options.max_report;
    let name = table.id.to_string();
    let mut after: Option<Vec<Value>> = None;
    loop {
        let rows = source.scan(table, after.as_deref(), PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = Some(table.key_of(last));
        let full_page = rows.len() >= PAGE;
        report.source_rows += rows.len() as u64;

        let mut expected: Vec<Expected> = Vec::with_capacity(rows.len());
        // Default keys of rows the transforms drop: such a key in the sink is stale.
        let mut dropped: Vec<(String, Vec<String>)> = Vec::new();
        for row in rows {
            let pk = table.key_of(&row);
            let pk_text: Vec<String> = pk.iter().map(Value::to_text).collect();
            let changes = if chain.is_empty() {
                vec![Change::insert(table.clone(), row)]
            } else {
                chain
                    .apply(vec![Change::insert(table.clone(), row)])
                    .map_err(|e| e.context(format!("row ({})", pk_text.join(", "))))?
            };
            let before = expected.len();
            for change in changes {
                let Change {
                    table: schema,
                    op,
                    route,
                    ..
                } = change;
                let row = match op {
                    Op::Insert { row } | Op::Update { row, .. } => row,
                    Op::Delete { .. } | Op::Truncate => continue,
                };
                let key = match &route.key {
                    Some(relative) if !is_valid_relative_key(relative) => {
                        tracing::warn!(
                            table = %schema.id,
                            row = %pk_text.join(", "),
                            key = %relative,
                            "the row's key has an empty component: the sink never stores it (sink.on_invalid_key), \
                             so it is not compared"
                        );
                        continue;
                    }
                    Some(relative) => sink.route_key(relative),
                    None => sink.row_key(&schema.id, &schema.key_of(&row)),
                };
                let value = match route.value {
                    Some(value) => value,
                    None => encode_row(&schema, &row)
                        .with_context(|| format!("encoding the row for {key}"))?,
                };
                expected.push(Expected {
                    key,
                    value,
                    row: pk_text.clone(),
                });
            }
            if expected.len() == before {
                dropped.push((sink.row_key(&table.id, &pk), pk_text));
            }
        }
        let expected_keys: HashSet<&str> = expected.iter().map(|e| e.key.as_str()).collect();
        dropped.retain(|(key, _)| !expected_keys.contains(key.as_str()));

        let mut keys: Vec<String> = expected.iter().map(|e| e.key.clone()).collect();
        keys.extend(dropped.iter().map(|(k, _)| k.clone()));
        let found = sink.get(&keys).await?;
        anyhow::ensure!(
            found.len() == keys.len(),
            "the sink answered {} values for {} keys",
            found.len(),
            keys.len()
        );
        let mut found = found.into_iter();
        let mut puts = Vec::new();
        for want in expected {
            match found.next().flatten() {
                None => {
                    report.missing.add(max, || Entry {
                        key: want.key.clone(),
                        table: Some(name.clone()),
                        row: Some(want.row.clone()),
                        reason: None,
                        expected: Some(shown(&want.value)),
                        found: None,
                    });
                    puts.push((want.key, want.value));
                }
                Some(value) if value != want.value => {
                    report.different.add(max, || Entry {
                        key: want.key.clone(),
                        table: Some(name.clone()),
                        row: Some(want.row.clone()),
                        reason: None,
                        expected: Some(shown(&want.value)),
                        found: Some(shown(&value)),
                    });
                    puts.push((want.key, want.value));
                }
                Some(_) => {}
            }
        }
        let mut deletes = Vec::new();
        for ((key, row), value) in dropped.into_iter().zip(found) {
            if value.is_some() {
                report.extra.add(max, || Entry {
                    key: key.clone(),
                    table: Some(name.clone()),
                    row: Some(row),
                    reason: Some("the transforms drop this row (filter)".into()),
                    expected: None,
                    found: None,
                });
                reported_extra.insert(key.clone());
                deletes.push(key);
            }
        }
        repair(sink, report, options, puts, deletes).await?;
        if !full_page {
            break;
        }
    }
    Ok(())
}

/// Pass 2: every key under the data prefix must belong to an existing row of a selected table.
async fn find_extra(
    selected: &HashMap<TableId, Arc<TableSchema>>,
    written: Option<&HashSet<TableId>>,
    source: &mut dyn SourceInspector,
    sink: &mut dyn SinkInspector,
    options: Options,
    report: &mut Report,
    reported_extra: &HashSet<String>,
) -> anyhow::Result<()> {
    let max = options.max_report;
    let mut after: Option<String> = None;
    loop {
        let page = sink.scan(after.as_deref(), PAGE).await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        let full_page = page.len() >= PAGE;
        report.sink_keys += page.len() as u64;

        let mut extra: Vec<Entry> = Vec::new();
        let mut owned: BTreeMap<TableId, Vec<(String, Vec<String>)>> = BTreeMap::new();
        for (key, _) in page {
            if reported_extra.contains(&key) {
                continue;
            }
            match sink.owner(&key).await? {
                None => report.not_ours.add(max, || {
                    extra_entry(key, None, None, "no row layout explains this key")
                }),
                Some((table, row)) if !selected.contains_key(&table) => {
                    let name = table.to_string();
                    let ours = written.is_some_and(|w| w.contains(&table));
                    if ours && options.delete_unselected {
                        extra.push(extra_entry(
                            key,
                            Some(name),
                            Some(row),
                            "this pipeline wrote its table, which is no longer selected by `source.tables`",
                        ));
                    } else if ours {
                        report.unselected.add(max, || {
                            extra_entry(
                                key,
                                Some(name),
                                Some(row),
                                "this pipeline wrote its table, which is no longer selected; `--delete-unselected` deletes it",
                            )
                        });
                    } else {
                        report.not_ours.add(max, || {
                            extra_entry(
                                key,
                                Some(name),
                                Some(row),
                                "its table is not selected and this pipeline never wrote it",
                            )
                        });
                    }
                }
                Some((table, row)) => owned.entry(table).or_default().push((key, row)),
            }
        }
        for (table, keys) in owned {
            let Some(schema) = selected.get(&table) else {
                continue;
            };
            let rows: Vec<Vec<String>> = keys.iter().map(|(_, row)| row.clone()).collect();
            let existing: HashSet<Vec<String>> = source
                .existing_keys(schema, &rows)
                .await
                .with_context(|| format!("looking up rows of {table}"))?
                .into_iter()
                .collect();
            let name = table.to_string();
            for (key, row) in keys {
                if !existing.contains(&row) {
                    extra.push(extra_entry(
                        key,
                        Some(name.clone()),
                        Some(row),
                        "no such row in the source",
                    ));
                }
            }
        }
        let mut deletes = Vec::with_capacity(extra.len());
        for entry in extra {
            deletes.push(entry.key.clone());
            report.extra.add(max, || entry);
        }
        repair(sink, report, options, Vec::new(), deletes).await?;
        if !full_page {
            break;
        }
    }
    Ok(())
}

fn extra_entry(key: String, table: Option<String>, row: Option<Vec<String>>, why: &str) -> Entry {
    Entry {
        key,
        table,
        row,
        reason: Some(why.into()),
        expected: None,
        found: None,
    }
}

async fn repair(
    sink: &mut dyn SinkInspector,
    report: &mut Report,
    options: Options,
    puts: Vec<(String, Vec<u8>)>,
    deletes: Vec<String>,
) -> anyhow::Result<()> {
    if !options.repair || (puts.is_empty() && deletes.is_empty()) {
        return Ok(());
    }
    let (written, deleted) = (puts.len() as u64, deletes.len() as u64);
    sink.repair(puts, deletes)
        .await
        .context("repairing the sink")?;
    if let Some(repaired) = report.repaired.as_mut() {
        repaired.written += written;
        repaired.deleted += deleted;
    }
    Ok(())
}

fn shown(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    if text.chars().count() <= SHOWN_VALUE_CHARS {
        text.into_owned()
    } else {
        let mut short: String = text.chars().take(SHOWN_VALUE_CHARS).collect();
        short.push('…');
        short
    }
}

/// The human-readable report.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "compared {} table(s): {} row(s) in the source, {} key(s) in the sink",
        report.tables.len(),
        report.source_rows,
        report.sink_keys
    );
    for skipped in &report.skipped {
        let _ = writeln!(out, "skipped {skipped}");
    }
    for (label, found) in [
        ("missing", &report.missing),
        ("different", &report.different),
        ("extra", &report.extra),
    ] {
        let _ = writeln!(out, "{label}: {}", found.count);
        for entry in &found.keys {
            let mut line = format!("  {}", entry.key);
            if let (Some(table), Some(row)) = (&entry.table, &entry.row) {
                let _ = write!(line, "  ({table} ({}))", row.join(", "));
            }
            if let Some(reason) = &entry.reason {
                let _ = write!(line, ": {reason}");
            }
            let _ = writeln!(out, "{line}");
            if label == "different" {
                if let Some(expected) = &entry.expected {
                    let _ = writeln!(out, "      source: {expected}");
                }
                if let Some(found) = &entry.found {
                    let _ = writeln!(out, "      sink:   {found}");
                }
            }
        }
        if found.count > found.keys.len() as u64 {
            let _ = writeln!(
                out,
                "  … and {} more",
                found.count - found.keys.len() as u64
            );
        }
    }
    if report.unselected.count > 0 {
        let _ = writeln!(
            out,
            "unselected: {} key(s) of tables this pipeline wrote and no longer selects; `verify --repair --delete-unselected` deletes them (make sure no other pipeline took the tables over)",
            report.unselected.count
        );
        for entry in &report.unselected.keys {
            let _ = writeln!(out, "  {}", entry.key);
        }
    }
    if report.not_ours.count > 0 {
        let _ = writeln!(
            out,
            "not ours: {} key(s) under the data prefix belong to no table this pipeline wrote (another pipeline sharing sink.prefix?); never deleted",
            report.not_ours.count
        );
        for entry in &report.not_ours.keys {
            let _ = writeln!(
                out,
                "  {}: {}",
                entry.key,
                entry.reason.as_deref().unwrap_or("")
            );
        }
    }
    match (&report.repaired, report.drift()) {
        (_, 0) => {
            let _ = writeln!(out, "no drift: the sink matches the source");
        }
        (Some(repaired), drift) => {
            let _ = writeln!(
                out,
                "drift: {drift} key(s); repaired: wrote {} key(s), deleted {} key(s) (run verify again to confirm)",
                repaired.written, repaired.deleted
            );
        }
        (None, drift) => {
            let _ = writeln!(
                out,
                "drift: {drift} key(s); `etcdsync verify --repair` fixes them (stop `etcdsync run` first)"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests;
