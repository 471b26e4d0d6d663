//! TABLE_MAP events → [`TableInfo`] (column names, key, kinds from `binlog_row_metadata=FULL`,
//! no schema cache: every TABLE_MAP carries the table's current shape, so ALTER TABLE needs no
//! special handling; only MariaDB's JSON/INET/UUID columns take a hint from `columns`), and row
//! images → core rows through `decode`.

use crate::columns::ColumnHints;
use crate::decode::{binlog_value, with_hint, Charset, Kind};
use etcdsync_core::change::Column;
use etcdsync_core::tables::TableSelection;
use etcdsync_core::{TableId, TableSchema, Value};
use mysql_common::binlog::events::{OptionalMetadataField, TableMapEvent};
use mysql_common::binlog::value::BinlogValue;
use mysql_common::constants::ColumnType;
use mysql_common::io::ParseBuf;
use std::sync::Arc;

/// A synced table as one TABLE_MAP event describes it.
#[derive(Debug)]
pub struct TableInfo {
    /// Kept columns only (excluded columns removed), key in index order.
    pub schema: Arc<TableSchema>,
    /// Per binlog column: its type, metadata and signedness, for reading row images.
    pub columns: Vec<BinlogColumn>,
    /// Binlog column indices that make up `schema.columns`, in order.
    pub keep: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct BinlogColumn {
    pub column_type: ColumnType,
    pub meta: Vec<u8>,
    pub unsigned: bool,
    pub kind: Kind,
}

/// What a TABLE_MAP event means for this source.
#[derive(Debug)]
pub enum Mapped {
    /// The table is synced; its row events become changes.
    Synced(Arc<TableInfo>),
    /// Not selected (or not usable, with the reason already logged).
    Ignored,
}

/// A TABLE_MAP event that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TableMapError {
    #[error("the TABLE_MAP event of {table} has no column names: set binlog_row_metadata=FULL on the server (SET GLOBAL binlog_row_metadata=FULL and in my.cnf) — events written before the change cannot be decoded; re-snapshot after changing it")]
    NoColumnNames { table: TableId },
    #[error("the TABLE_MAP event of {table} is malformed: {message}")]
    Malformed { table: TableId, message: String },
    #[error("{}", key_column_excluded(table, column))]
    KeyExcluded { table: TableId, column: String },
}

/// The error for `exclude_columns` naming a primary-key column (snapshot and binlog alike).
pub fn key_column_excluded(table: &TableId, column: &str) -> String {
    format!(
        "at `source.tables.exclude_columns`: it removes primary-key column `{column}` of {table}, \
         but key columns make the etcd key; remove `{column}` from the list (or exclude the table)"
    )
}

/// True for the column types the server gives a signedness bit. MariaDB 10.11 counts YEAR too
/// (verified: a table (INT, YEAR, BIGINT UNSIGNED) gets bits [0, 1, 1]); mysql_common agrees.
fn has_signedness(ty: ColumnType) -> bool {
    ty.is_numeric_type()
}

/// The column names a TABLE_MAP event carries (`binlog_row_metadata=FULL`), for the caller's
/// per-table caches.
pub fn column_names(tme: &TableMapEvent<'_>) -> Result<Vec<String>, TableMapError> {
    let id = TableId::new(tme.database_name(), tme.table_name());
    let mut names = Vec::new();
    for field in tme.iter_optional_meta() {
        let field = field.map_err(|e| TableMapError::Malformed {
            table: id.clone(),
            message: format!("optional metadata: {e}"),
        })?;
        if let OptionalMetadataField::ColumnName(n) = field {
            for name in n.iter_names() {
                let name = name.map_err(|e| TableMapError::Malformed {
                    table: id.clone(),
                    message: e.to_string(),
                })?;
                names.push(name.name().into_owned());
            }
        }
    }
    Ok(names)
}

