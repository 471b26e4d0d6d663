//! Row → compact JSON object, columns in table order (DESIGN §3). The same function serves
//! snapshot and stream, which is what makes their values byte-identical.

use crate::change::TableSchema;
use crate::value::Value;
use base64::Engine as _;

/// A row that cannot be encoded yet.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EncodeError {
    #[error("column {column} of {table} is an unchanged TOAST value that has no stored value to fill it from; run a re-snapshot (delete the checkpoint key) to reload the row")]
    UnresolvedUnchanged { table: String, column: String },
    #[error("column {column} of {table} was not sent by the source (old row without full replica identity)")]
    Missing { table: String, column: String },
    #[error("row of {table} has {got} values but the table has {expected} columns")]
    Arity {
        table: String,
        expected: usize,
        got: usize,
    },
}

/// Encodes a row as a JSON object `{"col":value,…}` in the table's column order.
pub fn encode_row(schema: &TableSchema, row: &[Value]) -> Result<Vec<u8>, EncodeError> {
    if row.len() != schema.columns.len() {
        return Err(EncodeError::Arity {
            table: schema.id.to_string(),
            expected: schema.columns.len(),
            got: row.len(),
        });
    }
    let mut out = Vec::with_capacity(16 * row.len() + 2);
    out.push(b'{');
    for (i, (column, value)) in schema.columns.iter().zip(row).enumerate() {
        match value {
            Value::Unchanged => {
                return Err(EncodeError::UnresolvedUnchanged {
                    table: schema.id.to_string(),
                    column: column.name.clone(),
                })
            }
            Value::Missing => {
                return Err(EncodeError::Missing {
                    table: schema.id.to_string(),
                    column: column.name.clone(),
                })
            }
            _ => {}
        }
        if i > 0 {
            out.push(b',');
        }
        write_str(&mut out, &column.name);
        out.push(b':');
        write_value(&mut out, value);
    }
    out.push(b'}');
    Ok(out)
}

/// Appends one value's JSON rendering.
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null | Value::Unchanged | Value::Missing => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::UInt(u) => out.extend_from_slice(u.to_string().as_bytes()),
        Value::Float32(f) => write_float_text(out, &float32_text(*f), f.is_finite()),
        Value::Float64(f) => write_float_text(out, &float64_text(*f), f.is_finite()),
        Value::Decimal(s)
        | Value::Text(s)
        | Value::Date(s)
        | Value::Time(s)
        | Value::Timestamp(s)
        | Value::TimestampTz(s) => write_str(out, s),
        Value::Bytes(b) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(b);
            write_str(out, &encoded);
        }
        Value::Json(text) => out.extend_from_slice(compact_json(text).as_bytes()),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
    }
}

fn write_float_text(out: &mut Vec<u8>, text: &str, finite: bool) {
    if finite {
        out.extend_from_slice(text.as_bytes());
    } else {
        write_str(out, text);
    }
}

/// Shortest round-trip text of an `f64`; `NaN`, `Infinity`, `-Infinity` for the specials.
pub fn float64_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        ryu::Buffer::new().format_finite(f).to_string()
    }
}

/// Shortest round-trip text of an `f32` (so `1.1f32` is `1.1`, not its `f64` widening).
pub fn float32_text(f: f32) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        ryu::Buffer::new().format_finite(f).to_string()
    }
}

/// Appends a JSON string literal.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for ch in s.chars() {
        match ch {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{08}' => out.extend_from_slice(b"\\b"),
            '\u{0C}' => out.extend_from_slice(b"\\f"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Removes insignificant whitespace from a JSON document, keeping key order, duplicate keys and
/// number text exactly as the database stored them.
pub fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for ch in text.chars() {
        if in_string {
            out.push(ch);
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_string = false;
            }
        } else if ch == '"' {
            in_string = true;
            out.push(ch);
        } else if !matches!(ch, ' ' | '\t' | '\n' | '\r') {
            out.push(ch);
        }
    }
    out
}

