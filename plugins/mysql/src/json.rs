//! JSON columns of both flavours (DESIGN §3: the JSON value itself, byte-identical between
//! snapshot and stream). MariaDB stores JSON as text: [`json_or_text`] keeps it as JSON when it
//! parses (compaction happens at the sink edge). MySQL stores binary JSON in the binlog but
//! returns its own text rendering in result sets: [`render_jsonb`] renders the binary form exactly
//! as MySQL's `Json_wrapper::to_string` does (keys in stored order — by length, then bytes —,
//! doubles via `my_gcvt` plus `.0`, dates and decimals from opaque values), compacted.

use base64::Engine as _;
use etcdsync_core::encode::json::write_str;
use etcdsync_core::Value;
use mysql_common::binlog::jsonb;
use mysql_common::constants::ColumnType;
use std::io;

/// `Value::Json` when `text` is one valid JSON document, else `Value::Text` (a column whose
/// CHECK was added with checks off may hold anything; a row is never dropped for its type).
pub fn json_or_text(text: String) -> Value {
    if is_valid_json(&text) {
        Value::Json(text)
    } else {
        Value::Text(text)
    }
}

/// Strict RFC 8259 syntax check of one document, without building values. serde_json reads a
/// `&RawValue` (documented as checked but not parsed) through `Deserializer::ignore_value`,
/// which keeps its own stack of open brackets instead of recursing (no 128-level limit) and
/// skips numbers by their digits without converting them, so `1e400` passes. Parsing into
/// `serde_json::Value` would refuse both ("recursion limit exceeded", "number out of range"),
/// though both are valid JSON a MariaDB JSON column stores, and turn such a value into text on
/// one side only. Trailing input other than whitespace is refused.
pub fn is_valid_json(text: &str) -> bool {
    serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok()
}

/// Renders MySQL binary JSON as MySQL prints it, without the blanks after `:` and `,` (the
/// sink compacts the snapshot's text the same way).
pub fn render_jsonb(value: &jsonb::Value<'_>) -> io::Result<String> {
    let mut out = Vec::new();
    write_jsonb(&mut out, value)?;
    String::from_utf8(out).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn write_jsonb(out: &mut Vec<u8>, value: &jsonb::Value<'_>) -> io::Result<()> {
    use jsonb::Value as J;
    match value {
        J::Null => out.extend_from_slice(b"null"),
        J::Bool(true) => out.extend_from_slice(b"true"),
        J::Bool(false) => out.extend_from_slice(b"false"),
        J::I16(v) => out.extend_from_slice(v.to_string().as_bytes()),
        J::U16(v) => out.extend_from_slice(v.to_string().as_bytes()),
        J::I32(v) => out.extend_from_slice(v.to_string().as_bytes()),
        J::U32(v) => out.extend_from_slice(v.to_string().as_bytes()),
        J::I64(v) => out.extend_from_slice(v.to_string().as_bytes()),
        J::U64(v) => out.extend_from_slice(v.to_string().as_bytes()),
        J::F64(v) => out.extend_from_slice(mysql_double_text(*v).as_bytes()),
        J::String(s) => write_str(out, &utf8(s.str_raw())?),
        J::SmallArray(a) => write_array(out, a.iter())?,
        J::LargeArray(a) => write_array(out, a.iter())?,
        J::SmallObject(o) => write_object(out, o.iter())?,
        J::LargeObject(o) => write_object(out, o.iter())?,
        J::Opaque(opaque) => write_opaque(out, opaque.value_type(), opaque.data_raw())?,
    }
    Ok(())
}

fn utf8(bytes: &[u8]) -> io::Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn write_array<'a>(
    out: &mut Vec<u8>,
    items: impl Iterator<Item = io::Result<jsonb::Value<'a>>>,
) -> io::Result<()> {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_jsonb(out, &item?)?;
    }
    out.push(b']');
    Ok(())
}

fn write_object<'a>(
    out: &mut Vec<u8>,
    members: impl Iterator<Item = io::Result<(jsonb::ObjectKey<'a>, jsonb::Value<'a>)>>,
) -> io::Result<()> {
    out.push(b'{');
    for (i, member) in members.enumerate() {
        let (key, value) = member?;
        if i > 0 {
            out.push(b',');
        }
        write_str(out, &utf8(key.value_raw())?);
        out.push(b':');
        write_jsonb(out, &value)?;
    }
    out.push(b'}');
    Ok(())
}

