//! `value`: the shape of the stored value — the JSON row (default), a JSON object of some
//! columns, one column's raw bytes/text, or a text template.

use crate::scope::TableScope;
use crate::template::Template;
use etcdsync_core::change::{Column, Op, TableSchema};
use etcdsync_core::encode::json::encode_row;
use etcdsync_core::registry::{PluginInfo, PluginKind};
use etcdsync_core::transform::{Transform, TransformConfig};
use etcdsync_core::{Change, Error, Result, Value};
use serde::{Deserialize, Serialize};

/// `type: value`. Give at most one of `columns`, `raw`, `template`; none keeps the JSON row.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueConfig {
    /// Tables this applies to (`schema.table` globs).
    pub tables: TableScope,
    /// A JSON object of only these columns, in this order.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// This column's value as the whole etcd value: bytes as they are, anything else as its
    /// text (JSON rendering without quotes); NULL stores an empty value.
    #[serde(default)]
    pub raw: Option<String>,
    /// Text from a template over the row (`{host}:{port}`), values as text, not escaped.
    #[serde(default)]
    pub template: Option<String>,
}

inventory::submit! {
    PluginInfo {
        kind: PluginKind::Transform,
        name: "value",
        summary: "shapes the stored value: JSON row, some columns, one column raw, or a template",
        example: "type: value\ntables: [\"public.settings\"]\nraw: value\n",
    }
}

enum Shape {
    Columns(Vec<String>),
    Raw(String),
    Template(Template),
}

impl ValueConfig {
    fn shape(&self) -> Result<Option<Shape>> {
        let shape = match (&self.columns, &self.raw, &self.template) {
            (None, None, None) => None,
            (Some(columns), None, None) if !columns.is_empty() => {
                Some(Shape::Columns(columns.clone()))
            }
            (Some(_), None, None) => {
                return Err(Error::config(
                    "value: `columns` is empty; list the columns to keep",
                ))
            }
            (None, Some(column), None) => Some(Shape::Raw(column.clone())),
            (None, None, Some(text)) => {
                Some(Shape::Template(Template::parse(text).map_err(|e| {
                    Error::config(format!("value: template: {e}"))
                })?))
            }
            _ => return Err(Error::config(
                "value: give only one of `columns`, `raw`, `template` (none keeps the JSON row)",
            )),
        };
        Ok(shape)
    }
}

#[typetag::serde(name = "value")]
impl TransformConfig for ValueConfig {
    fn validate(&self) -> Result<()> {
        self.tables.validate("value")?;
        self.shape().map(|_| ())
    }

    fn build(&self) -> Result<Box<dyn Transform>> {
        Ok(Box::new(ValueShape {
            tables: self.tables.clone(),
            shape: self.shape()?,
        }))
    }
}

struct ValueShape {
    tables: TableScope,
    shape: Option<Shape>,
}

fn column<'a>(schema: &TableSchema, row: &'a [Value], name: &str) -> Result<&'a Value> {
    let value = schema
        .column_index(name)
        .and_then(|i| row.get(i))
        .ok_or_else(|| {
            Error::config(format!(
                "value: table {} has no column `{name}`; fix the transform or its `tables`",
                schema.id
            ))
        })?;
    if matches!(value, Value::Unchanged | Value::Missing) {
        return Err(Error::fatal(format!(
            "value: column `{name}` of {} (key {:?}) was not sent by the source (unchanged TOAST value); set REPLICA IDENTITY FULL on the table",
            schema.id,
            schema.key_of(row)
        )));
    }
    Ok(value)
}