/// The text of a value lives with its JSON rendering (it is that rendering, unquoted).
impl Value {
    /// The value as text, as used in key components and templates: the JSON rendering without
    /// string quotes; bytes as lowercase hex.
    pub fn to_text(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::UInt(u) => u.to_string(),
            Value::Float32(f) => float32_text(*f),
            Value::Float64(f) => float64_text(*f),
            Value::Decimal(s)
            | Value::Text(s)
            | Value::Date(s)
            | Value::Time(s)
            | Value::Timestamp(s)
            | Value::TimestampTz(s) => s.clone(),
            Value::Json(s) => compact_json(s),
            Value::Bytes(b) => crate::value::hex(b),
            Value::Array(_) => {
                let mut out = Vec::new();
                write_value(&mut out, self);
                String::from_utf8_lossy(&out).into_owned()
            }
            Value::Unchanged => "(unchanged)".into(),
            Value::Missing => "(missing)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Column, TableId};

    fn render(value: &Value) -> String {
        let mut out = Vec::new();
        write_value(&mut out, value);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn scalars() {
        assert_eq!(render(&Value::Null), "null");
        assert_eq!(render(&Value::Bool(false)), "false");
        assert_eq!(render(&Value::Int(i64::MIN)), "-9223372036854775808");
        assert_eq!(render(&Value::UInt(u64::MAX)), "18446744073709551615");
        assert_eq!(
            render(&Value::Text("a\"b\\c\nd\u{1}é".into())),
            "\"a\\\"b\\\\c\\nd\\u0001é\""
        );
    }

    #[test]
    fn floats_shortest_and_specials_as_strings() {
        assert_eq!(render(&Value::Float64(0.1)), "0.1");
        assert_eq!(render(&Value::Float64(1.0)), "1.0");
        assert_eq!(render(&Value::Float64(1e300)), "1e300");
        assert_eq!(render(&Value::Float64(f64::NAN)), "\"NaN\"");
        assert_eq!(render(&Value::Float64(f64::INFINITY)), "\"Infinity\"");
        assert_eq!(render(&Value::Float64(f64::NEG_INFINITY)), "\"-Infinity\"");
        assert_eq!(render(&Value::Float32(1.1)), "1.1");
        assert_eq!(render(&Value::Float32(f32::NEG_INFINITY)), "\"-Infinity\"");
        // Every rendered finite float parses back to the same value.
        for f in [0.1f64, 2.0 / 3.0, 1e-7, 123456789.125, -0.0] {
            let text = render(&Value::Float64(f));
            assert_eq!(text.parse::<f64>().expect("parse"), f, "{text}");
        }
    }

    #[test]
    fn decimals_keep_scale() {
        assert_eq!(render(&Value::Decimal("12.3400".into())), "\"12.3400\"");
        assert_eq!(render(&Value::Decimal("-0.000".into())), "\"-0.000\"");
    }

    #[test]
    fn bytes_are_padded_base64() {
        assert_eq!(render(&Value::Bytes(vec![])), "\"\"");
        assert_eq!(render(&Value::Bytes(b"a".to_vec())), "\"YQ==\"");
        assert_eq!(render(&Value::Bytes(vec![0xfb, 0xff])), "\"+/8=\"");
    }

    #[test]
    fn json_is_embedded_compact() {
        let doc = "{ \"b\" : [1, 2.50], \"a\" : \"x y\\\" z\" }";
        assert_eq!(
            render(&Value::Json(doc.into())),
            "{\"b\":[1,2.50],\"a\":\"x y\\\" z\"}"
        );
        assert_eq!(render(&Value::Json("\"s\"".into())), "\"s\"");
    }

    #[test]
    fn arrays_nest_with_nulls() {
        let v = Value::Array(vec![
            Value::Array(vec![Value::Int(1), Value::Null]),
            Value::Array(vec![Value::Int(3), Value::Int(4)]),
        ]);
        assert_eq!(render(&v), "[[1,null],[3,4]]");
    }

    #[test]
    fn temporal_values_are_strings() {
        assert_eq!(render(&Value::Date("infinity".into())), "\"infinity\"");
        assert_eq!(
            render(&Value::TimestampTz("2024-01-02T03:04:05.5Z".into())),
            "\"2024-01-02T03:04:05.5Z\""
        );
    }

    fn schema() -> TableSchema {
        TableSchema::new(
            TableId::new("public", "t"),
            vec![Column::new("id", "int4"), Column::new("name", "text")],
            vec![0],
        )
    }

    #[test]
    fn rows_are_objects_in_column_order() {
        let row = vec![Value::Int(1), Value::Text("x".into())];
        assert_eq!(
            encode_row(&schema(), &row).expect("encode"),
            b"{\"id\":1,\"name\":\"x\"}"
        );
    }

    #[test]
    fn unresolved_values_and_arity_are_errors() {
        let err = encode_row(&schema(), &[Value::Int(1), Value::Unchanged]).expect_err("unchanged");
        assert!(err.to_string().contains("column name of public.t"), "{err}");
        let err = encode_row(&schema(), &[Value::Int(1)]).expect_err("arity");
        assert!(matches!(
            err,
            EncodeError::Arity {
                expected: 2,
                got: 1,
                ..
            }
        ));
    }
}
