//! The `Source` plugin contract: how a source is configured, built and run, and what it must
//! promise the pipeline (DESIGN §1, §5).

use crate::change::{Checkpoint, Message, Position};
use crate::error::Result;
use crate::inspect::SourceInspector;
use crate::leadership::Fence;
use async_trait::async_trait;
use std::fmt::Debug;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// What a source gets when it is built.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// The pipeline name (`name:` in the config).
    pub name: String,
    /// The checkpoint found in the sink, if any: resume strictly after it.
    pub resume: Option<Checkpoint>,
    /// The pipeline's leadership when the sink elects one (DESIGN §7): a source may then take
    /// over upstream resources an earlier instance of the pipeline still holds, after
    /// [`Fence::check`]. `None`: no election; never disturb another session.
    pub fence: Option<Fence>,
    /// The tables the sink holds rows of ([`crate::sink::Sink::written_tables`]), including ones
    /// dropped while the pipeline was stopped; empty when the sink does not record them.
    pub written_tables: std::collections::HashSet<crate::TableId>,
}

/// Reads a row's current values from the source, for a sink that has no stored value to fill an
/// unchanged (TOAST) column from (DESIGN §3). What it returns may be newer than the change
/// being applied; the later change that wrote it follows and converges.
#[async_trait]
pub trait RowFetcher: Send + Sync {
    /// The row of `table` whose key columns hold `key`, by column name, as the source holds it
    /// now; `None` when there is no such row or table (dropped, renamed away, no longer
    /// selected): a later change of the stream, or the table's retirement, removes its keys.
    async fn fetch(
        &self,
        table: &crate::change::TableSchema,
        key: &[crate::value::Value],
    ) -> Result<Option<Vec<(String, crate::value::Value)>>>;

    /// [`Self::fetch`] for a change with [`crate::Change::seq`] `seq`: a source that streams a
    /// transaction before other sessions can see it waits until they can (the default reads at
    /// once).
    async fn fetch_for(
        &self,
        table: &crate::change::TableSchema,
        key: &[crate::value::Value],
        seq: Option<u128>,
    ) -> Result<Option<Vec<(String, crate::value::Value)>>> {
        let _ = seq;
        self.fetch(table, key).await
    }
}

/// The source's ends of the pipeline.
pub struct SourceIo {
    /// Where messages go. Bounded: a full channel is the pipeline's backpressure.
    pub output: mpsc::Sender<Message>,
    /// The last position the sink made durable. Confirm upstream only up to this; the channel
    /// closes when the sink has finished.
    pub acked: watch::Receiver<Option<Position>>,
    /// Cancelled when the pipeline should stop.
    pub shutdown: CancellationToken,
}

/// The sink is gone (it stopped or failed); the source should stop quietly: the sink's own
/// error is what the pipeline reports.
#[derive(Debug, thiserror::Error)]
#[error("the pipeline's sink has stopped")]
pub struct OutputClosed;

impl SourceIo {
    /// Sends one message, waiting for room.
    pub async fn send(&self, message: Message) -> Result<(), OutputClosed> {
        self.output.send(message).await.map_err(|_| OutputClosed)
    }

    /// Waits until the sink has finished (after the source dropped `output`) and returns the
    /// last acknowledged position, for a final status update upstream.
    pub async fn final_ack(mut acked: watch::Receiver<Option<Position>>) -> Option<Position> {
        while acked.changed().await.is_ok() {}
        let last = acked.borrow().clone();
        last
    }
}

/// Transforms may read any column (a filter, a key template, a value), so values a change left
/// out (`Value::Unchanged`: PostgreSQL TOAST) are read from the source before them. The value
/// read may be newer than the change; the change that wrote it follows, so the sink converges.
///
/// When the source no longer has the row, a later change of the stream removes it, so the
/// update is left out; an update that moved the row to a new key still deletes the old one.
pub(crate) async fn fill_unchanged(
    fetcher: &dyn RowFetcher,
    changes: &mut Vec<crate::Change>,
) -> crate::Result<()> {
    use crate::{Op, Value};
    let mut gone = Vec::new();
    for (at, change) in changes.iter_mut().enumerate() {
        let Op::Update { row, .. } = &mut change.op else {
            continue;
        };
        if !row.iter().any(|v| matches!(v, Value::Unchanged)) {
            continue;
        }
        let table = &change.table;
        let key: Vec<Value> = table
            .key
            .iter()
            .filter_map(|&i| row.get(i).cloned())
            .collect();
        let Some(current) = fetcher.fetch_for(table, &key, change.seq).await? else {
            gone.push(at);
            continue;
        };
        // A column the table no longer has (renamed, dropped) stays unchanged: the sink fills
        // it from the value it stores, or stops naming the column.
        let _ = fill_from_current(table, row, &current);
    }
    for at in gone.into_iter().rev() {
        let change = changes.remove(at);
        let Op::Update {
            old: Some(old),
            row,
        } = change.op
        else {
            continue;
        };
        if change.table.key_of(&old) != change.table.key_of(&row) {
            tracing::debug!(table = %change.table.id, "the source no longer has an updated row; only its old key is deleted");
            changes.insert(
                at,
                crate::Change {
                    op: Op::Delete { old },
                    ..change
                },
            );
        }
    }
    Ok(())
}

