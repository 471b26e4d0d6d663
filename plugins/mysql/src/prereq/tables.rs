//! The per-table verdicts of the selected tables: every kept text column's charset converts
//! exactly, and no selected table is the child of a foreign key whose cascades the binlog does
//! not log.

use super::*;

/// The per-table verdicts of the selected tables: every kept text column's charset converts
/// exactly ([`charset_verdicts`]), and no selected table is the child of a foreign key whose
/// cascaded changes the server does not log ([`cascade_verdicts`]). Only failures, plus one
/// passing line per kind when there is none.
pub async fn table_verdicts(conn: &mut Conn, config: &ValidMysql) -> Result<Vec<CheckResult>> {
    let columns: Vec<(String, String, String, String, String)> = conn
        .query(
            "SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME, c.CHARACTER_SET_NAME, \
             c.COLLATION_NAME FROM information_schema.COLUMNS c \
             JOIN information_schema.TABLES t \
               ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
             WHERE t.TABLE_TYPE = 'BASE TABLE' AND c.CHARACTER_SET_NAME IS NOT NULL \
             AND c.TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') \
             ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION",
        )
        .await
        .map_err(|e| MysqlError::driver("reading the charsets of the selected tables' columns", e))?;
    let keys: Vec<(String, String, String, String, String, String, String)> = conn
        .query(
            "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CONSTRAINT_NAME, UNIQUE_CONSTRAINT_SCHEMA, \
             REFERENCED_TABLE_NAME, UPDATE_RULE, DELETE_RULE \
             FROM information_schema.REFERENTIAL_CONSTRAINTS \
             ORDER BY CONSTRAINT_SCHEMA, TABLE_NAME, CONSTRAINT_NAME",
        )
        .await
        .map_err(|e| MysqlError::driver("reading the foreign keys of the selected tables", e))?;
    let columns: Vec<ColumnCharset> = columns
        .into_iter()
        .map(
            |(schema, table, column, charset, collation)| ColumnCharset {
                table: TableId::new(schema, table),
                column,
                charset,
                collation,
            },
        )
        .collect();
    let keys: Vec<ForeignKey> = keys
        .into_iter()
        .map(
            |(schema, table, name, parent_schema, parent, update_rule, delete_rule)| ForeignKey {
                child: TableId::new(schema, table),
                name,
                parent: TableId::new(parent_schema, parent),
                update_rule,
                delete_rule,
            },
        )
        .collect();
    let mut out = charset_verdicts(&columns, &config.tables);
    out.extend(cascade_verdicts(
        &keys,
        &config.tables,
        config.allow_unlogged_cascades,
    ));
    Ok(out)
}

/// A text column's charset as information_schema reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnCharset {
    pub table: TableId,
    pub column: String,
    pub charset: String,
    pub collation: String,
}

/// A foreign key: the child table it constrains and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    pub child: TableId,
    pub name: String,
    pub parent: TableId,
    pub update_rule: String,
    pub delete_rule: String,
}

/// One failed verdict per kept column of a selected table whose charset etcdsync cannot
/// convert exactly (never lossily); one pass otherwise.
pub fn charset_verdicts(columns: &[ColumnCharset], selection: &TableSelection) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let mut checked = 0;
    for c in columns {
        if !selection.matches(&c.table) || selection.column_excluded(&c.table, &c.column) {
            continue;
        }
        checked += 1;
        if Charset::from_name(&c.charset).is_supported() {
            continue;
        }
        let table = crate::statement::quote_table(&c.table);
        let column = crate::statement::quote_ident(&c.column);
        out.push(CheckResult::fail(
            format!("charset of {}.{}", c.table, c.column),
            format!(
                "column `{}` of {} is {} ({}), which etcdsync cannot convert to UTF-8 exactly, and it never converts lossily",
                c.column, c.table, c.charset, c.collation
            ),
            unsupported_fix(&table, &column),
        ));
    }
    if out.is_empty() {
        out.push(CheckResult::pass(
            "column charsets",
            format!("the {checked} text columns of the selected tables convert to UTF-8 exactly"),
        ));
    }
    out
}

/// The rules whose changes to child rows the server does not log as row events.
fn unlogged_rule(rule: &str) -> bool {
    matches!(
        rule.to_ascii_uppercase().as_str(),
        "CASCADE" | "SET NULL" | "SET DEFAULT"
    )
}

/// One verdict per foreign key of a selected child table with an `ON DELETE`/`ON UPDATE`
/// `CASCADE`/`SET NULL`/`SET DEFAULT` rule: failed, or passed with the loss spelled out when
/// `allow_unlogged_cascades` is set; one pass when there is none.
pub fn cascade_verdicts(
    keys: &[ForeignKey],
    selection: &TableSelection,
    allowed: bool,
) -> Vec<CheckResult> {
    let mut out = Vec::new();
    for key in keys {
        if !selection.matches(&key.child) {
            continue;
        }
        let mut rules = Vec::new();
        if unlogged_rule(&key.delete_rule) {
            rules.push(format!(
                "ON DELETE {}",
                key.delete_rule.to_ascii_uppercase()
            ));
        }
        if unlogged_rule(&key.update_rule) {
            rules.push(format!(
                "ON UPDATE {}",
                key.update_rule.to_ascii_uppercase()
            ));
        }
        if rules.is_empty() {
            continue;
        }
        let name = format!("foreign key {}.{}", key.child, key.name);
        let what = format!(
            "constraint `{}` on {} (schema `{}`, table `{}`, references {}) has {}: the server logs no row events for the rows of {} it changes",
            key.name,
            key.child,
            key.child.schema,
            key.child.table,
            key.parent,
            rules.join(", "),
            key.child
        );
        out.push(if allowed {
            CheckResult::pass(
                name,
                format!("{what}; allowed by source.allow_unlogged_cascades: true, so etcd keeps those rows' old values until a re-snapshot (lossy)"),
            )
        } else {
            CheckResult::fail(
                name,
                format!("{what}, so etcd would keep their old values"),
                format!(
                    "ALTER TABLE {child} DROP FOREIGN KEY {fk}, ADD CONSTRAINT {fk} FOREIGN KEY (…) REFERENCES {parent} (…) ON DELETE RESTRICT ON UPDATE RESTRICT \
                     and delete/update the child rows explicitly; or add \"{}\" to source.tables.exclude; or accept the loss with \
                     source.allow_unlogged_cascades: true (re-snapshot to repair)",
                    key.child,
                    child = crate::statement::quote_table(&key.child),
                    fk = crate::statement::quote_ident(&key.name),
                    parent = crate::statement::quote_table(&key.parent),
                ),
            )
        });
    }
    if out.is_empty() {
        out.push(CheckResult::pass(
            "foreign keys",
            "no selected table is the child of an ON DELETE/UPDATE CASCADE, SET NULL or SET DEFAULT foreign key",
        ));
    }
    out
}
