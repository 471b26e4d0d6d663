//! PostgreSQL text values → core `Value` by type (DESIGN §3). COPY text and pgoutput text both
//! go through [`parse_value`], so a row reads byte-identically from snapshot and stream. It never
//! fails: text that does not have the expected shape is kept as a string (no row is dropped).

use etcdsync_core::value::normalise_fraction;
use etcdsync_core::Value;

/// How a column's text is read. Domains resolve to their base type; enums, ranges and every
/// type without its own rule are `Text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeKind {
    Bool,
    Int,
    Float32,
    Float64,
    Numeric,
    Text,
    Bytes,
    Json,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    /// An array; `delim` is the element type's delimiter (`,` for all but `box`).
    Array {
        elem: Box<TypeKind>,
        delim: u8,
    },
}

/// The kind of a built-in scalar type, by OID (`pg_type.h`), or `None` when the catalog must be
/// asked (arrays, domains, enums, extension types).
pub fn builtin_kind(oid: u32) -> Option<TypeKind> {
    Some(match oid {
        16 => TypeKind::Bool,
        20 | 21 | 23 | 26 | 28 | 29 => TypeKind::Int, // int8, int2, int4, oid, xid, cid
        700 => TypeKind::Float32,
        701 => TypeKind::Float64,
        1700 => TypeKind::Numeric,
        17 => TypeKind::Bytes,
        114 | 3802 => TypeKind::Json,
        1082 => TypeKind::Date,
        1083 => TypeKind::Time,
        1114 => TypeKind::Timestamp,
        1184 => TypeKind::TimestampTz,
        // text, varchar, bpchar, name, "char", uuid, inet, cidr, macaddr, money, xml,
        // interval, timetz, bit, varbit and friends
        25 | 1043 | 1042 | 19 | 18 | 2950 | 869 | 650 | 829 | 774 | 790 | 142 | 1186 | 1266
        | 1560 | 1562 => TypeKind::Text,
        _ => return None,
    })
}

/// Converts one column's text to a value.
pub fn parse_value(kind: &TypeKind, text: &str) -> Value {
    match kind {
        TypeKind::Bool => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => Value::Text(text.to_string()),
        },
        TypeKind::Int => text
            .parse()
            .map_or_else(|_| Value::Text(text.to_string()), Value::Int),
        TypeKind::Float32 => parse_float(text).map_or_else(
            || Value::Text(text.to_string()),
            // Narrowing is exact: the text was rendered from an f32 and round-trips.
            |f| Value::Float32(text.parse::<f32>().unwrap_or(f as f32)),
        ),
        TypeKind::Float64 => {
            parse_float(text).map_or_else(|| Value::Text(text.to_string()), Value::Float64)
        }
        TypeKind::Numeric => Value::Decimal(text.to_string()),
        TypeKind::Text => Value::Text(text.to_string()),
        TypeKind::Bytes => {
            parse_bytea(text).map_or_else(|| Value::Text(text.to_string()), Value::Bytes)
        }
        TypeKind::Json => Value::Json(text.to_string()),
        TypeKind::Date => Value::Date(text.to_string()),
        TypeKind::Time => Value::Time(normalise_time(text)),
        TypeKind::Timestamp => Value::Timestamp(timestamp(text)),
        TypeKind::TimestampTz => match timestamptz(text) {
            Some(s) => Value::TimestampTz(s),
            None => Value::Text(text.to_string()),
        },
        TypeKind::Array { elem, delim } => {
            parse_array(text, elem, *delim).unwrap_or_else(|| Value::Text(text.to_string()))
        }
    }
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ if text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E')) =>
        {
            text.parse().ok()
        }
        _ => None,
    }
}

