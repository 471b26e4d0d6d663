//! Column values → core `Value` (DESIGN §3), from the snapshot's binary-protocol result sets and
//! from binlog row images alike: both sides first classify a column into one [`Kind`] and then go
//! through the same helpers, so snapshot and stream encode byte-identically.

use crate::columns::Hint;
use crate::error::MysqlError;
use crate::json::{json_or_text, render_jsonb};
use etcdsync_core::value::{format_date, push_fraction};
use etcdsync_core::Value;
use mysql_common::binlog::value::BinlogValue;
use mysql_common::value::Value as MyValue;
use std::sync::Arc;

/// How a column's values are rendered. Derived from `information_schema` for the snapshot and
/// from the TABLE_MAP event (type, metadata, optional metadata) for the binlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Int {
        unsigned: bool,
    },
    Float,
    Double,
    Decimal,
    Bit,
    Year,
    Date,
    DateTime,
    Timestamp,
    Time,
    /// Character data; binlog bytes are in `charset`, result sets in utf8mb4.
    Text {
        charset: Charset,
    },
    /// BINARY(n) (binlog strips trailing 0x00, SELECT returns them: pad to `pad_to`),
    /// VARBINARY, BLOB, GEOMETRY.
    Binary {
        pad_to: usize,
    },
    Enum(Arc<[String]>),
    Set(Arc<[String]>),
    /// MySQL's native JSON (binary in the binlog, MySQL's own text in result sets).
    Json,
    /// MariaDB's JSON: text with a `json_valid()` CHECK (see `columns`).
    JsonText {
        charset: Charset,
    },
    /// MariaDB INET4 (4 bytes in the binlog, dotted text in result sets).
    Inet4,
    /// MariaDB INET6 (16 bytes in the binlog, text in result sets).
    Inet6,
    /// MariaDB UUID (16 bytes in the binlog, text in result sets).
    Uuid,
    /// Anything else: its text form.
    Other,
}

impl Kind {
    /// A short type name for `Column::type_name`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::Int { unsigned: false } => "int",
            Kind::Int { unsigned: true } => "int unsigned",
            Kind::Float => "float",
            Kind::Double => "double",
            Kind::Decimal => "decimal",
            Kind::Bit => "bit",
            Kind::Year => "year",
            Kind::Date => "date",
            Kind::DateTime => "datetime",
            Kind::Timestamp => "timestamp",
            Kind::Time => "time",
            Kind::Text { .. } => "text",
            Kind::Binary { .. } => "binary",
            Kind::Enum(_) => "enum",
            Kind::Set(_) => "set",
            Kind::Json | Kind::JsonText { .. } => "json",
            Kind::Inet4 => "inet4",
            Kind::Inet6 => "inet6",
            Kind::Uuid => "uuid",
            Kind::Other => "other",
        }
    }
}

pub use crate::charset::Charset;

/// Snapshot side: the kind of a column from `information_schema.COLUMNS` (`DATA_TYPE`,
/// `COLUMN_TYPE`).
pub fn kind_from_information_schema(data_type: &str, column_type: &str) -> Kind {
    let unsigned = column_type.to_ascii_lowercase().contains("unsigned");
    match data_type.to_ascii_lowercase().as_str() {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => {
            Kind::Int { unsigned }
        }
        "float" => Kind::Float,
        "double" | "real" | "double precision" => Kind::Double,
        "decimal" | "numeric" => Kind::Decimal,
        "bit" => Kind::Bit,
        "year" => Kind::Year,
        "date" => Kind::Date,
        "datetime" => Kind::DateTime,
        "timestamp" => Kind::Timestamp,
        "time" => Kind::Time,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => Kind::Text {
            charset: Charset::Utf8,
        },
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "geometry"
        | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" | "geomcollection" => Kind::Binary { pad_to: 0 },
        // Result sets carry enum labels and set members as text already; the labels serve
        // key comparisons (`etcdsync verify` pages ENUM keys by their index).
        "enum" => Kind::Enum(Arc::from(quoted_labels(column_type))),
        "set" => Kind::Set(Arc::from(quoted_labels(column_type))),
        "json" => Kind::Json,
        "inet4" => Kind::Inet4,
        "inet6" => Kind::Inet6,
        "uuid" => Kind::Uuid,
        _ => Kind::Other,
    }
}

