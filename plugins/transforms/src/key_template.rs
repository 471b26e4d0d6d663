//! `key_template`: a row's etcd key from a template over its columns (`{service}/{name}` →
//! `{prefix}/billing/timeout`), values escaped per DESIGN §2. Routes are marked tracked, so the
//! sink keeps a key index for deletes by primary key, truncates and snapshot clean-up.

use crate::scope::TableScope;
use crate::template::{Part, Template};
use etcdsync_core::change::{Op, Route, TableId, TableSchema};
use etcdsync_core::encode::key::{component, escape_component};
use etcdsync_core::registry::{PluginInfo, PluginKind};
use etcdsync_core::transform::{Transform, TransformConfig};
use etcdsync_core::{Change, Error, Result, Value};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// `type: key_template`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyTemplateConfig {
    /// Tables this applies to (`schema.table` globs).
    pub tables: TableScope,
    /// The key below the sink's `prefix`: `{column}`, `{schema}`, `{table}` placeholders, literal
    /// text, `{{`/`}}` for braces. Must not start with `/`.
    pub template: String,
}

inventory::submit! {
    PluginInfo {
        kind: PluginKind::Transform,
        name: "key_template",
        summary: "builds each row's key from a template over its columns, e.g. {service}/{name}",
        example: "type: key_template\ntables: [\"public.settings\"]\ntemplate: \"{service}/{name}\"\n",
    }
}

impl KeyTemplateConfig {
    fn parse(&self) -> Result<Template> {
        let template = Template::parse(&self.template)
            .map_err(|e| Error::config(format!("key_template: template: {e}")))?;
        if self.template.starts_with('/')
            || self.template.ends_with('/')
            || self.template.contains("//")
        {
            return Err(Error::config(format!(
                "key_template: template `{}` must be a relative path without empty components (the sink's `prefix` and a `/` are put in front), e.g. \"{{service}}/{{name}}\"",
                self.template
            )));
        }
        if template.columns().next().is_none() {
            return Err(Error::config(format!(
                "key_template: template `{}` names no column, so every row would get the same key; add the key columns, e.g. \"{{id}}\"",
                self.template
            )));
        }
        Ok(template)
    }
}

#[typetag::serde(name = "key_template")]
impl TransformConfig for KeyTemplateConfig {
    fn validate(&self) -> Result<()> {
        self.tables.validate("key_template")?;
        self.parse().map(|_| ())
    }

    fn build(&self) -> Result<Box<dyn Transform>> {
        Ok(Box::new(KeyTemplate {
            tables: self.tables.clone(),
            template: self.parse()?,
            checked: HashMap::new(),
        }))
    }
}

struct KeyTemplate {
    tables: TableScope,
    template: Template,
    /// Schema versions already checked against the template.
    checked: HashMap<TableId, Arc<TableSchema>>,
}

impl KeyTemplate {
    fn check(&mut self, schema: &Arc<TableSchema>) -> Result<()> {
        if self
            .checked
            .get(&schema.id)
            .is_some_and(|seen| Arc::ptr_eq(seen, schema))
        {
            return Ok(());
        }
        self.template
            .check_columns(schema)
            .map_err(|e| e.context("key_template"))?;
        if !covers_key(&self.template, schema) {
            tracing::warn!(
                table = %schema.id,
                template = %self.template.text,
                "key template does not hold every key column as a whole path component, so two rows may map to the same key; \
                 a collision stops the pipeline naming both rows"
            );
        }
        self.checked.insert(schema.id.clone(), schema.clone());
        Ok(())
    }

    fn key(&self, schema: &TableSchema, row: &[Value]) -> Option<String> {
        self.template
            .render(schema, row, &component, &escape_component)
    }
}

/// True when every key column appears as a whole `/`-separated component, which makes the
/// template injective on the key (components are escaped, so they cannot contain `/`).
fn covers_key(template: &Template, schema: &TableSchema) -> bool {
    let whole: Vec<&str> = template
        .parts
        .iter()
        .enumerate()
        .filter_map(|(i, part)| {
            let Part::Column(name) = part else { return None };
            let before = i == 0 || matches!(&template.parts[i - 1], Part::Literal(l) if l.ends_with('/'));
            let after = template.parts.get(i + 1).is_none()
                || matches!(template.parts.get(i + 1), Some(Part::Literal(l)) if l.starts_with('/'));
            (before && after).then_some(name.as_str())
        })
        .collect();
    schema.key.iter().all(|&k| {
        schema
            .columns
            .get(k)
            .is_some_and(|c| whole.contains(&c.name.as_str()))
    })
}