impl ValueShape {
    fn render(&self, schema: &TableSchema, row: &[Value]) -> Result<Option<Vec<u8>>> {
        let Some(shape) = &self.shape else {
            return Ok(None);
        };
        let bytes = match shape {
            Shape::Columns(names) => {
                let mut columns = Vec::with_capacity(names.len());
                let mut values = Vec::with_capacity(names.len());
                for name in names {
                    values.push(column(schema, row, name)?.clone());
                    columns.push(Column::new(name.clone(), ""));
                }
                let subset = TableSchema::new(schema.id.clone(), columns, Vec::new());
                encode_row(&subset, &values).map_err(|e| Error::fatal(e.to_string()))?
            }
            Shape::Raw(name) => match column(schema, row, name)? {
                Value::Bytes(bytes) => bytes.clone(),
                Value::Null => Vec::new(),
                other => other.to_text().into_bytes(),
            },
            Shape::Template(template) => {
                template
                    .check_columns(schema)
                    .map_err(|e| e.context("value"))?;
                for name in template.columns() {
                    column(schema, row, name)?;
                }
                let text = template.render(schema, row, &Value::to_text, &|s| s.to_string());
                text.unwrap_or_default().into_bytes()
            }
        };
        Ok(Some(bytes))
    }
}

impl Transform for ValueShape {
    fn apply(&mut self, mut change: Change, out: &mut Vec<Change>) -> Result<()> {
        if self.tables.matches(&change.table.id) {
            if let Op::Insert { row } | Op::Update { row, .. } = &change.op {
                change.route.value = self.render(&change.table, row)?;
            }
        }
        out.push(change);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdsync_core::change::TableId;
    use std::sync::Arc;

    fn table() -> Arc<TableSchema> {
        Arc::new(TableSchema::new(
            TableId::new("public", "settings"),
            vec![
                Column::new("name", "text"),
                Column::new("value", "text"),
                Column::new("blob", "bytea"),
            ],
            vec![0],
        ))
    }

    fn value_of(yaml: &str, row: Vec<Value>) -> Result<Option<Vec<u8>>> {
        let config: Box<dyn TransformConfig> = serde_yaml::from_str(yaml).expect("yaml");
        config.validate()?;
        let mut t = config.build()?;
        let mut out = Vec::new();
        t.apply(Change::insert(table(), row), &mut out)?;
        Ok(out.remove(0).route.value)
    }

    fn row() -> Vec<Value> {
        vec![
            Value::Text("timeout".into()),
            Value::Text("30s".into()),
            Value::Bytes(vec![0, 1]),
        ]
    }

    #[test]
    fn shapes() {
        let raw = value_of("type: value\ntables: [\"*.*\"]\nraw: value\n", row()).expect("raw");
        assert_eq!(raw.as_deref(), Some(&b"30s"[..]));
        let bytes = value_of("type: value\ntables: [\"*.*\"]\nraw: blob\n", row()).expect("bytes");
        assert_eq!(bytes.as_deref(), Some(&[0u8, 1][..]));
        let subset = value_of(
            "type: value\ntables: [\"*.*\"]\ncolumns: [value, name]\n",
            row(),
        )
        .expect("cols");
        assert_eq!(
            subset.as_deref(),
            Some(&br#"{"value":"30s","name":"timeout"}"#[..])
        );
        let text = value_of(
            "type: value\ntables: [\"*.*\"]\ntemplate: \"{name}={value}\"\n",
            row(),
        )
        .expect("tpl");
        assert_eq!(text.as_deref(), Some(&b"timeout=30s"[..]));
        let json = value_of("type: value\ntables: [\"*.*\"]\n", row()).expect("json");
        assert_eq!(json, None, "default keeps the JSON row for the sink");
    }

    #[test]
    fn errors() {
        assert!(value_of(
            "type: value\ntables: [\"*.*\"]\nraw: a\ntemplate: b\n",
            row()
        )
        .is_err());
        let err =
            value_of("type: value\ntables: [\"*.*\"]\nraw: nope\n", row()).expect_err("unknown");
        assert!(err.to_string().contains("`nope`"), "{err}");
        let unsent = vec![Value::Text("t".into()), Value::Unchanged, Value::Null];
        let err = value_of("type: value\ntables: [\"*.*\"]\nraw: value\n", unsent)
            .expect_err("unchanged");
        assert!(err.to_string().contains("REPLICA IDENTITY FULL"), "{err}");
    }
}