/// The labels of `enum('a','b''c')` / `set(…)` as `COLUMN_TYPE` writes them (SQL string
/// literals: `''` and `\\` escapes), in definition order.
pub fn quoted_labels(column_type: &str) -> Vec<String> {
    let Some(open) = column_type.find('(') else {
        return Vec::new();
    };
    let mut labels = Vec::new();
    let mut chars = column_type[open + 1..].chars().peekable();
    loop {
        match chars.next() {
            Some('\'') => {
                let mut label = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\'' if chars.peek() == Some(&'\'') => {
                            chars.next();
                            label.push('\'');
                        }
                        '\'' => break,
                        '\\' => {
                            if let Some(next) = chars.next() {
                                label.push(next);
                            }
                        }
                        other => label.push(other),
                    }
                }
                labels.push(label);
            }
            Some(')') | None => break,
            Some(_) => {}
        }
    }
    labels
}

/// Refines a column's kind with what information_schema knows (MariaDB's JSON, INET4, INET6,
/// UUID); a hint that does not fit the column's storage (the table changed since) is ignored.
pub fn with_hint(kind: Kind, hint: Option<Hint>) -> Kind {
    match (hint, kind) {
        (Some(Hint::Json), Kind::Text { charset }) => Kind::JsonText { charset },
        (Some(Hint::Inet6), Kind::Binary { pad_to: 16 } | Kind::Text { .. } | Kind::Other) => {
            Kind::Inet6
        }
        (Some(Hint::Inet4), Kind::Binary { pad_to: 4 } | Kind::Text { .. } | Kind::Other) => {
            Kind::Inet4
        }
        (Some(Hint::Uuid), Kind::Binary { pad_to: 16 } | Kind::Text { .. } | Kind::Other) => {
            Kind::Uuid
        }
        (_, kind) => kind,
    }
}

/// Snapshot side: a binary-protocol result value (session `time_zone='+00:00'`, utf8mb4).
pub fn snapshot_value(kind: &Kind, value: MyValue) -> Value {
    match (kind, value) {
        (_, MyValue::NULL) => Value::Null,
        (Kind::Enum(_), MyValue::Bytes(b)) => Value::Text(Charset::Utf8.decode(&b)),
        (Kind::Set(_), MyValue::Bytes(b)) => {
            let text = Charset::Utf8.decode(&b);
            Value::Array(
                text.split(',')
                    .filter(|m| !m.is_empty())
                    .map(|m| Value::Text(m.to_string()))
                    .collect(),
            )
        }
        (Kind::Json, MyValue::Bytes(b)) => Value::Json(Charset::Utf8.decode(&b)),
        (Kind::JsonText { .. }, MyValue::Bytes(b)) => json_or_text(Charset::Utf8.decode(&b)),
        (Kind::Inet4 | Kind::Inet6 | Kind::Uuid, MyValue::Bytes(b)) => {
            Value::Text(Charset::Utf8.decode(&b))
        }
        (Kind::Year, MyValue::Bytes(b)) => year_from_text(&b),
        (kind, value) => common_value(kind, value),
    }
}

/// Binlog side: one decoded row-image value. Fails only on malformed binary JSON.
pub fn binlog_value(kind: &Kind, value: BinlogValue<'_>) -> std::io::Result<Value> {
    Ok(match value {
        BinlogValue::Value(value) => binlog_plain(kind, value),
        BinlogValue::Jsonb(jsonb) => Value::Json(render_jsonb(&jsonb)?),
        // A partial JSON update (binlog_row_value_options=PARTIAL_JSON): not a full value.
        BinlogValue::JsonDiff(_) => Value::Missing,
    })
}

