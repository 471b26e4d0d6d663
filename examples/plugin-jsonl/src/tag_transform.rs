//! `type: tag` — appends a constant text column to every row of every table.

use etcdsync_core::change::{Column, Op, TableSchema};
use etcdsync_core::registry::{PluginInfo, PluginKind};
use etcdsync_core::transform::{Transform, TransformConfig};
use etcdsync_core::{Change, Error, Result, Value};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagConfig {
    /// Name of the added column.
    pub column: String,
    /// Its value.
    pub value: String,
}

inventory::submit! {
    PluginInfo {
        kind: PluginKind::Transform,
        name: "tag",
        summary: "adds a constant text column to every row (example plugin)",
        example: "type: tag\ncolumn: origin\nvalue: eu-1\n",
    }
}

#[typetag::serde(name = "tag")]
impl TransformConfig for TagConfig {
    fn validate(&self) -> Result<()> {
        if self.column.is_empty() {
            return Err(Error::config(
                "tag: `column` is empty; name the column to add",
            ));
        }
        Ok(())
    }

    fn build(&self) -> Result<Box<dyn Transform>> {
        Ok(Box::new(Tag {
            column: self.column.clone(),
            value: self.value.clone(),
            last: None,
        }))
    }
}

struct Tag {
    column: String,
    value: String,
    /// The last input schema and its tagged version.
    last: Option<(Arc<TableSchema>, Arc<TableSchema>)>,
}

impl Tag {
    fn tagged(&mut self, schema: &Arc<TableSchema>) -> Arc<TableSchema> {
        match &self.last {
            Some((input, output)) if Arc::ptr_eq(input, schema) => output.clone(),
            _ => {
                let mut columns = schema.columns.clone();
                columns.push(Column::new(self.column.clone(), "text"));
                let output = Arc::new(TableSchema::new(
                    schema.id.clone(),
                    columns,
                    schema.key.clone(),
                ));
                self.last = Some((schema.clone(), output.clone()));
                output
            }
        }
    }
}

impl Transform for Tag {
    fn apply(&mut self, change: Change, out: &mut Vec<Change>) -> Result<()> {
        let table = self.tagged(&change.table);
        let tag = || Value::Text(self.value.clone());
        let op = match change.op {
            Op::Insert { mut row } => {
                row.push(tag());
                Op::Insert { row }
            }
            Op::Update { old, mut row } => {
                row.push(tag());
                Op::Update {
                    old: old.map(|mut o| {
                        o.push(tag());
                        o
                    }),
                    row,
                }
            }
            Op::Delete { mut old } => {
                old.push(tag());
                Op::Delete { old }
            }
            Op::Truncate => Op::Truncate,
        };
        out.push(Change {
            table,
            op,
            route: change.route,
            seq: change.seq,
        });
        Ok(())
    }
}
