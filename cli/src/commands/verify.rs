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
    /// A key that no selected row maps to.
    pub extra: Found,
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
                None => extra.push(extra_entry(
                    key,
                    None,
                    None,
                    "no row layout explains this key",
                )),
                Some((table, row)) if !selected.contains_key(&table) => {
                    let name = table.to_string();
                    extra.push(extra_entry(
                        key,
                        Some(name),
                        Some(row),
                        "its table is not selected by `source.tables`",
                    ));
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
mod tests {
    //! Both passes against in-memory inspectors: paging across many pages, each kind of drift,
    //! and repair converging.
    use super::*;
    use etcdsync_core::change::{Checkpoint, Column, Position, Row};
    use etcdsync_core::encode::key::{row_key, unescape_component};
    use etcdsync_core::inspect::{CheckOptions, CheckResult, SourceLag};
    use etcdsync_core::{async_trait, Result};

    const PREFIX: &str = "/p";

    fn schema() -> Arc<TableSchema> {
        Arc::new(TableSchema::new(
            TableId::new("s", "t"),
            vec![Column::new("id", "int8"), Column::new("v", "text")],
            vec![0],
        ))
    }

    struct Source {
        rows: BTreeMap<i64, String>,
        largest_page: usize,
    }

    #[async_trait]
    impl SourceInspector for Source {
        async fn check(&mut self) -> Vec<CheckResult> {
            Vec::new()
        }
        async fn tables(&mut self) -> Result<Vec<Arc<TableSchema>>> {
            Ok(vec![schema()])
        }
        async fn scan(
            &mut self,
            _table: &TableSchema,
            after: Option<&[Value]>,
            limit: usize,
        ) -> Result<Vec<Row>> {
            let after = match after {
                Some([Value::Int(id)]) => *id,
                None => i64::MIN,
                other => panic!("bad after {other:?}"),
            };
            self.largest_page = self.largest_page.max(limit);
            Ok(self
                .rows
                .range(after + 1..)
                .take(limit)
                .map(|(id, v)| vec![Value::Int(*id), Value::Text(v.clone())])
                .collect())
        }
        async fn existing_keys(
            &mut self,
            _table: &TableSchema,
            keys: &[Vec<String>],
        ) -> Result<Vec<Vec<String>>> {
            assert!(keys.len() <= PAGE);
            Ok(keys
                .iter()
                .filter(|k| {
                    k.len() == 1
                        && k[0]
                            .parse::<i64>()
                            .is_ok_and(|id| self.rows.contains_key(&id))
                })
                .cloned()
                .collect())
        }
        async fn lag(&mut self, _position: &Position) -> Result<SourceLag> {
            Ok(SourceLag::default())
        }
    }

    #[derive(Default)]
    struct Sink {
        kv: BTreeMap<String, Vec<u8>>,
    }

    #[async_trait]
    impl SinkInspector for Sink {
        async fn check(&mut self, _options: CheckOptions) -> Vec<CheckResult> {
            Vec::new()
        }
        async fn checkpoint(&mut self) -> Result<Option<Checkpoint>> {
            Ok(None)
        }
        async fn metadata(&mut self) -> Result<BTreeMap<String, serde_json::Value>> {
            Ok(BTreeMap::new())
        }
        fn row_key(&self, table: &TableId, key: &[Value]) -> String {
            row_key(PREFIX, table, key)
        }
        fn route_key(&self, route_key: &str) -> String {
            format!("{PREFIX}/{route_key}")
        }
        async fn get(&mut self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
            Ok(keys.iter().map(|k| self.kv.get(k).cloned()).collect())
        }
        async fn scan(
            &mut self,
            after: Option<&str>,
            limit: usize,
        ) -> Result<Vec<(String, Vec<u8>)>> {
            let start = after.map_or(String::new(), |a| format!("{a}\0"));
            Ok(self
                .kv
                .range(start..)
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect())
        }
        async fn owner(&mut self, key: &str) -> Result<Option<(TableId, Vec<String>)>> {
            let parts: Vec<&str> = key.trim_start_matches("/p/").split('/').collect();
            Ok(match parts.as_slice() {
                [schema, table, pk] => Some((
                    TableId::new(*schema, *table),
                    vec![unescape_component(pk).unwrap_or_default()],
                )),
                _ => None,
            })
        }
        async fn count(&mut self, _table: &TableId) -> Result<u64> {
            Ok(self.kv.len() as u64)
        }
        async fn repair(
            &mut self,
            puts: Vec<(String, Vec<u8>)>,
            deletes: Vec<String>,
        ) -> Result<()> {
            for (k, v) in puts {
                self.kv.insert(k, v);
            }
            for k in deletes {
                self.kv.remove(&k);
            }
            Ok(())
        }
    }

    fn value(id: i64, v: &str) -> Vec<u8> {
        encode_row(&schema(), &[Value::Int(id), Value::Text(v.into())]).expect("encode")
    }

    fn key(id: i64) -> String {
        row_key(PREFIX, &TableId::new("s", "t"), &[Value::Int(id)])
    }

    async fn verify(source: &mut Source, sink: &mut Sink, repair: bool) -> Report {
        let options = Options {
            repair,
            max_report: 3,
            json: false,
        };
        run(&[], source, sink, options).await.expect("verify")
    }

    #[tokio::test]
    async fn finds_each_kind_of_drift_across_pages_and_repair_converges() {
        let n = 3 * PAGE as i64 + 17;
        let mut source = Source {
            rows: (1..=n).map(|id| (id, format!("v{id}"))).collect(),
            largest_page: 0,
        };
        let mut sink = Sink::default();
        for id in 1..=n {
            sink.kv.insert(key(id), value(id, &format!("v{id}")));
        }
        let clean = verify(&mut source, &mut sink, false).await;
        assert_eq!(clean.drift(), 0, "{clean:?}");
        assert_eq!(clean.source_rows, n as u64);
        assert_eq!(clean.sink_keys, n as u64);
        assert_eq!(source.largest_page, PAGE);

        for id in [1, PAGE as i64, PAGE as i64 + 1, n] {
            sink.kv.remove(&key(id));
        }
        sink.kv.insert(key(7), value(7, "changed"));
        sink.kv.insert(key(n + 5), value(n + 5, "planted"));
        sink.kv.insert("/p/s/other/1".into(), b"x".to_vec());
        sink.kv.insert("/p/stray".into(), b"x".to_vec());
        let found = verify(&mut source, &mut sink, false).await;
        assert_eq!(found.missing.count, 4);
        assert_eq!(found.missing.keys.len(), 3, "--max-report caps the list");
        assert_eq!(found.missing.keys[0].key, key(1));
        assert_eq!(found.different.count, 1);
        assert_eq!(found.different.keys[0].key, key(7));
        assert_eq!(
            found.different.keys[0].found.as_deref(),
            Some("{\"id\":7,\"v\":\"changed\"}")
        );
        assert_eq!(found.extra.count, 3);
        let mut extra: Vec<&str> = found.extra.keys.iter().map(|e| e.key.as_str()).collect();
        extra.sort_unstable();
        let planted = key(n + 5);
        assert_eq!(extra, vec!["/p/s/other/1", planted.as_str(), "/p/stray"]);
        assert!(
            render(&found).contains("… and 1 more"),
            "{}",
            render(&found)
        );

        let repaired = verify(&mut source, &mut sink, true).await;
        let done = repaired.repaired.as_ref().expect("repaired");
        assert_eq!((done.written, done.deleted), (5, 3));
        let after = verify(&mut source, &mut sink, false).await;
        assert_eq!(after.drift(), 0, "{after:?}");
        assert_eq!(sink.kv.len(), n as usize);
        assert_eq!(sink.kv.get(&key(7)), Some(&value(7, "v7")));
    }

    #[tokio::test]
    async fn a_row_whose_key_has_an_empty_component_is_not_expected_in_the_sink() {
        let template: Box<dyn TransformConfig> =
            serde_yaml::from_str("type: key_template\ntables: [\"s.t\"]\ntemplate: \"s/t/{v}\"\n")
                .expect("a key_template config");
        let mut source = Source {
            rows: [(1, "1".to_string()), (2, String::new())].into(),
            largest_page: 0,
        };
        let mut sink = Sink::default();
        sink.kv.insert(key(1), value(1, "1"));
        let options = Options {
            repair: false,
            max_report: 3,
            json: false,
        };
        let report = run(&[template], &mut source, &mut sink, options)
            .await
            .expect("verify");
        assert_eq!(report.source_rows, 2);
        // Row 2 maps to `s/t/`, which the sink never stores: not missing.
        assert_eq!(report.drift(), 0, "{report:?}");
    }
}