fn binlog_plain(kind: &Kind, value: MyValue) -> Value {
    match (kind, value) {
        (_, MyValue::NULL) => Value::Null,
        (Kind::Text { charset }, MyValue::Bytes(b)) => Value::Text(charset.decode(&b)),
        (Kind::JsonText { charset }, MyValue::Bytes(b)) => json_or_text(charset.decode(&b)),
        // Fixed-size binary in the row image, trailing zero bytes stripped.
        (Kind::Inet6, MyValue::Bytes(b)) => Value::Text(inet6_text(&padded::<16>(&b))),
        (Kind::Inet4, MyValue::Bytes(b)) => {
            let [a, b2, c, d] = padded::<4>(&b);
            Value::Text(format!("{a}.{b2}.{c}.{d}"))
        }
        (Kind::Uuid, MyValue::Bytes(b)) => Value::Text(uuid_text(&padded::<16>(&b))),
        (Kind::Binary { pad_to }, MyValue::Bytes(mut b)) => {
            if b.len() < *pad_to {
                b.resize(*pad_to, 0);
            }
            Value::Bytes(b)
        }
        (Kind::Enum(labels), MyValue::Int(i)) => {
            // 0 is the "invalid value" MySQL stores as the empty string.
            let label = usize::try_from(i)
                .ok()
                .and_then(|i| i.checked_sub(1))
                .and_then(|i| labels.get(i));
            Value::Text(label.cloned().unwrap_or_default())
        }
        (Kind::Set(members), MyValue::Bytes(mask)) => Value::Array(
            members
                .iter()
                .enumerate()
                .filter(|(i, _)| {
                    mask.get(i / 8)
                        .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
                })
                .map(|(_, m)| Value::Text(m.clone()))
                .collect(),
        ),
        // The binlog renders YEAR as 1900 + stored byte; the stored 0 is YEAR 0000.
        (Kind::Year, MyValue::Bytes(b)) => match year_from_text(&b) {
            Value::Int(1900) => Value::Int(0),
            other => other,
        },
        // TIMESTAMP2 arrives as "seconds[.micros]" since the epoch; old TIMESTAMP as Int.
        (Kind::Timestamp, MyValue::Bytes(b)) => {
            let text = String::from_utf8_lossy(&b);
            let (secs, micros) = match text.split_once('.') {
                Some((s, f)) => (s.parse::<i64>().ok(), f.parse::<u32>().ok()),
                None => (text.parse::<i64>().ok(), Some(0)),
            };
            match (secs, micros) {
                (Some(secs), Some(micros)) => timestamp_from_epoch(secs, micros),
                _ => Value::Text(text.into_owned()),
            }
        }
        (Kind::Timestamp, MyValue::Int(secs)) => timestamp_from_epoch(secs, 0),
        (kind, value) => common_value(kind, value),
    }
}