/// Builds the table's description from a TABLE_MAP event, or `Ignored` when the selection
/// leaves it out or it has no primary key (logged once per event by the caller). `hints`
/// refine columns the event cannot describe (MariaDB JSON, INET4/6, UUID; see `columns`).
pub fn map_table(
    tme: &TableMapEvent<'_>,
    selection: &TableSelection,
    hints: &ColumnHints,
) -> Result<Mapped, TableMapError> {
    let id = TableId::new(tme.database_name(), tme.table_name());
    if !selection.matches(&id) {
        return Ok(Mapped::Ignored);
    }
    let malformed = |message: String| TableMapError::Malformed {
        table: id.clone(),
        message,
    };
    let count = usize::try_from(tme.columns_count()).map_err(|e| malformed(e.to_string()))?;

    let mut signedness: Vec<bool> = Vec::new();
    let mut charsets: Vec<u16> = Vec::new();
    let mut enum_set_charsets: Vec<u16> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut enums: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut sets: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut key: Vec<usize> = Vec::new();
    let mut default_charset: Option<(u16, Vec<(usize, u16)>)> = None;
    let mut enum_set_default: Option<(u16, Vec<(usize, u16)>)> = None;

    for field in tme.iter_optional_meta() {
        let field = field.map_err(|e| malformed(format!("optional metadata: {e}")))?;
        match field {
            OptionalMetadataField::Signedness(bits) => {
                signedness = bits.iter().map(|b| *b).collect();
            }
            OptionalMetadataField::DefaultCharset(d) => {
                let mut non_default = Vec::new();
                for item in d.iter_non_default() {
                    let item = item.map_err(|e| malformed(e.to_string()))?;
                    non_default.push((item.column_index() as usize, item.charset()));
                }
                default_charset = Some((d.default_charset(), non_default));
            }
            OptionalMetadataField::ColumnCharset(c) => {
                for item in c.iter_charsets() {
                    charsets.push(item.map_err(|e| malformed(e.to_string()))?);
                }
            }
            OptionalMetadataField::EnumAndSetDefaultCharset(d) => {
                let mut non_default = Vec::new();
                for item in d.iter_non_default() {
                    let item = item.map_err(|e| malformed(e.to_string()))?;
                    non_default.push((item.column_index() as usize, item.charset()));
                }
                enum_set_default = Some((d.default_charset(), non_default));
            }
            OptionalMetadataField::EnumAndSetColumnCharset(c) => {
                for item in c.iter_charsets() {
                    enum_set_charsets.push(item.map_err(|e| malformed(e.to_string()))?);
                }
            }
            OptionalMetadataField::ColumnName(n) => {
                for name in n.iter_names() {
                    let name = name.map_err(|e| malformed(e.to_string()))?;
                    names.push(name.name().into_owned());
                }
            }
            OptionalMetadataField::EnumStrValue(v) => {
                for values in v.iter_values() {
                    let values = values.map_err(|e| malformed(e.to_string()))?;
                    enums.push(
                        values
                            .values()
                            .iter()
                            .map(|s| s.value_raw().to_vec())
                            .collect(),
                    );
                }
            }
            OptionalMetadataField::SetStrValue(v) => {
                for values in v.iter_values() {
                    let values = values.map_err(|e| malformed(e.to_string()))?;
                    sets.push(
                        values
                            .values()
                            .iter()
                            .map(|s| s.value_raw().to_vec())
                            .collect(),
                    );
                }
            }
            OptionalMetadataField::SimplePrimaryKey(pk) => {
                for index in pk.iter_indexes() {
                    key.push(index.map_err(|e| malformed(e.to_string()))? as usize);
                }
            }
            OptionalMetadataField::PrimaryKeyWithPrefix(pk) => {
                for k in pk.iter_keys() {
                    key.push(k.map_err(|e| malformed(e.to_string()))?.column_index() as usize);
                }
            }
            _ => {}
        }
    }
    if names.len() != count {
        return Err(TableMapError::NoColumnNames { table: id });
    }

    let mut columns = Vec::with_capacity(count);
    let (mut numeric_i, mut char_i, mut enum_set_i, mut enum_i, mut set_i) = (0, 0, 0, 0, 0);
    for i in 0..count {
        let column_type = match tme.get_column_type(i) {
            Ok(Some(t)) => t,
            Ok(None) => return Err(malformed(format!("column {i} has no type"))),
            Err(e) => return Err(malformed(format!("column {i}: {e}"))),
        };
        let meta = tme.get_column_metadata(i).unwrap_or(&[]).to_vec();
        let unsigned = if has_signedness(column_type) {
            numeric_i += 1;
            signedness.get(numeric_i - 1).copied().unwrap_or(false)
        } else {
            false
        };
        let kind = if column_type.is_character_type() {
            let collation = charset_at(char_i, &charsets, &default_charset);
            char_i += 1;
            character_kind(column_type, &meta, collation)
        } else if column_type.is_enum_or_set_type() {
            let collation = charset_at(enum_set_i, &enum_set_charsets, &enum_set_default);
            enum_set_i += 1;
            let charset = Charset::from_collation(collation);
            let labels = |all: &[Vec<Vec<u8>>], n: usize| -> Arc<[String]> {
                all.get(n)
                    .map(|l| l.iter().map(|raw| charset.decode(raw)).collect())
                    .unwrap_or_else(|| Arc::from(Vec::new()))
            };
            if column_type == ColumnType::MYSQL_TYPE_ENUM {
                enum_i += 1;
                Kind::Enum(labels(&enums, enum_i - 1))
            } else {
                set_i += 1;
                Kind::Set(labels(&sets, set_i - 1))
            }
        } else {
            scalar_kind(column_type, unsigned)
        };
        let kind = with_hint(kind, names.get(i).and_then(|n| hints.get(n)));
        columns.push(BinlogColumn {
            column_type,
            meta,
            unsigned,
            kind,
        });
    }

    if key.is_empty() {
        return Ok(Mapped::Ignored);
    }
    let keep: Vec<usize> = (0..count)
        .filter(|&i| !selection.column_excluded(&id, &names[i]))
        .collect();
    let mut schema_key = Vec::with_capacity(key.len());
    for k in &key {
        match keep.iter().position(|c| c == k) {
            Some(pos) => schema_key.push(pos),
            None => {
                return Err(TableMapError::KeyExcluded {
                    table: id,
                    column: names.get(*k).cloned().unwrap_or_default(),
                })
            }
        }
    }
    let schema = TableSchema::new(
        id,
        keep.iter()
            .map(|&i| Column::new(names[i].clone(), columns[i].kind.type_name()))
            .collect(),
        schema_key,
    );
    Ok(Mapped::Synced(Arc::new(TableInfo {
        schema: Arc::new(schema),
        columns,
        keep,
    })))
}

