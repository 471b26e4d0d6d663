//! TABLE_MAP events → [`TableInfo`] (column names, key, kinds from `binlog_row_metadata=FULL`,
//! no schema cache: every TABLE_MAP carries the table's current shape, so row events decode
//! without one — DDL that changes rows is followed by the decoder; only MariaDB's
//! JSON/INET/UUID columns take a hint from `columns`), and row
//! images → core rows through `decode`. Column types and metadata are read from the event's
//! bytes here (mysql_common stops at MariaDB's COMPRESSED types 140/141), charsets are matched
//! to columns as the server lays them out (MariaDB counts GEOMETRY and COMPRESSED columns among
//! character columns), and TIME2 and COMPRESSED values are decoded here (DESIGN §3).

use crate::charset::unsupported_fix;
use crate::columns::ColumnHints;
use crate::decode::{
    binlog_value, mariadb_uncompress, time2_len, time2_value, with_hint, Charset, Kind,
};
use etcdsync_core::change::Column;
use etcdsync_core::tables::TableSelection;
use etcdsync_core::{TableId, TableSchema, Value};
use mysql_common::binlog::events::{OptionalMetadataField, TableMapEvent};
use mysql_common::binlog::value::BinlogValue;
use mysql_common::constants::ColumnType;
use mysql_common::io::ParseBuf;
use mysql_common::proto::MySerialize;
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
    /// The type as row images store it; a MariaDB COMPRESSED column has its uncompressed
    /// type here (VARCHAR or BLOB) and `compressed` set.
    pub column_type: ColumnType,
    pub meta: Vec<u8>,
    pub unsigned: bool,
    pub kind: Kind,
    /// MariaDB `COMPRESSED` (types 140/141): the value's maximum uncompressed length.
    pub compressed: Option<u64>,
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
    /// A kept column in a charset etcdsync does not convert exactly (never decoded lossily).
    #[error("column `{column}` of {table} is in charset {charset}, which etcdsync cannot convert to UTF-8 exactly (it never converts lossily) — fix: {fix}; the binlog already written holds the column in that charset, so re-snapshot afterwards (delete the pipeline's checkpoint key)")]
    UnsupportedCharset {
        table: TableId,
        column: String,
        charset: String,
        fix: String,
    },
}

/// MariaDB's `COMPRESSED` column types in TABLE_MAP events (unknown to mysql_common).
pub const MARIADB_BLOB_COMPRESSED: u8 = 140;
pub const MARIADB_VARCHAR_COMPRESSED: u8 = 141;

/// One column's type byte and metadata, read from the event's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawColumn {
    /// The type byte; for MYSQL_TYPE_STRING the real type from the metadata (ENUM, SET).
    pub type_code: u8,
    pub meta: Vec<u8>,
}

/// How many metadata bytes a column type has in a TABLE_MAP event (MySQL and MariaDB), given
/// the metadata from this column on (MySQL's TYPED_ARRAY names its element type first).
fn metadata_len(type_code: u8, meta: &[u8]) -> Option<usize> {
    Some(match type_code {
        // FLOAT, DOUBLE, TIMESTAMP2, DATETIME2, TIME2, JSON, VECTOR, TINY/MEDIUM/LONG BLOB, BLOB,
        // GEOMETRY, MariaDB BLOB COMPRESSED
        4 | 5 | 17 | 18 | 19 | 245 | 242 | 249..=252 | 255 | MARIADB_BLOB_COMPRESSED => 1,
        // VARCHAR, BIT, NEWDECIMAL, ENUM, SET, STRING, MariaDB VARCHAR COMPRESSED
        15 | 16 | 246..=248 | 254 | MARIADB_VARCHAR_COMPRESSED => 2,
        // MySQL TYPED_ARRAY: the element type, then its metadata (a VARCHAR element has 3 bytes)
        244 => match *meta.first()? {
            15 => 4,
            element if element != 244 => 1 + metadata_len(element, meta.get(1..)?)?,
            _ => return None,
        },
        // DECIMAL(old), TINY, SHORT, LONG, NULL, TIMESTAMP, LONGLONG, INT24, DATE, TIME,
        // DATETIME, YEAR, NEWDATE, VAR_STRING (as mysql_common reads it)
        0..=3 | 6..=14 | 253 => 0,
        _ => return None,
    })
}

