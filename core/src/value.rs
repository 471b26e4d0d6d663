//! The typed column value every source produces and every transform sees (DESIGN §3).
//! Temporal and decimal values hold their canonical text, already normalised by the source with
//! the helpers below, so snapshot and stream render byte-identical JSON.

/// One column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    /// Single precision; rendered with the shortest text that round-trips as `f32`.
    Float32(f32),
    Float64(f64),
    /// Exact decimal text with the stored scale, e.g. `12.3400`.
    Decimal(String),
    /// Text, enum labels, uuid, inet, money, interval and any type without its own variant.
    Text(String),
    Bytes(Vec<u8>),
    /// A JSON document as text; emitted as JSON (compacted), never as a string.
    Json(String),
    /// `YYYY-MM-DD`, `infinity` or `-infinity`.
    Date(String),
    /// `HH:MM:SS[.f]`.
    Time(String),
    /// `YYYY-MM-DDTHH:MM:SS[.f]`.
    Timestamp(String),
    /// `YYYY-MM-DDTHH:MM:SS[.f]Z`, always UTC.
    TimestampTz(String),
    /// Arrays (nested for more dimensions) and MySQL SET members.
    Array(Vec<Value>),
    /// A TOASTed column the stream did not resend because it did not change. The sink fills it
    /// from the value it holds; it is never written as such.
    Unchanged,
    /// A column of an old row the source did not send (old rows carry only the key unless the
    /// table's replica identity / row image is full).
    Missing,
}

impl Value {
    /// Roughly the memory the value holds (its text or bytes; 8 for scalars), for bounding
    /// buffers by size as well as by count.
    pub fn approx_bytes(&self) -> usize {
        match self {
            Value::Decimal(s)
            | Value::Text(s)
            | Value::Json(s)
            | Value::Date(s)
            | Value::Time(s)
            | Value::Timestamp(s)
            | Value::TimestampTz(s) => s.len() + 8,
            Value::Bytes(b) => b.len() + 8,
            Value::Array(items) => items.iter().map(Value::approx_bytes).sum::<usize>() + 8,
            _ => 8,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// Decimal text as sources store it: the scale kept, a `+` and leading zeros of the integer part
/// removed (`-0012.30` → `-12.30`, `.5` → `0.5`, `000` → `0`).
pub fn normalise_decimal(text: &str) -> String {
    let text = text.trim();
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    match frac {
        Some(frac) => format!("{sign}{int}.{frac}"),
        None => format!("{sign}{int}"),
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Renders `HH:MM:SS[.f]` from parts: microseconds with trailing zeros removed, omitted when 0.
pub fn format_time(hour: u32, minute: u32, second: u32, micros: u32) -> String {
    let mut out = format!("{hour:02}:{minute:02}:{second:02}");
    push_fraction(&mut out, micros);
    out
}

/// Renders `YYYY-MM-DD`.
pub fn format_date(year: i32, month: u32, day: u32) -> String {
    format!("{year:04}-{month:02}-{day:02}")
}

/// Appends `.f` for a fraction of a second given in microseconds (trailing zeros removed).
pub fn push_fraction(out: &mut String, micros: u32) {
    if micros == 0 {
        return;
    }
    let digits = format!("{micros:06}");
    out.push('.');
    out.push_str(digits.trim_end_matches('0'));
}

/// Normalises a fractional-seconds suffix given as digits (`"120"` → `".12"`, `"000"` → `""`).
pub fn normalise_fraction(digits: &str) -> String {
    let trimmed = digits.trim_end_matches('0');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!(".{trimmed}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_drop_trailing_zeros() {
        assert_eq!(format_time(1, 2, 3, 0), "01:02:03");
        assert_eq!(format_time(1, 2, 3, 500_000), "01:02:03.5");
        assert_eq!(format_time(23, 59, 59, 1), "23:59:59.000001");
        assert_eq!(format_time(838, 59, 59, 120), "838:59:59.00012");
        assert_eq!(normalise_fraction("120"), ".12");
        assert_eq!(normalise_fraction("000"), "");
        assert_eq!(normalise_fraction(""), "");
    }

    #[test]
    fn dates_pad_year_month_day() {
        assert_eq!(format_date(7, 1, 2), "0007-01-02");
        assert_eq!(format_date(2024, 12, 31), "2024-12-31");
    }

    #[test]
    fn text_forms() {
        assert_eq!(Value::Bytes(vec![0x00, 0xAB, 0x10]).to_text(), "00ab10");
        assert_eq!(Value::Int(-5).to_text(), "-5");
        assert_eq!(Value::UInt(u64::MAX).to_text(), "18446744073709551615");
        assert_eq!(Value::Float64(f64::NAN).to_text(), "NaN");
        assert_eq!(Value::Float32(1.1).to_text(), "1.1");
        assert_eq!(Value::Decimal("12.3400".into()).to_text(), "12.3400");
        assert_eq!(Value::Json("{ \"a\" : 1 }".into()).to_text(), "{\"a\":1}");
        assert_eq!(Value::Bool(true).to_text(), "true");
    }
}
