//! `rename_columns` and `drop_columns`: reshape a table's columns (e.g. keep secrets out of etcd).
//! Key columns may be renamed but not dropped.

use crate::schema_cache::{project, Derived, SchemaCache};
use crate::scope::TableScope;
use etcdsync_core::change::{Column, Op, TableSchema};
use etcdsync_core::registry::{PluginInfo, PluginKind};
use etcdsync_core::transform::{Transform, TransformConfig};
use etcdsync_core::{Change, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// `type: rename_columns` — renames columns in keys, values and templates downstream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameColumnsConfig {
    /// Tables this applies to (`schema.table` globs).
    pub tables: TableScope,
    /// Old name → new name.
    pub columns: BTreeMap<String, String>,
}

/// `type: drop_columns` — removes columns so they never reach etcd.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropColumnsConfig {
    /// Tables this applies to (`schema.table` globs).
    pub tables: TableScope,
    /// Column names to remove.
    pub columns: Vec<String>,
}

inventory::submit! {
    PluginInfo {
        kind: PluginKind::Transform,
        name: "rename_columns",
        summary: "renames columns (in the JSON value and for later transforms)",
        example: "type: rename_columns\ntables: [\"public.users\"]\ncolumns: { user_name: name }\n",
    }
}

inventory::submit! {
    PluginInfo {
        kind: PluginKind::Transform,
        name: "drop_columns",
        summary: "removes columns (e.g. secrets) so they never reach etcd",
        example: "type: drop_columns\ntables: [\"*.*\"]\ncolumns: [password, api_token]\n",
    }
}

#[typetag::serde(name = "rename_columns")]
impl TransformConfig for RenameColumnsConfig {
    fn validate(&self) -> Result<()> {
        self.tables.validate("rename_columns")?;
        if self.columns.is_empty() {
            return Err(Error::config(
                "rename_columns: `columns` is empty; map old names to new ones: { old: new }",
            ));
        }
        let mut targets: Vec<&String> = self.columns.values().collect();
        targets.sort();
        if let Some(pair) = targets.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::config(format!(
                "rename_columns: two columns are renamed to `{}`; give each a distinct name",
                pair[0]
            )));
        }
        Ok(())
    }

    fn build(&self) -> Result<Box<dyn Transform>> {
        let renames = self.columns.clone();
        Ok(Box::new(Reshape {
            tables: self.tables.clone(),
            cache: SchemaCache::default(),
            derive: Box::new(move |schema| rename(schema, &renames)),
        }))
    }
}

#[typetag::serde(name = "drop_columns")]
impl TransformConfig for DropColumnsConfig {
    fn validate(&self) -> Result<()> {
        self.tables.validate("drop_columns")?;
        if self.columns.is_empty() {
            return Err(Error::config(
                "drop_columns: `columns` is empty; list the columns to remove",
            ));
        }
        Ok(())
    }

    fn build(&self) -> Result<Box<dyn Transform>> {
        let dropped = self.columns.clone();
        Ok(Box::new(Reshape {
            tables: self.tables.clone(),
            cache: SchemaCache::default(),
            derive: Box::new(move |schema| drop(schema, &dropped)),
        }))
    }
}

type Derive = Box<dyn Fn(&TableSchema) -> Result<Derived> + Send>;

/// Applies a derived schema (renamed or fewer columns) to every row of the scoped tables.
struct Reshape {
    tables: TableScope,
    cache: SchemaCache,
    derive: Derive,
}

impl Transform for Reshape {
    fn apply(&mut self, change: Change, out: &mut Vec<Change>) -> Result<()> {
        if !self.tables.matches(&change.table.id) {
            out.push(change);
            return Ok(());
        }
        let derived = self.cache.get(&change.table, &self.derive)?;
        let sources = &derived.sources;
        let op = match change.op {
            Op::Insert { row } => Op::Insert {
                row: project(&row, sources),
            },
            Op::Update { old, row } => Op::Update {
                old: old.map(|o| project(&o, sources)),
                row: project(&row, sources),
            },
            Op::Delete { old } => Op::Delete {
                old: project(&old, sources),
            },
            Op::Truncate => Op::Truncate,
        };
        out.push(Change {
            table: derived.schema.clone(),
            op,
            route: change.route,
            seq: change.seq,
        });
        Ok(())
    }
}