/// The column types and metadata of a TABLE_MAP event, from its serialized bytes (which
/// mysql_common keeps private): post-header, names, count, types, metadata.
pub fn raw_columns(tme: &TableMapEvent<'_>) -> Result<Vec<RawColumn>, String> {
    let mut bytes = Vec::new();
    tme.serialize(&mut bytes);
    let short = || "the event is shorter than its column list".to_string();
    let mut at = 8; // table id (6) and flags (2)
    for _ in 0..2 {
        // database and table name: length byte, name, NUL
        let len = usize::from(*bytes.get(at).ok_or_else(short)?);
        at += len + 2;
    }
    let (count, used) = lenenc(bytes.get(at..).ok_or_else(short)?).ok_or_else(short)?;
    at += used;
    let count = usize::try_from(count).map_err(|e| e.to_string())?;
    let types = bytes.get(at..at + count).ok_or_else(short)?.to_vec();
    at += count;
    let (meta_len, used) = lenenc(bytes.get(at..).ok_or_else(short)?).ok_or_else(short)?;
    at += used;
    let meta_len = usize::try_from(meta_len).map_err(|e| e.to_string())?;
    let meta = bytes.get(at..at + meta_len).ok_or_else(short)?;
    let mut columns = Vec::with_capacity(count);
    let mut offset = 0;
    for (i, &type_code) in types.iter().enumerate() {
        let len = metadata_len(type_code, meta.get(offset..).unwrap_or_default())
            .ok_or_else(|| format!("column {} has type {type_code}, unknown to etcdsync", i + 1))?;
        let column_meta = meta
            .get(offset..offset + len)
            .ok_or_else(|| format!("the metadata ends before column {}", i + 1))?
            .to_vec();
        offset += len;
        let type_code = match (type_code, column_meta.first()) {
            // MYSQL_TYPE_DATE is not written since row-based replication exists: NEWDATE.
            (10, _) => 14,
            // MYSQL_TYPE_STRING carries the real type (ENUM, SET, STRING) in its metadata.
            (254, Some(&real)) if real != 0 => real | 0x30,
            (other, _) => other,
        };
        columns.push(RawColumn {
            type_code,
            meta: column_meta,
        });
    }
    Ok(columns)
}

/// A length-encoded integer and how many bytes it took.
fn lenenc(bytes: &[u8]) -> Option<(u64, usize)> {
    let le = |n: usize| -> Option<u64> {
        let b = bytes.get(1..1 + n)?;
        Some(
            b.iter()
                .rev()
                .fold(0u64, |acc, x| (acc << 8) | u64::from(*x)),
        )
    };
    match *bytes.first()? {
        b @ 0..=0xfa => Some((u64::from(b), 1)),
        0xfc => Some((le(2)?, 3)),
        0xfd => Some((le(3)?, 4)),
        0xfe => Some((le(8)?, 9)),
        _ => None,
    }
}