/// What both sides share once the side-specific forms are out of the way.
fn common_value(kind: &Kind, value: MyValue) -> Value {
    match (kind, value) {
        (_, MyValue::NULL) => Value::Null,
        (Kind::Int { unsigned: true }, MyValue::Int(i)) => match u64::try_from(i) {
            Ok(u) => Value::UInt(u),
            Err(_) => Value::Int(i),
        },
        (Kind::Int { unsigned: false }, MyValue::UInt(u)) => match i64::try_from(u) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::UInt(u),
        },
        (Kind::Year, MyValue::Int(i)) => Value::Int(i),
        (Kind::Year, MyValue::UInt(u)) => Value::UInt(u),
        (_, MyValue::Int(i)) => Value::Int(i),
        (_, MyValue::UInt(u)) => Value::UInt(u),
        (Kind::Double, MyValue::Float(f)) => Value::Float64(f64::from(f)),
        (_, MyValue::Float(f)) => Value::Float32(f),
        (_, MyValue::Double(f)) => Value::Float64(f),
        (Kind::Decimal, MyValue::Bytes(b)) => Value::Decimal(decimal_text(&b)),
        (Kind::Bit, MyValue::Bytes(b)) => Value::UInt(bit_value(&b)),
        (
            Kind::Text { .. }
            | Kind::Enum(_)
            | Kind::Other
            | Kind::Inet4
            | Kind::Inet6
            | Kind::Uuid,
            MyValue::Bytes(b),
        ) => Value::Text(Charset::Utf8.decode(&b)),
        (Kind::JsonText { .. }, MyValue::Bytes(b)) => json_or_text(Charset::Utf8.decode(&b)),
        (Kind::Json, MyValue::Bytes(b)) => Value::Json(Charset::Utf8.decode(&b)),
        (Kind::Set(_), MyValue::Bytes(b)) => Value::Text(Charset::Utf8.decode(&b)),
        (Kind::Binary { .. }, MyValue::Bytes(b)) => Value::Bytes(b),
        (_, MyValue::Bytes(b)) => Value::Text(String::from_utf8_lossy(&b).into_owned()),
        (Kind::Date, MyValue::Date(y, m, d, ..)) => {
            Value::Date(format_date(i32::from(y), u32::from(m), u32::from(d)))
        }
        (Kind::Timestamp, MyValue::Date(y, mo, d, h, mi, s, us)) => {
            Value::TimestampTz(format!("{}Z", datetime_text(y, mo, d, h, mi, s, us)))
        }
        (_, MyValue::Date(y, mo, d, h, mi, s, us)) => {
            Value::Timestamp(datetime_text(y, mo, d, h, mi, s, us))
        }
        (_, MyValue::Time(neg, days, h, m, s, us)) => {
            Value::Time(time_text(neg, days, h, m, s, us))
        }
    }
}

/// The length in the row image of a TIME2 value with `fsp` fractional digits.
pub fn time2_len(fsp: u8) -> usize {
    3 + usize::from(fsp.min(6)).div_ceil(2)
}

/// A TIME2 row-image value (MySQL 5.6 format, which MariaDB writes with
/// `mysql56_temporal_format=ON`) as the result set's `Time` parts, for every fsp 0–6, negative
/// or not. (mysql_common 0.37 underflows on negative TIME(1)/TIME(2) with a fraction.)
///
/// The value is a signed number of `hms << 24 | microseconds` (`hms` = hour << 12 | minute << 6
/// | second) stored big-endian with an offset: 3 integer bytes (+0x800000) and 0–3 fraction
/// bytes; for fsp 1–4 the fraction byte(s) of a negative value borrow from the integer part.
pub fn time2_value(bytes: &[u8], fsp: u8) -> Option<MyValue> {
    let fsp = fsp.min(6);
    if bytes.len() != time2_len(fsp) {
        return None;
    }
    let be = |b: &[u8]| b.iter().fold(0i64, |acc, x| (acc << 8) | i64::from(*x));
    let packed = if fsp >= 5 {
        be(bytes) - 0x8000_0000_0000
    } else {
        let mut int = be(&bytes[..3]) - 0x80_0000;
        let (frac, unit, scale) = match fsp {
            1 | 2 => (be(&bytes[3..4]), 0x100, 10_000),
            3 | 4 => (be(&bytes[3..5]), 0x1_0000, 100),
            _ => (0, 1, 0),
        };
        let mut frac = frac;
        if int < 0 && frac > 0 {
            int += 1;
            frac -= unit;
        }
        int * (1 << 24) + frac * scale
    };
    let negative = packed < 0;
    let abs = packed.unsigned_abs();
    let hms = abs >> 24;
    let micros = u32::try_from(abs % (1 << 24)).ok()?;
    let hours = u32::try_from((hms >> 12) % (1 << 10)).ok()?;
    let minute = u8::try_from((hms >> 6) % (1 << 6)).ok()?;
    let second = u8::try_from(hms % (1 << 6)).ok()?;
    let hour = u8::try_from(hours % 24).ok()?;
    Some(MyValue::Time(
        negative,
        hours / 24,
        hour,
        minute,
        second,
        micros,
    ))
}