fn rename(schema: &TableSchema, renames: &BTreeMap<String, String>) -> Result<Derived> {
    let columns: Vec<Column> = schema
        .columns
        .iter()
        .map(|c| {
            Column::new(
                renames.get(&c.name).unwrap_or(&c.name).clone(),
                c.type_name.clone(),
            )
        })
        .collect();
    for (i, column) in columns.iter().enumerate() {
        if columns[..i].iter().any(|c| c.name == column.name) {
            return Err(Error::config(format!(
                "rename_columns: table {} would have two columns named `{}`; rename to a name the table does not use",
                schema.id, column.name
            )));
        }
    }
    Ok(Derived {
        schema: Arc::new(TableSchema::new(
            schema.id.clone(),
            columns,
            schema.key.clone(),
        )),
        sources: (0..schema.columns.len()).collect(),
    })
}

fn drop(schema: &TableSchema, dropped: &[String]) -> Result<Derived> {
    for &k in &schema.key {
        if let Some(column) = schema.columns.get(k).filter(|c| dropped.contains(&c.name)) {
            return Err(Error::config(format!(
                "drop_columns: `{}` is a key column of {} and cannot be dropped; keep it, or remove {} from this transform's `tables`",
                column.name, schema.id, schema.id
            )));
        }
    }
    let sources: Vec<usize> = (0..schema.columns.len())
        .filter(|&i| !dropped.contains(&schema.columns[i].name))
        .collect();
    let columns = sources.iter().map(|&i| schema.columns[i].clone()).collect();
    let key = schema
        .key
        .iter()
        .filter_map(|k| sources.iter().position(|s| s == k))
        .collect();
    Ok(Derived {
        schema: Arc::new(TableSchema::new(schema.id.clone(), columns, key)),
        sources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdsync_core::change::TableId;
    use etcdsync_core::Value;

    fn users() -> Arc<TableSchema> {
        Arc::new(TableSchema::new(
            TableId::new("public", "users"),
            vec![
                Column::new("name", "text"),
                Column::new("password", "text"),
                Column::new("id", "int"),
            ],
            vec![2],
        ))
    }

    fn run(config: &dyn TransformConfig, change: Change) -> Result<Vec<Change>> {
        let mut transform = config.build()?;
        let mut out = Vec::new();
        transform.apply(change, &mut out)?;
        Ok(out)
    }

    #[test]
    fn drop_removes_column_and_keeps_key() {
        let config = DropColumnsConfig {
            tables: TableScope::of(&["public.*"]),
            columns: vec!["password".into()],
        };
        let row = vec![
            Value::Text("ann".into()),
            Value::Text("hunter2".into()),
            Value::Int(1),
        ];
        let out = run(&config, Change::insert(users(), row)).expect("apply");
        let Op::Insert { row } = &out[0].op else {
            panic!("insert expected")
        };
        assert_eq!(row, &vec![Value::Text("ann".into()), Value::Int(1)]);
        assert_eq!(out[0].table.columns.len(), 2);
        assert_eq!(out[0].table.key_of(row), vec![Value::Int(1)]);
    }

    #[test]
    fn dropping_a_key_column_is_an_error() {
        let config = DropColumnsConfig {
            tables: TableScope::of(&["public.*"]),
            columns: vec!["id".into()],
        };
        let err = run(&config, Change::truncate(users())).expect_err("key column");
        assert!(
            err.to_string()
                .contains("`id` is a key column of public.users"),
            "{err}"
        );
    }

    #[test]
    fn out_of_scope_tables_pass_unchanged() {
        let config = DropColumnsConfig {
            tables: TableScope::of(&["other.*"]),
            columns: vec!["password".into()],
        };
        let change = Change::truncate(users());
        assert_eq!(run(&config, change.clone()).expect("apply"), vec![change]);
    }

    #[test]
    fn rename_changes_names_only_and_rejects_clashes() {
        let config = RenameColumnsConfig {
            tables: TableScope::of(&["public.users"]),
            columns: BTreeMap::from([("name".to_string(), "login".to_string())]),
        };
        let out = run(&config, Change::truncate(users())).expect("apply");
        assert_eq!(out[0].table.columns[0].name, "login");
        let clash = RenameColumnsConfig {
            tables: TableScope::of(&["public.users"]),
            columns: BTreeMap::from([("name".to_string(), "id".to_string())]),
        };
        assert!(run(&clash, Change::truncate(users())).is_err());
    }
}