/// Fills `row`'s unchanged values from `current` (a row as [`RowFetcher::fetch`] returns it),
/// matching columns by name; returns the first unchanged column `current` lacks (left as it was).
pub fn fill_from_current<'a>(
    table: &'a crate::TableSchema,
    row: &mut [crate::Value],
    current: &[(String, crate::Value)],
) -> Option<&'a str> {
    let mut missing = None;
    for (value, column) in row.iter_mut().zip(&table.columns) {
        if !matches!(value, crate::Value::Unchanged) {
            continue;
        }
        match current.iter().find(|(name, _)| *name == column.name) {
            Some((_, fresh)) => *value = fresh.clone(),
            None => {
                missing.get_or_insert(column.name.as_str());
            }
        }
    }
    missing
}

/// A running source.
///
/// Contract:
/// - emit transactions in commit order: `Changes`… then `Commit`; never interleave two;
/// - a snapshot is `SnapshotStarted`, `Changes` (inserts only), `SnapshotFinished`;
/// - confirm upstream only positions received on `acked`;
/// - on shutdown: stop reading, drop `output`, wait for [`SourceIo::final_ack`], confirm it, return.
#[async_trait]
pub trait Source: Send {
    /// Reads rows by key for the sink (unchanged TOAST values it cannot fill); `None` (the
    /// default): the source cannot.
    fn fetcher(&self) -> Option<std::sync::Arc<dyn RowFetcher>> {
        None
    }

    async fn run(self: Box<Self>, io: SourceIo) -> Result<()>;
}

/// A source's configuration, selected in YAML by `type:`.
#[async_trait]
#[typetag::serde(tag = "type")]
pub trait SourceConfig: Debug + Send + Sync {
    /// The plugin's name as checkpoints record it: the same for every alias of one plugin
    /// (`type: postgres` is `pgx`), so switching between aliases keeps the checkpoint.
    fn plugin_name(&self) -> &'static str {
        self.typetag_name()
    }

    /// Names earlier versions of the plugin recorded in checkpoints instead of
    /// [`Self::plugin_name`]; a checkpoint with one of them is resumed, not refused.
    fn former_names(&self) -> &'static [&'static str] {
        &[]
    }

    /// Checks the configuration without I/O; errors name the key and the fix.
    fn validate(&self, pipeline_name: &str) -> Result<()>;

    /// Connects and returns the running source.
    async fn build(&self, cx: SourceContext) -> Result<Box<dyn Source>>;

    /// Connects for `check`, `status` and `verify`. Plugins that do not support them keep this
    /// default, which says so.
    async fn inspect(&self, pipeline_name: &str) -> Result<Box<dyn SourceInspector>> {
        let _ = pipeline_name;
        Err(crate::Error::config(format!(
            "source `{}` does not support check, status or verify",
            self.typetag_name()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Column, Op, Route, TableId, TableSchema};
    use crate::{Change, Value};
    use std::collections::HashMap;
    use std::sync::Arc;

    /// Rows by their `id`, with the columns the source has now.
    struct FakeSource(HashMap<i64, Vec<(String, Value)>>);

    #[async_trait]
    impl RowFetcher for FakeSource {
        async fn fetch(
            &self,
            _table: &crate::TableSchema,
            key: &[Value],
        ) -> Result<Option<Vec<(String, Value)>>> {
            let Some(Value::Int(id)) = key.first() else {
                return Ok(None);
            };
            Ok(self.0.get(id).cloned())
        }
    }

    fn table() -> Arc<TableSchema> {
        Arc::new(TableSchema::new(
            TableId::new("public", "docs"),
            vec![Column::new("id", "int8"), Column::new("body", "text")],
            vec![0],
        ))
    }

    fn update(old: Option<i64>, id: i64) -> Change {
        Change {
            table: table(),
            op: Op::Update {
                old: old.map(|o| vec![Value::Int(o), Value::Missing]),
                row: vec![Value::Int(id), Value::Unchanged],
            },
            route: Route::default(),
            seq: None,
        }
    }

    #[tokio::test]
    async fn unchanged_values_come_from_the_current_row() {
        let source = FakeSource(HashMap::from([(
            1,
            vec![
                ("id".into(), Value::Int(1)),
                ("body".into(), Value::Text("now".into())),
            ],
        )]));
        let mut changes = vec![update(None, 1)];
        fill_unchanged(&source, &mut changes).await.expect("fill");
        let Op::Update { row, .. } = &changes[0].op else {
            panic!("still an update: {changes:?}");
        };
        assert_eq!(row[1], Value::Text("now".into()));
    }

    #[tokio::test]
    async fn a_row_gone_at_the_source_leaves_its_update_out_but_deletes_a_moved_key_and_a_missing_column_is_left_unchanged(
    ) {
        let renamed_column = FakeSource(HashMap::from([(
            3,
            vec![
                ("id".into(), Value::Int(3)),
                ("text".into(), Value::Text("x".into())),
            ],
        )]));
        let mut changes = vec![update(None, 1), update(Some(2), 4), update(None, 3)];
        fill_unchanged(&renamed_column, &mut changes)
            .await
            .expect("fill");
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(
            changes[0].op,
            Op::Delete {
                old: vec![Value::Int(2), Value::Missing]
            }
        );
        // The row is there but no longer has the column: left for the sink's stored value.
        assert_eq!(changes[1].op, update(None, 3).op);
    }
}