/// MariaDB's stored form of a `COMPRESSED` column value (the row image carries it as stored):
/// empty, or a header byte then the data. Header 0x00: the data follows as is. Header with bit 7
/// set: zlib — bits 0–2 give how many big-endian bytes of original length follow, bit 3 set
/// means a raw deflate stream (`column_compression_zlib_wrap=OFF`, the default), clear a zlib
/// stream; bits 4–6 are zero. `max_len` bounds the original length (the column's maximum).
pub fn mariadb_uncompress(stored: &[u8], max_len: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let Some((&header, rest)) = stored.split_first() else {
        return Ok(Vec::new());
    };
    if header == 0 {
        return Ok(rest.to_vec());
    }
    if header & 0x80 == 0 || header & 0x70 != 0 {
        return Err(format!(
            "unknown compressed-column header byte 0x{header:02x} (only zlib is known)"
        ));
    }
    let width = usize::from(header & 0x07);
    if width == 0 || width > 4 || rest.len() < width {
        return Err(format!(
            "compressed value with a bad length field (header 0x{header:02x}, {} bytes)",
            stored.len()
        ));
    }
    let original = rest[..width]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    if original > max_len {
        return Err(format!(
            "compressed value claims {original} bytes, more than the column's maximum {max_len}"
        ));
    }
    let data = &rest[width..];
    let mut out = Vec::new();
    let limit = original + 1;
    let read = if header & 0x08 != 0 {
        flate2::read::DeflateDecoder::new(data)
            .take(limit)
            .read_to_end(&mut out)
    } else {
        flate2::read::ZlibDecoder::new(data)
            .take(limit)
            .read_to_end(&mut out)
    };
    read.map_err(|e| format!("compressed value does not inflate: {e}"))?;
    if out.len() as u64 != original {
        return Err(format!(
            "compressed value inflates to {} bytes, its header says {original}",
            out.len()
        ));
    }
    Ok(out)
}

/// MariaDB's compressed binlog events (`log_bin_compress=ON`): query 165, rows 166–171.
pub fn mariadb_compressed_event(event_type: u8) -> Option<&'static str> {
    match event_type {
        165 => Some("QUERY_COMPRESSED_EVENT"),
        166 => Some("WRITE_ROWS_COMPRESSED_EVENT_V1"),
        167 => Some("UPDATE_ROWS_COMPRESSED_EVENT_V1"),
        168 => Some("DELETE_ROWS_COMPRESSED_EVENT_V1"),
        169 => Some("WRITE_ROWS_COMPRESSED_EVENT"),
        170 => Some("UPDATE_ROWS_COMPRESSED_EVENT"),
        171 => Some("DELETE_ROWS_COMPRESSED_EVENT"),
        _ => None,
    }
}

/// The fix for `log_bin_compress=ON`, shared by the start-up check and the stream error.
pub const LOG_BIN_COMPRESS_FIX: &str = "SET GLOBAL log_bin_compress=OFF now, and \
     `log_bin_compress = OFF` under [mysqld] in my.cnf; changes already logged compressed are \
     not readable: re-snapshot afterwards (delete the pipeline's checkpoint key)";

/// The stream error for a compressed event at `position` (`file:offset`), or `None` for other
/// event types. binlog.rs calls this for event types mysql_common does not know.
pub fn compressed_event_error(event_type: u8, position: &str) -> Option<MysqlError> {
    let name = mariadb_compressed_event(event_type)?;
    Some(MysqlError::Prerequisite(format!(
        "  - log_bin_compress: the binlog at {position} holds a compressed event ({name}, type \
         {event_type}), which etcdsync does not read, and skipping it would lose changes — fix: \
         {LOG_BIN_COMPRESS_FIX}"
    )))
}