/// Whether the server lists a column among the character columns of the charset metadata.
/// MySQL: CHAR, VARCHAR, BLOB/TEXT (mysql_common's rule). MariaDB also counts GEOMETRY and its
/// COMPRESSED types (seen in MariaDB 10.11's events; mysql_common does not know this).
fn is_character_column(type_code: u8, mariadb: bool) -> bool {
    match type_code {
        15 | 249..=254 => type_code != 247 && type_code != 248,
        255 | MARIADB_BLOB_COMPRESSED | MARIADB_VARCHAR_COMPRESSED => mariadb,
        _ => false,
    }
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

    let raw = raw_columns(tme).map_err(malformed)?;
    if raw.len() != count {
        return Err(malformed(format!(
            "{} column types for {count} columns",
            raw.len()
        )));
    }
    let mariadb = hints.mariadb();
    let mut columns = Vec::with_capacity(count);
    let (mut numeric_i, mut char_i, mut enum_set_i, mut enum_i, mut set_i) = (0, 0, 0, 0, 0);
    for (i, RawColumn { type_code, meta }) in raw.into_iter().enumerate() {
        let compressed = match type_code {
            MARIADB_BLOB_COMPRESSED => Some((
                ColumnType::MYSQL_TYPE_BLOB,
                blob_max_len(meta.first().copied().unwrap_or(4)),
            )),
            MARIADB_VARCHAR_COMPRESSED => Some((
                ColumnType::MYSQL_TYPE_VARCHAR,
                u64::from(varchar_max_len(&meta)),
            )),
            _ => None,
        };
        let column_type = match compressed {
            Some((stored, _)) => stored,
            None => ColumnType::try_from(type_code)
                .map_err(|_| malformed(format!("column {} has unknown type {type_code}", i + 1)))?,
        };
        let unsigned = if has_signedness(column_type) && compressed.is_none() {
            numeric_i += 1;
            signedness.get(numeric_i - 1).copied().unwrap_or(false)
        } else {
            false
        };
        let name = names.get(i).cloned().unwrap_or_default();
        let kept = !selection.column_excluded(&id, &name);
        let unsupported = |charset: Charset| TableMapError::UnsupportedCharset {
            table: id.clone(),
            column: name.clone(),
            charset: charset.name(),
            fix: unsupported_fix(&crate::statement::quote_table(&id), &format!("`{name}`")),
        };
        let kind = if is_character_column(type_code, mariadb) {
            let collation = charset_at(char_i, &charsets, &default_charset);
            char_i += 1;
            let kind = character_kind(column_type, &meta, collation);
            if let Kind::Text { charset } = kind {
                if !charset.is_supported() && kept {
                    return Err(unsupported(charset));
                }
            }
            kind
        } else if column_type.is_enum_or_set_type() {
            let collation = charset_at(enum_set_i, &enum_set_charsets, &enum_set_default);
            enum_set_i += 1;
            let charset = Charset::from_collation(collation);
            if !charset.is_supported() && kept {
                return Err(unsupported(charset));
            }
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
        let kind = with_hint(kind, hints.get(&name));
        columns.push(BinlogColumn {
            column_type,
            meta,
            unsigned,
            kind,
            compressed: compressed.map(|(_, max)| max),
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

/// The largest value of a BLOB with `pack_len` length bytes.
fn blob_max_len(pack_len: u8) -> u64 {
    (1u64 << (8 * u32::from(pack_len.clamp(1, 4)))) - 1
}

/// The maximum byte length of a VARCHAR from its metadata (little-endian).
fn varchar_max_len(meta: &[u8]) -> u16 {
    match meta {
        [lo, hi, ..] => u16::from_le_bytes([*lo, *hi]),
        _ => u16::MAX,
    }
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
        values.push(read_value(column, buf)?);
    }
    Ok(values)
}

/// One non-NULL value of a row image. TIME2 and MariaDB COMPRESSED columns are decoded here,
/// everything else by mysql_common.
fn read_value<'a>(column: &'a BinlogColumn, buf: &mut ParseBuf<'a>) -> std::io::Result<Value> {
    let invalid = |message: String| std::io::Error::new(std::io::ErrorKind::InvalidData, message);
    if column.column_type == ColumnType::MYSQL_TYPE_TIME2 {
        let fsp = column.meta.first().copied().unwrap_or(0);
        let bytes = buf
            .checked_eat(time2_len(fsp))
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "TIME2 value"))?;
        let time = time2_value(bytes, fsp)
            .ok_or_else(|| invalid(format!("TIME({fsp}) value {bytes:02x?} out of range")))?;
        return binlog_value(&column.kind, BinlogValue::Value(time));
    }
    let ctx = (
        column.column_type,
        column.meta.as_slice(),
        column.unsigned,
        false,
    );
    let value: BinlogValue<'_> = buf.parse(ctx)?;
    let value = match (column.compressed, value) {
        (Some(max_len), BinlogValue::Value(mysql_common::value::Value::Bytes(stored))) => {
            let data = mariadb_uncompress(&stored, max_len)
                .map_err(|e| invalid(format!("COMPRESSED column: {e}")))?;
            BinlogValue::Value(mysql_common::value::Value::Bytes(data))
        }
        (_, value) => value,
    };
    Ok(fix_int24(column, binlog_value(&column.kind, value)?))
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
mod tests;