/// Opaque scalars: DECIMAL as a number with its scale, temporal values as MySQL's
/// `my_TIME_to_str(…, 6)` strings, anything else as `"base64:typeNN:…"`.
fn write_opaque(out: &mut Vec<u8>, ty: ColumnType, data: &[u8]) -> io::Result<()> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    match ty {
        ColumnType::MYSQL_TYPE_NEWDECIMAL => {
            let [precision, scale, bin @ ..] = data else {
                return Err(invalid("short JSON decimal"));
            };
            let decimal = mysql_common::binlog::decimal::Decimal::read_bin(
                bin,
                usize::from(*precision),
                usize::from(*scale),
                false,
            )?;
            out.extend_from_slice(
                etcdsync_core::value::normalise_decimal(&decimal.to_string()).as_bytes(),
            );
        }
        ColumnType::MYSQL_TYPE_DATE
        | ColumnType::MYSQL_TYPE_DATETIME
        | ColumnType::MYSQL_TYPE_TIMESTAMP
        | ColumnType::MYSQL_TYPE_TIME => {
            let packed = data
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(i64::from_le_bytes)
                .ok_or_else(|| invalid("short JSON temporal value"))?;
            write_str(out, &packed_temporal_text(ty, packed));
        }
        other => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(data);
            let text = format!("base64:type{}:{encoded}", other as u8);
            write_str(out, &text);
        }
    }
    Ok(())
}

/// MySQL's packed temporal longlong (TIME_to_longlong_*_packed) as `my_TIME_to_str(t, 6)` text.
pub fn packed_temporal_text(ty: ColumnType, packed: i64) -> String {
    let negative = packed < 0;
    let tmp = packed.unsigned_abs();
    let micros = (tmp % (1 << 24)) as u32;
    let whole = tmp >> 24;
    if ty == ColumnType::MYSQL_TYPE_TIME {
        let hms = whole;
        let hour = ((hms >> 12) % (1 << 10)) as u32;
        let minute = ((hms >> 6) % (1 << 6)) as u8;
        let second = (hms % (1 << 6)) as u8;
        // my_TIME_to_str prints all six fractional digits.
        let sign = if negative { "-" } else { "" };
        return format!("{sign}{hour:02}:{minute:02}:{second:02}.{micros:06}");
    }
    let ymd = whole >> 17;
    let hms = whole % (1 << 17);
    let day = ymd % (1 << 5);
    let ym = ymd >> 5;
    let (year, month) = (ym / 13, ym % 13);
    if ty == ColumnType::MYSQL_TYPE_DATE {
        return format!("{year:04}-{month:02}-{day:02}");
    }
    let (hour, minute, second) = (hms >> 12, (hms >> 6) % (1 << 6), hms % (1 << 6));
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}.{micros:06}")
}

