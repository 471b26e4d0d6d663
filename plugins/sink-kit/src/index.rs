//! The key index of tables whose keys come from a transform (`Route::tracked`, DESIGN §2):
//! `{meta}/index/{schema}/{table}/{pk…}` holds the row's data key (relative to the data prefix),
//! `{meta}/owner/{data key}` the row that owns it (its row id, which names the table and the key
//! components: [`parse_row_id`]). Written in the same store transactions as the data.

use crate::KitError;
use etcdsync_core::encode::key::{row_key, table_prefix, unescape_component};
use etcdsync_core::{TableId, TableSchema, Value};

/// Names the index keys of one sink.
#[derive(Debug, Clone)]
pub struct KeyIndex {
    data_prefix: String,
    /// `{meta}/index`
    entries: String,
    /// `{meta}/owner/`
    owners: String,
}

impl KeyIndex {
    /// `data_prefix` and `meta_prefix` end with `/`.
    pub fn new(data_prefix: &str, meta_prefix: &str) -> Self {
        Self {
            data_prefix: data_prefix.to_string(),
            entries: format!("{meta_prefix}index"),
            owners: format!("{meta_prefix}owner/"),
        }
    }

    /// `{schema}/{table}/{pk1}[/{pk2}…]`: names a row in index values and messages.
    pub fn row_id(&self, table: &TableSchema, row: &[Value]) -> Result<String, KitError> {
        if table.key.is_empty() {
            return Err(KitError::Protocol(format!(
                "table {} has no key columns",
                table.id
            )));
        }
        if let Some(i) = table.key.iter().copied().find(
            |&i| !matches!(row.get(i), Some(v) if !matches!(v, Value::Missing | Value::Unchanged)),
        ) {
            let column = table.columns.get(i).map(|c| c.name.as_str()).unwrap_or("?");
            return Err(KitError::Protocol(format!(
                "a change of {} lacks the value of key column {column}",
                table.id
            )));
        }
        let key = row_key("", &table.id, table.key_values(row));
        Ok(key.trim_start_matches('/').to_string())
    }

    /// `{meta}/index/{row id}`: holds the row's data key.
    pub fn entry_key(&self, row_id: &str) -> String {
        format!("{}/{row_id}", self.entries)
    }

    /// `{meta}/index/{schema}/{table}/`: every entry of a table.
    pub fn table_entries(&self, table: &TableId) -> String {
        table_prefix(&self.entries, table)
    }

    /// The row id of an entry key.
    pub fn row_id_of_entry<'a>(&self, entry_key: &'a str) -> Option<&'a str> {
        entry_key
            .strip_prefix(self.entries.as_str())?
            .strip_prefix('/')
    }

    /// `{meta}/owner/{relative data key}`: holds the id of the row that owns the key.
    pub fn owner_key(&self, data_key: &str) -> String {
        format!("{}{}", self.owners, self.relative(data_key))
    }

    /// `{meta}/owner/`: every owner entry starts with this, followed by the relative data key.
    pub fn owner_prefix(&self) -> &str {
        &self.owners
    }

    /// A data key without the data prefix.
    pub fn relative<'a>(&self, data_key: &'a str) -> &'a str {
        data_key
            .strip_prefix(self.data_prefix.as_str())
            .unwrap_or(data_key)
    }

    /// The data key of a relative key stored in an entry.
    pub fn absolute(&self, relative: &str) -> String {
        format!("{}{relative}", self.data_prefix)
    }
}

/// The table and unescaped key components a row id (`{schema}/{table}/{pk1}[/{pk2}…]`, as
/// [`KeyIndex::row_id`] writes it) names; also parses a default-layout data key relative to the
/// data prefix, which has the same shape. `None` unless there are a schema, a table and at least
/// one key component, each a valid escaped component.
pub fn parse_row_id(row_id: &str) -> Option<(TableId, Vec<String>)> {
    let mut parts = row_id.split('/');
    let schema = unescape_component(parts.next()?)?;
    let table = unescape_component(parts.next()?)?;
    let key = parts
        .map(unescape_component)
        .collect::<Option<Vec<String>>>()?;
    if schema.is_empty() || table.is_empty() || key.is_empty() {
        return None;
    }
    Some((TableId::new(schema, table), key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdsync_core::change::Column;

    #[test]
    fn names() {
        let index = KeyIndex::new("/etcdsync/", "/etcdsync-meta/demo/");
        let table = TableSchema::new(
            TableId::new("public", "settings"),
            vec![
                Column::new("service", "text"),
                Column::new("name", "text"),
                Column::new("value", "text"),
            ],
            vec![0, 1],
        );
        let row = vec![
            Value::Text("bill/ing".into()),
            Value::Text("x".into()),
            Value::Null,
        ];
        let id = index.row_id(&table, &row).expect("id");
        assert_eq!(id, "public/settings/bill%2Fing/x");
        assert_eq!(
            index.entry_key(&id),
            "/etcdsync-meta/demo/index/public/settings/bill%2Fing/x"
        );
        assert_eq!(
            index.table_entries(&table.id),
            "/etcdsync-meta/demo/index/public/settings/"
        );
        assert_eq!(
            index.row_id_of_entry(&index.entry_key(&id)),
            Some(id.as_str())
        );
        assert_eq!(
            index.owner_key("/etcdsync/billing/timeout"),
            "/etcdsync-meta/demo/owner/billing/timeout"
        );
        assert_eq!(
            index.absolute(index.relative("/etcdsync/a/b")),
            "/etcdsync/a/b"
        );
        let missing = vec![Value::Text("a".into()), Value::Missing, Value::Null];
        assert!(index.row_id(&table, &missing).is_err());
        assert_eq!(index.owner_prefix(), "/etcdsync-meta/demo/owner/");
    }

    #[test]
    fn row_ids_parse_back() {
        assert_eq!(
            parse_row_id("public/settings/bill%2Fing/x"),
            Some((
                TableId::new("public", "settings"),
                vec!["bill/ing".to_string(), "x".to_string()]
            ))
        );
        assert_eq!(
            parse_row_id("my%2Fdb/t/%C3%A9/"),
            Some((
                TableId::new("my/db", "t"),
                vec!["é".to_string(), String::new()]
            ))
        );
        for bad in [
            "",
            "public",
            "public/t",
            "/t/1",
            "public//1",
            "public/t/%zz",
        ] {
            assert_eq!(parse_row_id(bad), None, "{bad}");
        }
    }
}