/// The collation of the `n`th character (or enum/set) column: per-column list, or the default
/// with its exceptions.
fn charset_at(n: usize, per_column: &[u16], default: &Option<(u16, Vec<(usize, u16)>)>) -> u16 {
    if let Some(c) = per_column.get(n) {
        return *c;
    }
    match default {
        Some((default, exceptions)) => exceptions
            .iter()
            .find(|(i, _)| *i == n)
            .map_or(*default, |(_, c)| *c),
        None => 45,
    }
}

const BINARY_COLLATION: u16 = 63;

fn character_kind(ty: ColumnType, meta: &[u8], collation: u16) -> Kind {
    if collation != BINARY_COLLATION {
        return Kind::Text {
            charset: Charset::from_collation(collation),
        };
    }
    let pad_to = if ty == ColumnType::MYSQL_TYPE_STRING {
        string_length(meta)
    } else {
        0
    };
    Kind::Binary { pad_to }
}

/// The byte length of a CHAR/BINARY column from its TABLE_MAP metadata.
fn string_length(meta: &[u8]) -> usize {
    match meta {
        [byte0, byte1, ..] => {
            let (b0, b1) = (usize::from(*byte0), usize::from(*byte1));
            if (b0 & 0x30) != 0x30 {
                b1 | (((b0 & 0x30) ^ 0x30) << 4)
            } else {
                b1
            }
        }
        _ => 0,
    }
}