/// A double as MySQL's JSON text: `my_gcvt(x, MY_GCVT_ARG_DOUBLE, 34)` (shortest round-trip
/// digits; fixed notation for decimal exponents −14…15, else `1.5e-20` style), then `.0`
/// appended when the text has neither `.` nor `e`.
pub fn mysql_double_text(x: f64) -> String {
    if !x.is_finite() {
        // MySQL cannot store these in JSON; my_gcvt prints 0 for them.
        return "0.0".into();
    }
    // Shortest round-trip digits and decimal exponent from Rust's `{:e}` (e.g. `-1.25e-7`).
    let sci = format!("{:e}", x);
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let len = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    let decpt = exponent + 1;
    // MY_GCVT_MAX_FIELD_WIDTH = DBL_DIG + 4 + max(5, MAX_DECPT_FOR_F_FORMAT) = 34, one less
    // for the sign.
    let width = if x < 0.0 { 33 } else { 34 };
    const MAX_DECPT_FOR_F_FORMAT: i32 = 15;
    let f_length = if decpt <= 0 {
        len - decpt + 2
    } else if decpt < len {
        len + 1
    } else {
        decpt
    };
    let have_space = f_length <= width;
    let fixed = have_space
        && decpt > -MAX_DECPT_FOR_F_FORMAT
        && (decpt <= MAX_DECPT_FOR_F_FORMAT || len > decpt);
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if fixed {
        if decpt <= 0 {
            out.push_str("0.");
            for _ in decpt..0 {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            for (i, c) in digits.chars().enumerate() {
                if i32::try_from(i).unwrap_or(i32::MAX) == decpt {
                    out.push('.');
                }
                out.push(c);
            }
            for _ in len..decpt {
                out.push('0');
            }
        }
    } else {
        let mut chars = digits.chars();
        if let Some(first) = chars.next() {
            out.push(first);
        }
        let rest: String = chars.collect();
        if !rest.is_empty() {
            out.push('.');
            out.push_str(&rest);
        }
        out.push('e');
        out.push_str(&(decpt - 1).to_string());
    }
    if !out.contains(['.', 'e']) {
        out.push_str(".0");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_common::io::ParseBuf;

    #[test]
    fn validation_is_strict_json() {
        for ok in [
            "{}",
            "[]",
            " {\"a\" : [1, 2.50, -0.5e+3, true, false, null, \"x\\\"\\u00e9\"]} ",
            "\"s\"",
            "0",
            "-1E9",
            "{\"a\":{\"b\":{\"c\":[[[]]]}}}",
            "{\"k\":1,\"k\":2}",
            "\"日本\"",
            "1e400",
        ] {
            assert!(is_valid_json(ok), "{ok}");
        }
        for bad in [
            "",
            "{",
            "{\"a\"}",
            "{\"a\":1,}",
            "[1,]",
            "[1 2]",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "tru",
            "nulls",
            "\"\\x\"",
            "\"a\nb\"",
            "\"\\u12G4\"",
            "{} {}",
            "[}",
            "{]",
            "NaN",
        ] {
            assert!(!is_valid_json(bad), "{bad}");
        }
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(is_valid_json(&deep), "no recursion limit");
        let deep = "{\"a\":".repeat(10_000) + "1e400" + &"}".repeat(10_000);
        assert!(is_valid_json(&deep), "no recursion limit in objects");
        let unclosed = "[".repeat(10_000) + &"]".repeat(9_999);
        assert!(!is_valid_json(&unclosed));
        assert_eq!(json_or_text("[1]".into()), Value::Json("[1]".into()));
        assert_eq!(json_or_text("[1".into()), Value::Text("[1".into()));
    }

    #[test]
    fn doubles_print_like_my_gcvt() {
        for (x, text) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (2.5, "2.5"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (100.0, "100.0"),
            (1e14, "100000000000000.0"),
            (1e15, "1e15"),
            (1e16, "1e16"),
            (123456789012345680.0, "1.2345678901234568e17"),
            (1.5e300, "1.5e300"),
            (0.00001, "0.00001"),
            (1e-14, "0.00000000000001"),
            (1e-15, "0.000000000000001"),
            (1e-16, "1e-16"),
            (-1.25e-20, "-1.25e-20"),
            (3.0e-7, "0.0000003"),
            (1234.5678, "1234.5678"),
            (f64::MAX, "1.7976931348623157e308"),
            (5e-324, "5e-324"),
        ] {
            assert_eq!(mysql_double_text(x), text, "{x:e}");
        }
    }

    fn parse(bytes: &[u8]) -> String {
        let value: jsonb::Value<'_> = ParseBuf(bytes).parse(()).expect("jsonb");
        render_jsonb(&value).expect("render")
    }

    /// A small object: count(2) size(2), key entries (offset 2, len 2), value entries (type 1,
    /// offset-or-inline 2), keys, values. MySQL sorts keys by length, then bytes.
    #[test]
    fn objects_keep_the_stored_key_order() {
        // {"b": 1, "aa": "x", "c": [true, null]} as MySQL stores it: b, c, aa.
        let mut doc = vec![0x00];
        let body: Vec<u8> = {
            let mut b = Vec::new();
            b.extend_from_slice(&3u16.to_le_bytes()); // count
            let size_at = b.len();
            b.extend_from_slice(&0u16.to_le_bytes()); // size, patched below
                                                      // key entries: header 4 + 3*4 keys + 3*3 values = 25 → keys at 25
            for (offset, len) in [(25u16, 1u16), (26, 1), (27, 2)] {
                b.extend_from_slice(&offset.to_le_bytes());
                b.extend_from_slice(&len.to_le_bytes());
            }
            // value entries: b = int16 1 inline; c = small array at 29 (after keys "bcaa");
            // aa = string at 29 + array size.
            b.push(0x05);
            b.extend_from_slice(&1i16.to_le_bytes());
            b.push(0x02);
            b.extend_from_slice(&29u16.to_le_bytes());
            let array = {
                let mut a = Vec::new();
                a.extend_from_slice(&2u16.to_le_bytes());
                a.extend_from_slice(&10u16.to_le_bytes()); // 4 + 2*3
                a.push(0x04);
                a.extend_from_slice(&1u16.to_le_bytes()); // true
                a.push(0x04);
                a.extend_from_slice(&0u16.to_le_bytes()); // null
                a
            };
            b.push(0x0c);
            b.extend_from_slice(&(29 + array.len() as u16).to_le_bytes());
            b.extend_from_slice(b"bcaa");
            b.extend_from_slice(&array);
            b.push(1); // string length (varlen)
            b.push(b'x');
            let size = b.len() as u16;
            b[size_at..size_at + 2].copy_from_slice(&size.to_le_bytes());
            b
        };
        doc.extend_from_slice(&body);
        assert_eq!(parse(&doc), r#"{"b":1,"c":[true,null],"aa":"x"}"#);
    }

    #[test]
    fn scalars_strings_and_opaque_values() {
        // double 1.0 → "1.0"; top-level strings are quoted and escaped like MySQL's.
        let mut d = vec![0x0b];
        d.extend_from_slice(&1.0f64.to_le_bytes());
        assert_eq!(parse(&d), "1.0");
        assert_eq!(
            parse(&[0x0c, 5, b'a', b'"', b'\n', 0x01, b'/']),
            r#""a\"\n\u0001/""#
        );
        let mut u = vec![0x0a];
        u.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(parse(&u), "18446744073709551615");
        assert_eq!(parse(&[0x04, 0x02]), "false");
        // DECIMAL(4,2) -12.30 as an opaque value: precision, scale, decimal binary.
        let bin = {
            let mut v = Vec::new();
            // mysql_common writes the same binary the server does.
            let dec: mysql_common::binlog::decimal::Decimal = "-12.30".parse().expect("decimal");
            dec.write_bin(&mut v).expect("write");
            v
        };
        let mut opaque = vec![
            0x0f,
            ColumnType::MYSQL_TYPE_NEWDECIMAL as u8,
            2 + bin.len() as u8,
        ];
        opaque.extend_from_slice(&[4, 2]);
        opaque.extend_from_slice(&bin);
        assert_eq!(parse(&opaque), "-12.30");
        // Unknown opaque types fall back to base64 like MySQL's printer.
        assert_eq!(
            parse(&[0x0f, ColumnType::MYSQL_TYPE_BLOB as u8, 3, b'a', b'b', b'c']),
            "\"base64:type252:YWJj\""
        );
    }

    #[test]
    fn packed_temporal_values() {
        let pack_datetime = |y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64, us: i64| {
            let ymd = ((y * 13 + mo) << 5) | d;
            let hms = (h << 12) | (mi << 6) | s;
            (((ymd << 17) | hms) << 24) + us
        };
        let dt = pack_datetime(2024, 2, 29, 23, 59, 58, 120_000);
        assert_eq!(
            packed_temporal_text(ColumnType::MYSQL_TYPE_DATETIME, dt),
            "2024-02-29 23:59:58.120000"
        );
        assert_eq!(
            packed_temporal_text(
                ColumnType::MYSQL_TYPE_DATE,
                pack_datetime(7, 1, 2, 0, 0, 0, 0)
            ),
            "0007-01-02"
        );
        let time = |h: i64, mi: i64, s: i64, us: i64| (((h << 12) | (mi << 6) | s) << 24) + us;
        assert_eq!(
            packed_temporal_text(ColumnType::MYSQL_TYPE_TIME, -time(838, 59, 59, 0)),
            "-838:59:59.000000"
        );
        assert_eq!(
            packed_temporal_text(ColumnType::MYSQL_TYPE_TIME, time(1, 2, 3, 5)),
            "01:02:03.000005"
        );
        let mut opaque = vec![0x0f, ColumnType::MYSQL_TYPE_DATE as u8, 8];
        opaque.extend_from_slice(&pack_datetime(2015, 1, 15, 0, 0, 0, 0).to_le_bytes());
        assert_eq!(parse(&opaque), "\"2015-01-15\"");
    }
}
