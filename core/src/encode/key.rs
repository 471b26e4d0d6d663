//! etcd keys of rows (DESIGN §2): `{prefix}/{schema}/{table}/{pk1}[/{pk2}…]`, each component the
//! value's canonical text with `%`, `/` and bytes outside 0x20..0x7F percent-encoded.

use crate::change::TableId;
use crate::value::Value;

/// Percent-encodes one key component: `%`, `/`, bytes < 0x20 and bytes ≥ 0x7F (UTF-8 bytes of
/// non-ASCII characters), as `%XX` with uppercase hex.
pub fn escape_component(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b == b'%' || b == b'/' || !(0x20..0x7F).contains(&b) {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        } else {
            out.push(b as char);
        }
    }
    out
}

/// Reverses [`escape_component`]; `None` when the text is not a valid escaped component.
pub fn unescape_component(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A key component for a value (bytes as lowercase hex, everything else its canonical text).
pub fn component(value: &Value) -> String {
    escape_component(&value.to_text())
}

/// The prefix without a trailing `/`, so joining never doubles slashes.
pub fn normalise_prefix(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

/// `{prefix}/{schema}/{table}/` — every key of the table starts with this (trailing slash
/// included, so `users` never matches `users2`).
pub fn table_prefix(prefix: &str, table: &TableId) -> String {
    format!(
        "{}/{}/{}/",
        normalise_prefix(prefix),
        escape_component(&table.schema),
        escape_component(&table.table)
    )
}

/// The default key of a row given its key column values in key order.
pub fn row_key<'a>(
    prefix: &str,
    table: &TableId,
    key: impl IntoIterator<Item = &'a Value>,
) -> String {
    let mut out = table_prefix(prefix, table);
    for (i, value) in key.into_iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(&component(value));
    }
    out
}

/// Whether a transform's key (relative to the data prefix, `svc/name`) can be a row's key: not
/// empty and no empty `/`-separated component. A key template renders an empty component when a
/// column it names is empty in the row (`{service}/{name}` with name = '' → `svc/`); such a key
/// would not name the row as a path, so sinks treat it as the row's error (`on_invalid_key`).
pub fn is_valid_relative_key(relative: &str) -> bool {
    relative.split('/').all(|component| !component.is_empty())
}

/// True when one prefix is a prefix of the other (as etcd compares keys: byte-wise).
pub fn prefixes_overlap(a: &str, b: &str) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The end of the etcd range that holds every key starting with `prefix` (etcd's `range_end`).
pub fn prefix_range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_percent_slash_control_and_non_ascii() {
        assert_eq!(escape_component("a/b%c"), "a%2Fb%25c");
        assert_eq!(escape_component("tab\there"), "tab%09here");
        assert_eq!(escape_component("del\u{7f}"), "del%7F");
        assert_eq!(escape_component("é"), "%C3%A9");
        assert_eq!(escape_component("plain-text_ ok.~"), "plain-text_ ok.~");
    }

    #[test]
    fn relative_keys_with_an_empty_component_are_invalid() {
        for valid in ["a", "billing/timeout", "a%2Fb/c", "x/y/z"] {
            assert!(is_valid_relative_key(valid), "{valid}");
        }
        for invalid in ["", "/", "billing/", "/timeout", "a//b", "/abs/key"] {
            assert!(!is_valid_relative_key(invalid), "{invalid:?}");
        }
    }

    #[test]
    fn unescape_round_trips() {
        for s in ["a/b%c", "é/ü", "x\u{1}y", ""] {
            assert_eq!(unescape_component(&escape_component(s)).as_deref(), Some(s));
        }
        assert_eq!(unescape_component("%zz"), None);
        assert_eq!(unescape_component("%2"), None);
    }

    #[test]
    fn row_keys_join_components_in_key_order() {
        let table = TableId::new("public", "orders");
        let key = [Value::Int(7), Value::Text("a/b".into())];
        assert_eq!(
            row_key("/etcdsync", &table, &key),
            "/etcdsync/public/orders/7/a%2Fb"
        );
        assert_eq!(
            row_key("/etcdsync/", &table, &key[..1]),
            "/etcdsync/public/orders/7"
        );
        let bin = [Value::Bytes(vec![0xde, 0xad])];
        assert_eq!(row_key("/p", &table, &bin), "/p/public/orders/dead");
    }

    #[test]
    fn table_prefix_escapes_names_and_ends_with_slash() {
        assert_eq!(
            table_prefix("/p", &TableId::new("my/db", "t%1")),
            "/p/my%2Fdb/t%251/"
        );
    }

    #[test]
    fn overlap_and_range_end() {
        assert!(prefixes_overlap("/etcdsync", "/etcdsync-meta/x"));
        assert!(!prefixes_overlap("/etcdsync/", "/etcdsync-meta/x"));
        assert_eq!(prefix_range_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_range_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