/// The first `N` bytes, zero-padded (the binlog strips trailing zeros of BINARY(n) values).
fn padded<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = *b;
    }
    out
}

/// MariaDB's UUID text: lowercase, hyphenated, in stored byte order (MariaDB 10.11 keeps the
/// text order in the row image; checked by the type parity test).
pub fn uuid_text(bytes: &[u8; 16]) -> String {
    crate::position::uuid_text(bytes)
}

/// MariaDB's (and MySQL's `INET6_NTOA`) IPv6 text: lowercase hex words without leading zeros,
/// the first longest run of zero words (even a single one) as `::`, and the last 32 bits as a
/// dotted quad for IPv4-compatible (`::1.2.3.4`) and IPv4-mapped (`::ffff:1.2.3.4`) addresses.
pub fn inet6_text(bytes: &[u8; 16]) -> String {
    let words: Vec<u16> = bytes
        .chunks(2)
        .map(|w| (u16::from(w[0]) << 8) | u16::from(w[1]))
        .collect();
    // The gap: the first longest run of zero words.
    let (mut gap_pos, mut gap_len) = (usize::MAX, 0usize);
    let mut i = 0;
    while i < 8 {
        if words[i] == 0 {
            let start = i;
            while i < 8 && words[i] == 0 {
                i += 1;
            }
            if i - start > gap_len {
                gap_pos = start;
                gap_len = i - start;
            }
        } else {
            i += 1;
        }
    }
    let mut out = String::new();
    let mut i = 0;
    while i < 8 {
        if i == gap_pos {
            if i == 0 {
                out.push(':');
            }
            out.push(':');
            i += gap_len;
            continue;
        }
        if i == 6 && gap_pos == 0 && (gap_len == 6 || (gap_len == 5 && words[5] == 0xffff)) {
            out.push_str(&format!(
                "{}.{}.{}.{}",
                bytes[12], bytes[13], bytes[14], bytes[15]
            ));
            break;
        }
        out.push_str(&format!("{:x}", words[i]));
        if i != 7 {
            out.push(':');
        }
        i += 1;
    }
    out
}

fn year_from_text(bytes: &[u8]) -> Value {
    let text = String::from_utf8_lossy(bytes);
    match text.trim().parse::<i64>() {
        Ok(y) => Value::Int(y),
        Err(_) => Value::Text(text.into_owned()),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.f]`.
pub fn datetime_text(y: u16, mo: u8, d: u8, h: u8, mi: u8, s: u8, micros: u32) -> String {
    let mut out = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
    push_fraction(&mut out, micros);
    out
}

/// `[-]HH:MM:SS[.f]` with hours beyond 24 (MySQL TIME spans ±838:59:59).
pub fn time_text(negative: bool, days: u32, h: u8, m: u8, s: u8, micros: u32) -> String {
    let hours = days * 24 + u32::from(h);
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    out.push_str(&format!("{hours:02}:{m:02}:{s:02}"));
    push_fraction(&mut out, micros);
    out
}

/// A TIMESTAMP given as seconds since the epoch: `YYYY-MM-DDTHH:MM:SS[.f]Z`. Second 0 is the
/// "zero" timestamp `0000-00-00 00:00:00` (1970-01-01 00:00:00 UTC is outside TIMESTAMP's range).
pub fn timestamp_from_epoch(secs: i64, micros: u32) -> Value {
    if secs == 0 && micros == 0 {
        return Value::TimestampTz("0000-00-00T00:00:00Z".into());
    }
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let mut out = format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
    push_fraction(&mut out, micros);
    out.push('Z');
    Value::TimestampTz(out)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Decimal text with its scale kept and leading zeros of the integer part removed.
pub fn decimal_text(bytes: &[u8]) -> String {
    etcdsync_core::value::normalise_decimal(&String::from_utf8_lossy(bytes))
}

/// BIT(n) bytes, big-endian, as a number.
pub fn bit_value(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

#[cfg(test)]
mod tests;
