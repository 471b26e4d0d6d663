//! `filter`: keeps (or drops) rows by simple conditions on column values. An update that takes a
//! row out of the filter becomes a delete of its key, so etcd never keeps a row that left it.

use crate::scope::TableScope;
use etcdsync_core::change::{Op, TableSchema};
use etcdsync_core::registry::{PluginInfo, PluginKind};
use etcdsync_core::transform::{Transform, TransformConfig};
use etcdsync_core::{Change, Error, Result, Value};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// `type: filter`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Tables this applies to (`schema.table` globs).
    pub tables: TableScope,
    /// Conditions that must all hold for a row to match.
    pub when: Vec<Condition>,
    /// `keep` (default): matching rows are synced, others are not. `drop`: the opposite.
    #[serde(default)]
    pub action: Action,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Keep,
    Drop,
}

/// One condition: `{ column: status, op: eq, value: active }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub column: String,
    pub op: Comparison,
    /// The operand of eq, ne, lt, le, gt, ge.
    #[serde(default)]
    pub value: Option<serde_yaml::Value>,
    /// The operands of in, not_in.
    #[serde(default)]
    pub values: Vec<serde_yaml::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
    IsNull,
    NotNull,
}

inventory::submit! {
    PluginInfo {
        kind: PluginKind::Transform,
        name: "filter",
        summary: "keeps or drops rows by conditions on column values; rows leaving the filter are deleted",
        example: "type: filter\ntables: [\"public.settings\"]\nwhen:\n  - { column: enabled, op: eq, value: true }\naction: keep\n",
    }
}

#[typetag::serde(name = "filter")]
impl TransformConfig for FilterConfig {
    fn validate(&self) -> Result<()> {
        self.tables.validate("filter")?;
        if self.when.is_empty() {
            return Err(Error::config(
                "filter: `when` is empty; add at least one { column, op, value } condition",
            ));
        }
        for (i, condition) in self.when.iter().enumerate() {
            condition
                .operands()
                .map_err(|e| Error::config(format!("filter: when[{i}]: {e}")))?;
        }
        Ok(())
    }

    fn build(&self) -> Result<Box<dyn Transform>> {
        let conditions = self
            .when
            .iter()
            .map(|c| Ok((c.column.clone(), c.op, c.operands().map_err(Error::config)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(Filter {
            tables: self.tables.clone(),
            conditions,
            action: self.action,
        }))
    }
}

impl Condition {
    /// The operands as text, checked against the operator.
    fn operands(&self) -> Result<Vec<String>, String> {
        let text = |v: &serde_yaml::Value| match v {
            serde_yaml::Value::Bool(b) => Ok(b.to_string()),
            serde_yaml::Value::Number(n) => Ok(n.to_string()),
            serde_yaml::Value::String(s) => Ok(s.clone()),
            other => Err(format!(
                "operand {other:?} of column `{}` must be a string, number or boolean",
                self.column
            )),
        };
        match self.op {
            Comparison::IsNull | Comparison::NotNull => {
                if self.value.is_some() || !self.values.is_empty() {
                    return Err(format!(
                        "`{:?}` takes no value; remove `value`/`values`",
                        self.op
                    ));
                }
                Ok(Vec::new())
            }
            Comparison::In | Comparison::NotIn => {
                if self.values.is_empty() || self.value.is_some() {
                    return Err(format!("`{:?}` needs a `values: [...]` list", self.op));
                }
                self.values.iter().map(text).collect()
            }
            _ => match (&self.value, self.values.is_empty()) {
                (Some(v), true) => Ok(vec![text(v)?]),
                _ => Err(format!("`{:?}` needs exactly one `value`", self.op)),
            },
        }
    }
}

struct Filter {
    tables: TableScope,
    conditions: Vec<(String, Comparison, Vec<String>)>,
    action: Action,
}

impl Filter {
    /// Whether the row is synced. Errors when a condition's column is missing or unsent.
    fn passes(&self, schema: &TableSchema, row: &[Value]) -> Result<bool> {
        let mut all = true;
        for (column, op, operands) in &self.conditions {
            let value = schema
                .column_index(column)
                .and_then(|i| row.get(i))
                .ok_or_else(|| {
                    Error::config(format!(
                        "filter: table {} has no column `{column}`; fix `when` or `tables`",
                        schema.id
                    ))
                })?;
            if matches!(value, Value::Missing | Value::Unchanged) {
                return Err(Error::fatal(format!(
                    "filter: column `{column}` of {} (key {:?}) was not sent by the source, so the filter cannot be evaluated; \
                     set REPLICA IDENTITY FULL on the table or filter on another column",
                    schema.id,
                    schema.key_of(row)
                )));
            }
            if !evaluate(value, *op, operands) {
                all = false;
                break;
            }
        }
        Ok(all == (self.action == Action::Keep))
    }
}

fn evaluate(value: &Value, op: Comparison, operands: &[String]) -> bool {
    let text = value.to_text();
    let first = operands.first().map(String::as_str).unwrap_or("");
    match op {
        Comparison::IsNull => value.is_null(),
        Comparison::NotNull => !value.is_null(),
        _ if value.is_null() => false,
        Comparison::Eq => text == first,
        Comparison::Ne => text != first,
        Comparison::In => operands.contains(&text),
        Comparison::NotIn => !operands.contains(&text),
        Comparison::Lt => compare(&text, first) == Ordering::Less,
        Comparison::Le => compare(&text, first) != Ordering::Greater,
        Comparison::Gt => compare(&text, first) == Ordering::Greater,
        Comparison::Ge => compare(&text, first) != Ordering::Less,
    }
}

/// Numeric order when both sides are numbers, text order otherwise.
fn compare(a: &str, b: &str) -> Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        _ => a.cmp(b),
    }
}