fn scalar_kind(ty: ColumnType, unsigned: bool) -> Kind {
    use ColumnType::*;
    match ty {
        MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_INT24 | MYSQL_TYPE_LONG
        | MYSQL_TYPE_LONGLONG => Kind::Int { unsigned },
        MYSQL_TYPE_FLOAT => Kind::Float,
        MYSQL_TYPE_DOUBLE => Kind::Double,
        MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL => Kind::Decimal,
        MYSQL_TYPE_BIT => Kind::Bit,
        MYSQL_TYPE_YEAR => Kind::Year,
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => Kind::Date,
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => Kind::DateTime,
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => Kind::Timestamp,
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => Kind::Time,
        MYSQL_TYPE_JSON => Kind::Json,
        MYSQL_TYPE_GEOMETRY
        | MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB => Kind::Binary { pad_to: 0 },
        _ => Kind::Other,
    }
}

/// Reads one row image (`present` = the columns-present bitmap) from `buf`: every binlog
/// column, `Value::Missing` for those not in the image.
pub fn read_image<'a>(
    info: &'a TableInfo,
    present: &[bool],
    buf: &mut ParseBuf<'a>,
) -> std::io::Result<Vec<Value>> {
    let in_image = present.iter().filter(|p| **p).count();
    let null_bitmap = buf
        .checked_eat(in_image.div_ceil(8))
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "null bitmap"))?
        .to_vec();
    let mut values = Vec::with_capacity(info.columns.len());
    let mut image_index = 0;
    for (i, column) in info.columns.iter().enumerate() {
        if !present.get(i).copied().unwrap_or(false) {
            values.push(Value::Missing);
            continue;
        }
        let is_null = null_bitmap
            .get(image_index / 8)
            .is_some_and(|b| b & (1 << (image_index % 8)) != 0);
        image_index += 1;
        if is_null {
            values.push(Value::Null);
            continue;
        }
        let ctx = (
            column.column_type,
            column.meta.as_slice(),
            column.unsigned,
            false,
        );
        let value: BinlogValue<'_> = buf.parse(ctx)?;
        values.push(fix_int24(column, binlog_value(&column.kind, value)?));
    }
    Ok(values)
}

/// mysql_common 0.37 reads a signed MEDIUMINT without sign extension (-8388608 arrives as
/// 8388608): extend bit 23 here.
fn fix_int24(column: &BinlogColumn, value: Value) -> Value {
    match value {
        Value::Int(v)
            if column.column_type == ColumnType::MYSQL_TYPE_INT24
                && !column.unsigned
                && v >= 0x80_0000 =>
        {
            Value::Int(v - 0x100_0000)
        }
        other => other,
    }
}

/// The kept columns of a full binlog row, in schema order.
pub fn project(info: &TableInfo, row: Vec<Value>) -> Vec<Value> {
    if info.keep.len() == row.len() {
        return row;
    }
    let mut row: Vec<Option<Value>> = row.into_iter().map(Some).collect();
    info.keep
        .iter()
        .map(|&i| {
            row.get_mut(i)
                .and_then(Option::take)
                .unwrap_or(Value::Missing)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_lengths_from_metadata() {
        // CHAR(10) in a single-byte charset: real type 0xfe, length 10.
        assert_eq!(string_length(&[0xfe, 10]), 10);
        // CHAR(255) utf8mb4 = 1020 bytes: high bits folded into byte0.
        assert_eq!(string_length(&[0xce, 0xfc]), 1020);
    }

    #[test]
    fn charsets_by_position() {
        let default = Some((45u16, vec![(1usize, 8u16)]));
        assert_eq!(charset_at(0, &[], &default), 45);
        assert_eq!(charset_at(1, &[], &default), 8);
        assert_eq!(charset_at(0, &[63, 8], &None), 63);
        assert_eq!(charset_at(5, &[], &None), 45);
    }
}