/// `\x0a1b…` (bytea_output = hex).
fn parse_bytea(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    hex.chunks(2)
        .map(|pair| {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

/// `HH:MM:SS[.ffffff]` with trailing fraction zeros removed.
fn normalise_time(text: &str) -> String {
    match text.split_once('.') {
        Some((whole, digits)) if digits.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{whole}{}", normalise_fraction(digits))
        }
        _ => text.to_string(),
    }
}

/// `YYYY-MM-DD HH:MM:SS[.f][ BC]` → `YYYY-MM-DDTHH:MM:SS[.f][ BC]`; `infinity` unchanged.
fn timestamp(text: &str) -> String {
    match text.split_once(' ') {
        Some((date, rest)) => {
            let (time, era) = match rest.split_once(' ') {
                Some((time, era)) => (time, Some(era)),
                None => (rest, None),
            };
            let mut out = format!("{date}T{}", normalise_time(time));
            if let Some(era) = era {
                out.push(' ');
                out.push_str(era);
            }
            out
        }
        None => text.to_string(),
    }
}

/// `YYYY-MM-DD HH:MM:SS[.f]+00` (TimeZone = UTC) → `YYYY-MM-DDTHH:MM:SS[.f]Z`; `infinity`
/// unchanged. Another offset means the session setting was overridden: converted to UTC.
fn timestamptz(text: &str) -> Option<String> {
    if text == "infinity" || text == "-infinity" {
        return Some(text.to_string());
    }
    let (date, rest) = text.split_once(' ')?;
    let (rest, era) = match rest.split_once(' ') {
        Some((rest, era)) => (rest, Some(era)),
        None => (rest, None),
    };
    let sign_at = rest.rfind(['+', '-'])?;
    let (time, offset) = rest.split_at(sign_at);
    let offset_secs = parse_offset(offset)?;
    let era = era.map(|e| format!(" {e}")).unwrap_or_default();
    if offset_secs == 0 {
        return Some(format!("{date}T{}Z{era}", normalise_time(time)));
    }
    if !era.is_empty() {
        return None;
    }
    shift_to_utc(date, time, offset_secs)
}

fn parse_offset(offset: &str) -> Option<i64> {
    let negative = offset.starts_with('-');
    let mut parts = offset[1..].split(':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    let s: i64 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    let total = h * 3600 + m * 60 + s;
    Some(if negative { -total } else { total })
}

/// Subtracts a UTC offset from a civil date and time (proleptic Gregorian, AD years).
fn shift_to_utc(date: &str, time: &str, offset_secs: i64) -> Option<String> {
    let mut d = date.split('-');
    let (y, mo, da): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let (h, mi, s): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + s - offset_secs;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, mo, da) = civil_from_days(days);
    Some(format!(
        "{y:04}-{mo:02}-{da:02}T{:02}:{:02}:{:02}{}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        normalise_fraction(frac)
    ))
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Parses an array literal (`{1,2}`, `{{"a b",NULL},{c,"d\"e"}}`) into nested `Value::Array`s,
/// each element read with `elem`. An array whose lower bounds are not 1 (PostgreSQL then
/// prefixes them: `[0:1]={1,2}`) stays its text form, a string, so the bounds are not lost.
pub fn parse_array(text: &str, elem: &TypeKind, delim: u8) -> Option<Value> {
    if text.starts_with('[') {
        let (bounds, body) = text.split_once('=')?;
        let well_formed = bounds
            .bytes()
            .all(|b| b.is_ascii_digit() || b"[]:-".contains(&b));
        let mut pos = 0;
        let parses = parse_array_level(body.as_bytes(), &mut pos, elem, delim).is_some();
        return (well_formed && parses).then(|| Value::Text(text.to_string()));
    }
    let body = text;
    let bytes = body.as_bytes();
    let mut pos = 0;
    let value = parse_array_level(bytes, &mut pos, elem, delim)?;
    skip_ws(bytes, &mut pos);
    (pos == bytes.len()).then_some(value)
}

fn skip_ws(bytes: &[u8], pos: &mut usize) {
    while *pos < bytes.len() && bytes[*pos].is_ascii_whitespace() {
        *pos += 1;
    }
}

fn parse_array_level(bytes: &[u8], pos: &mut usize, elem: &TypeKind, delim: u8) -> Option<Value> {
    skip_ws(bytes, pos);
    if bytes.get(*pos) != Some(&b'{') {
        return None;
    }
    *pos += 1;
    let mut items = Vec::new();
    skip_ws(bytes, pos);
    if bytes.get(*pos) == Some(&b'}') {
        *pos += 1;
        return Some(Value::Array(items));
    }
    loop {
        skip_ws(bytes, pos);
        match bytes.get(*pos)? {
            b'{' => items.push(parse_array_level(bytes, pos, elem, delim)?),
            b'"' => {
                *pos += 1;
                let mut raw = Vec::new();
                loop {
                    match *bytes.get(*pos)? {
                        b'\\' => {
                            raw.push(*bytes.get(*pos + 1)?);
                            *pos += 2;
                        }
                        b'"' => {
                            *pos += 1;
                            break;
                        }
                        b => {
                            raw.push(b);
                            *pos += 1;
                        }
                    }
                }
                items.push(parse_value(elem, &String::from_utf8(raw).ok()?));
            }
            _ => {
                let start = *pos;
                let mut raw = Vec::new();
                while let Some(&b) = bytes.get(*pos) {
                    if b == delim || b == b'}' {
                        break;
                    }
                    if b == b'\\' {
                        raw.push(*bytes.get(*pos + 1)?);
                        *pos += 2;
                    } else {
                        raw.push(b);
                        *pos += 1;
                    }
                }
                if *pos == start {
                    return None;
                }
                let token = String::from_utf8(raw).ok()?;
                let token = token.trim();
                if token.eq_ignore_ascii_case("NULL") {
                    items.push(Value::Null);
                } else {
                    items.push(parse_value(elem, token));
                }
            }
        }
        skip_ws(bytes, pos);
        match bytes.get(*pos)? {
            b'}' => {
                *pos += 1;
                return Some(Value::Array(items));
            }
            &b if b == delim => *pos += 1,
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdsync_core::encode::json::write_value;

    fn json(kind: &TypeKind, text: &str) -> String {
        let mut out = Vec::new();
        write_value(&mut out, &parse_value(kind, text));
        String::from_utf8(out).expect("utf8")
    }

    fn array(elem: TypeKind) -> TypeKind {
        TypeKind::Array {
            elem: Box::new(elem),
            delim: b',',
        }
    }

    #[test]
    fn scalars() {
        assert_eq!(json(&TypeKind::Bool, "t"), "true");
        assert_eq!(json(&TypeKind::Bool, "f"), "false");
        assert_eq!(
            json(&TypeKind::Int, "-9223372036854775808"),
            "-9223372036854775808"
        );
        assert_eq!(json(&TypeKind::Numeric, "12.3400"), "\"12.3400\"");
        assert_eq!(json(&TypeKind::Numeric, "NaN"), "\"NaN\"");
        assert_eq!(json(&TypeKind::Text, "a\"b"), "\"a\\\"b\"");
        assert_eq!(
            json(&TypeKind::Text, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""
        );
    }

    #[test]
    fn floats_and_specials() {
        assert_eq!(json(&TypeKind::Float64, "0.1"), "0.1");
        assert_eq!(json(&TypeKind::Float64, "1e+300"), "1e300");
        assert_eq!(json(&TypeKind::Float64, "NaN"), "\"NaN\"");
        assert_eq!(json(&TypeKind::Float64, "Infinity"), "\"Infinity\"");
        assert_eq!(json(&TypeKind::Float64, "-Infinity"), "\"-Infinity\"");
        assert_eq!(json(&TypeKind::Float32, "1.1"), "1.1");
        assert_eq!(json(&TypeKind::Float32, "3.4028235e+38"), "3.4028235e38");
        assert_eq!(json(&TypeKind::Float32, "-Infinity"), "\"-Infinity\"");
        assert_eq!(json(&TypeKind::Float64, "-0"), "-0.0");
    }

    #[test]
    fn bytea_hex() {
        assert_eq!(
            parse_value(&TypeKind::Bytes, "\\x00ff10"),
            Value::Bytes(vec![0, 0xff, 0x10])
        );
        assert_eq!(json(&TypeKind::Bytes, "\\x"), "\"\"");
        assert_eq!(json(&TypeKind::Bytes, "\\x61"), "\"YQ==\"");
    }

    #[test]
    fn json_documents() {
        assert_eq!(
            json(&TypeKind::Json, "{\"a\": [1, 2.50]}"),
            "{\"a\":[1,2.50]}"
        );
        assert_eq!(json(&TypeKind::Json, "\"s\""), "\"s\"");
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(json(&TypeKind::Date, "2024-02-29"), "\"2024-02-29\"");
        assert_eq!(json(&TypeKind::Date, "infinity"), "\"infinity\"");
        assert_eq!(json(&TypeKind::Date, "-infinity"), "\"-infinity\"");
        assert_eq!(json(&TypeKind::Time, "04:05:06.789"), "\"04:05:06.789\"");
        assert_eq!(json(&TypeKind::Time, "04:05:06.500000"), "\"04:05:06.5\"");
        assert_eq!(json(&TypeKind::Time, "04:05:06"), "\"04:05:06\"");
        assert_eq!(
            json(&TypeKind::Timestamp, "2024-01-02 03:04:05.25"),
            "\"2024-01-02T03:04:05.25\""
        );
        assert_eq!(json(&TypeKind::Timestamp, "infinity"), "\"infinity\"");
        assert_eq!(
            json(&TypeKind::TimestampTz, "2024-01-02 03:04:05.25+00"),
            "\"2024-01-02T03:04:05.25Z\""
        );
        assert_eq!(
            json(&TypeKind::TimestampTz, "2024-01-02 03:04:05+00"),
            "\"2024-01-02T03:04:05Z\""
        );
        assert_eq!(json(&TypeKind::TimestampTz, "-infinity"), "\"-infinity\"");
        assert_eq!(
            json(&TypeKind::TimestampTz, "2024-01-01 01:30:00.5+02"),
            "\"2023-12-31T23:30:00.5Z\""
        );
        assert_eq!(
            json(&TypeKind::TimestampTz, "2024-02-28 23:00:00-05:30"),
            "\"2024-02-29T04:30:00Z\""
        );
        // interval with IntervalStyle = iso_8601 is a plain string
        assert_eq!(
            json(&TypeKind::Text, "P1Y2M3DT4H5M6.5S"),
            "\"P1Y2M3DT4H5M6.5S\""
        );
    }

    #[test]
    fn arrays() {
        assert_eq!(json(&array(TypeKind::Int), "{1,2,NULL}"), "[1,2,null]");
        assert_eq!(json(&array(TypeKind::Int), "{}"), "[]");
        assert_eq!(
            json(&array(TypeKind::Int), "{{1,2},{3,NULL}}"),
            "[[1,2],[3,null]]"
        );
        assert_eq!(
            json(&array(TypeKind::Int), "[0:1]={7,8}"),
            "\"[0:1]={7,8}\"",
            "explicit lower bounds are kept as the text form"
        );
        assert_eq!(
            json(
                &array(TypeKind::Text),
                r#"{"a b","c\"d",NULL,"NULL",x\,y,"{}"}"#
            ),
            r#"["a b","c\"d",null,"NULL","x,y","{}"]"#
        );
        assert_eq!(
            json(&array(TypeKind::Float64), "{NaN,-Infinity,1.5}"),
            "[\"NaN\",\"-Infinity\",1.5]"
        );
        assert_eq!(
            json(&array(TypeKind::Bytes), r#"{"\\x6162",NULL}"#),
            "[\"YWI=\",null]"
        );
        assert_eq!(
            json(&array(TypeKind::Json), r#"{"{\"a\": 1}","[1, 2]"}"#),
            "[{\"a\":1},[1,2]]"
        );
        assert_eq!(
            json(
                &array(TypeKind::TimestampTz),
                r#"{"2024-01-02 03:04:05+00",infinity}"#
            ),
            "[\"2024-01-02T03:04:05Z\",\"infinity\"]"
        );
        let boxes = TypeKind::Array {
            elem: Box::new(TypeKind::Text),
            delim: b';',
        };
        assert_eq!(
            json(&boxes, "{(1,1),(0,0);(2,2),(1,1)}"),
            "[\"(1,1),(0,0)\",\"(2,2),(1,1)\"]"
        );
        // malformed input is kept as text, never dropped
        assert_eq!(json(&array(TypeKind::Int), "{1,2"), "\"{1,2\"");
    }

    #[test]
    fn unexpected_text_falls_back_to_string() {
        assert_eq!(json(&TypeKind::Int, "abc"), "\"abc\"");
        assert_eq!(json(&TypeKind::Bytes, "plain"), "\"plain\"");
    }
}