impl Transform for KeyTemplate {
    fn apply(&mut self, change: Change, out: &mut Vec<Change>) -> Result<()> {
        if !self.tables.matches(&change.table.id) {
            out.push(change);
            return Ok(());
        }
        self.check(&change.table)?;
        let schema = change.table.clone();
        let missing = |row: &[Value]| {
            Error::fatal(format!(
                "key_template: a column of `{}` was not sent by the source for {} (key {:?}); set REPLICA IDENTITY FULL on the table",
                self.template.text,
                schema.id,
                schema.key_of(row)
            ))
        };
        let mut route = Route {
            tracked: true,
            ..change.route
        };
        match &change.op {
            Op::Insert { row } => {
                route.key = Some(self.key(&schema, row).ok_or_else(|| missing(row))?)
            }
            Op::Update { old, row } => {
                let key = self.key(&schema, row).ok_or_else(|| missing(row))?;
                route.old_key = old
                    .as_ref()
                    .and_then(|o| self.key(&schema, o))
                    .filter(|k| *k != key);
                route.key = Some(key);
            }
            Op::Delete { old } => route.old_key = self.key(&schema, old),
            Op::Truncate => {}
        }
        out.push(Change {
            table: change.table,
            op: change.op,
            route,
            seq: change.seq,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdsync_core::change::Column;

    fn settings() -> Arc<TableSchema> {
        Arc::new(TableSchema::new(
            TableId::new("public", "settings"),
            vec![
                Column::new("service", "text"),
                Column::new("name", "text"),
                Column::new("value", "text"),
            ],
            vec![0, 1],
        ))
    }

    fn transform(template: &str) -> Box<dyn Transform> {
        let config = KeyTemplateConfig {
            tables: TableScope::of(&["public.settings"]),
            template: template.into(),
        };
        config.validate().expect("valid");
        config.build().expect("build")
    }

    fn row(service: &str, name: &str) -> Vec<Value> {
        vec![
            Value::Text(service.into()),
            Value::Text(name.into()),
            Value::Text("v".into()),
        ]
    }

    fn apply(t: &mut Box<dyn Transform>, change: Change) -> Result<Change> {
        let mut out = Vec::new();
        t.apply(change, &mut out)?;
        Ok(out.remove(0))
    }

    #[test]
    fn renders_escaped_keys_and_marks_tracked() {
        let mut t = transform("{service}/{name}");
        let out = apply(
            &mut t,
            Change::insert(settings(), row("bill/ing", "time out")),
        )
        .expect("apply");
        assert_eq!(out.route.key.as_deref(), Some("bill%2Fing/time out"));
        assert!(out.route.tracked);
    }

    #[test]
    fn update_moving_the_key_names_the_old_key() {
        let mut t = transform("{service}/{name}");
        let out = apply(
            &mut t,
            Change::update(settings(), Some(row("a", "x")), row("b", "x")),
        )
        .expect("apply");
        assert_eq!(out.route.key.as_deref(), Some("b/x"));
        assert_eq!(out.route.old_key.as_deref(), Some("a/x"));
        let same = apply(
            &mut t,
            Change::update(settings(), Some(row("a", "x")), row("a", "x")),
        )
        .expect("apply");
        assert_eq!(same.route.old_key, None);
    }

    #[test]
    fn delete_with_only_the_primary_key_still_renders() {
        let mut t = transform("{service}/{name}");
        let old = vec![
            Value::Text("a".into()),
            Value::Text("x".into()),
            Value::Missing,
        ];
        let out = apply(&mut t, Change::delete(settings(), old)).expect("apply");
        assert_eq!(out.route.old_key.as_deref(), Some("a/x"));
        let mut t = transform("{value}");
        let old = vec![
            Value::Text("a".into()),
            Value::Text("x".into()),
            Value::Missing,
        ];
        let out = apply(&mut t, Change::delete(settings(), old)).expect("apply");
        assert_eq!(out.route.old_key, None, "left to the sink's key index");
        assert!(out.route.tracked);
    }

    #[test]
    fn invalid_templates_and_unknown_columns_are_errors() {
        for bad in [
            "/config/{name}",
            "{name}/",
            "a//{name}",
            "static",
            "{unclosed",
        ] {
            let config = KeyTemplateConfig {
                tables: TableScope::of(&["*.*"]),
                template: bad.into(),
            };
            assert!(config.validate().is_err(), "{bad}");
        }
        let mut t = transform("{nope}/{name}");
        let err =
            apply(&mut t, Change::insert(settings(), row("a", "b"))).expect_err("unknown column");
        assert!(err.to_string().contains("`nope`"), "{err}");
    }

    #[test]
    fn key_coverage() {
        let schema = settings();
        assert!(covers_key(
            &Template::parse("{service}/{name}").expect("t"),
            &schema
        ));
        assert!(covers_key(
            &Template::parse("x/{service}/{name}/y").expect("t"),
            &schema
        ));
        assert!(!covers_key(
            &Template::parse("{service}-{name}").expect("t"),
            &schema
        ));
        assert!(!covers_key(
            &Template::parse("{service}").expect("t"),
            &schema
        ));
    }
}