impl Transform for Filter {
    fn apply(&mut self, change: Change, out: &mut Vec<Change>) -> Result<()> {
        if !self.tables.matches(&change.table.id) {
            out.push(change);
            return Ok(());
        }
        let Change {
            table,
            op,
            route,
            seq,
        } = change;
        let op = match op {
            Op::Insert { row } => match self.passes(&table, &row)? {
                true => Op::Insert { row },
                false => return Ok(()),
            },
            Op::Update { old, row } => match self.passes(&table, &row)? {
                true => Op::Update { old, row },
                false => Op::Delete {
                    old: old.unwrap_or(row),
                },
            },
            other => other,
        };
        out.push(Change {
            table,
            op,
            route,
            seq,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdsync_core::change::{Column, TableId};
    use std::sync::Arc;

    fn settings() -> Arc<TableSchema> {
        Arc::new(TableSchema::new(
            TableId::new("public", "settings"),
            vec![
                Column::new("id", "int"),
                Column::new("enabled", "bool"),
                Column::new("weight", "int"),
            ],
            vec![0],
        ))
    }

    fn filter(yaml: &str) -> Box<dyn Transform> {
        let config: Box<dyn TransformConfig> = serde_yaml::from_str(yaml).expect("yaml");
        config.validate().expect("valid");
        config.build().expect("build")
    }

    fn apply(t: &mut Box<dyn Transform>, change: Change) -> Vec<Change> {
        let mut out = Vec::new();
        t.apply(change, &mut out).expect("apply");
        out
    }

    fn row(id: i64, enabled: bool, weight: i64) -> Vec<Value> {
        vec![Value::Int(id), Value::Bool(enabled), Value::Int(weight)]
    }

    const ENABLED: &str = "type: filter\ntables: [\"public.*\"]\nwhen: [{ column: enabled, op: eq, value: true }, { column: weight, op: ge, value: 10 }]\n";

    #[test]
    fn inserts_kept_or_dropped() {
        let mut t = filter(ENABLED);
        assert_eq!(
            apply(&mut t, Change::insert(settings(), row(1, true, 10))).len(),
            1
        );
        assert!(apply(&mut t, Change::insert(settings(), row(2, false, 10))).is_empty());
        assert!(apply(&mut t, Change::insert(settings(), row(3, true, 9))).is_empty());
    }

    #[test]
    fn update_leaving_the_filter_becomes_delete() {
        let mut t = filter(ENABLED);
        let out = apply(&mut t, Change::update(settings(), None, row(1, false, 10)));
        assert_eq!(
            out[0].op,
            Op::Delete {
                old: row(1, false, 10)
            }
        );
        let out = apply(&mut t, Change::update(settings(), None, row(1, true, 11)));
        assert!(matches!(out[0].op, Op::Update { .. }));
    }

    #[test]
    fn drop_action_inverts_and_in_lists_work() {
        let mut t = filter("type: filter\ntables: [\"*.*\"]\nwhen: [{ column: id, op: in, values: [1, 2] }]\naction: drop\n");
        assert!(apply(&mut t, Change::insert(settings(), row(2, true, 0))).is_empty());
        assert_eq!(
            apply(&mut t, Change::insert(settings(), row(3, true, 0))).len(),
            1
        );
    }

    #[test]
    fn bad_conditions_are_config_errors() {
        for yaml in [
            "type: filter\ntables: [\"*.*\"]\nwhen: [{ column: id, op: in, value: 1 }]\n",
            "type: filter\ntables: [\"*.*\"]\nwhen: [{ column: id, op: is_null, value: 1 }]\n",
            "type: filter\ntables: [\"*.*\"]\nwhen: []\n",
        ] {
            let config: Box<dyn TransformConfig> = serde_yaml::from_str(yaml).expect("yaml");
            assert!(config.validate().is_err(), "{yaml}");
        }
    }

    #[test]
    fn unsent_column_is_an_error_not_a_guess() {
        let mut t = filter(ENABLED);
        let mut out = Vec::new();
        let change = Change::update(
            settings(),
            None,
            vec![Value::Int(1), Value::Unchanged, Value::Int(10)],
        );
        let err = t.apply(change, &mut out).expect_err("unchanged");
        assert!(err.to_string().contains("REPLICA IDENTITY FULL"), "{err}");
    }
}
