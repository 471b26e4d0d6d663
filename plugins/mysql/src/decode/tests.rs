use super::*;
use etcdsync_core::encode::json::write_value;

fn json(v: &Value) -> String {
    let mut out = Vec::new();
    write_value(&mut out, v);
    String::from_utf8(out).expect("utf8")
}

fn labels(items: &[&str]) -> Arc<[String]> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn integers_by_signedness() {
    let u = Kind::Int { unsigned: true };
    assert_eq!(
        json(&binlog_plain(&u, MyValue::UInt(u64::MAX))),
        "18446744073709551615"
    );
    assert_eq!(
        json(&snapshot_value(&u, MyValue::UInt(u64::MAX))),
        "18446744073709551615"
    );
    assert_eq!(binlog_plain(&u, MyValue::Int(255)), Value::UInt(255));
    assert_eq!(snapshot_value(&u, MyValue::Int(255)), Value::UInt(255));
    let s = Kind::Int { unsigned: false };
    assert_eq!(binlog_plain(&s, MyValue::Int(-128)), Value::Int(-128));
}

#[test]
fn decimals_keep_scale_and_drop_leading_zeros() {
    assert_eq!(decimal_text(b"12.3400"), "12.3400");
    assert_eq!(decimal_text(b"-0000012.30"), "-12.30");
    assert_eq!(decimal_text(b"0000000000.5"), "0.5");
    assert_eq!(decimal_text(b".5"), "0.5");
    assert_eq!(decimal_text(b"000"), "0");
    assert_eq!(
        json(&binlog_plain(
            &Kind::Decimal,
            MyValue::Bytes(b"-5.00".to_vec())
        )),
        "\"-5.00\""
    );
}

#[test]
fn bits_years_enums_sets() {
    assert_eq!(
        binlog_plain(&Kind::Bit, MyValue::Bytes(vec![0x01, 0x02])),
        Value::UInt(258)
    );
    assert_eq!(
        snapshot_value(&Kind::Bit, MyValue::Bytes(vec![0xff; 8])),
        Value::UInt(u64::MAX)
    );
    assert_eq!(
        binlog_plain(&Kind::Year, MyValue::Bytes(b"1900".to_vec())),
        Value::Int(0)
    );
    assert_eq!(
        binlog_plain(&Kind::Year, MyValue::Bytes(b"2024".to_vec())),
        Value::Int(2024)
    );
    assert_eq!(
        snapshot_value(&Kind::Year, MyValue::Int(2024)),
        Value::Int(2024)
    );
    let e = Kind::Enum(labels(&["small", "large"]));
    assert_eq!(
        binlog_plain(&e, MyValue::Int(2)),
        Value::Text("large".into())
    );
    assert_eq!(
        binlog_plain(&e, MyValue::Int(0)),
        Value::Text(String::new())
    );
    let set = Kind::Set(labels(&["a", "b", "c", "d", "e", "f", "g", "h", "i"]));
    let from_binlog = binlog_plain(&set, MyValue::Bytes(vec![0b0000_0101, 0b1]));
    assert_eq!(json(&from_binlog), "[\"a\",\"c\",\"i\"]");
    let from_snapshot = snapshot_value(&set, MyValue::Bytes(b"a,c,i".to_vec()));
    assert_eq!(from_binlog, from_snapshot);
    assert_eq!(
        json(&snapshot_value(&set, MyValue::Bytes(Vec::new()))),
        "[]"
    );
}

#[test]
fn temporal_values_match_between_sides() {
    // DATETIME(6)
    let dt = MyValue::Date(2024, 2, 29, 23, 59, 58, 120_000);
    assert_eq!(
        json(&snapshot_value(&Kind::DateTime, dt.clone())),
        "\"2024-02-29T23:59:58.12\""
    );
    assert_eq!(
        binlog_plain(&Kind::DateTime, dt.clone()),
        snapshot_value(&Kind::DateTime, dt)
    );
    // TIMESTAMP: binlog seconds since epoch vs. UTC result set parts.
    let secs = 1_709_251_198; // 2024-02-29T23:59:58Z
    let binlog = binlog_plain(
        &Kind::Timestamp,
        MyValue::Bytes(format!("{secs}.120000").into_bytes()),
    );
    let snapshot = snapshot_value(
        &Kind::Timestamp,
        MyValue::Date(2024, 2, 29, 23, 59, 58, 120_000),
    );
    assert_eq!(binlog, snapshot);
    assert_eq!(json(&binlog), "\"2024-02-29T23:59:58.12Z\"");
    assert_eq!(
        binlog_plain(&Kind::Timestamp, MyValue::Bytes(b"0".to_vec())),
        snapshot_value(&Kind::Timestamp, MyValue::Date(0, 0, 0, 0, 0, 0, 0))
    );
    // TIME beyond a day, negative, fractional.
    let t = MyValue::Time(true, 34, 22, 59, 59, 500_000);
    assert_eq!(json(&binlog_plain(&Kind::Time, t)), "\"-838:59:59.5\"");
    assert_eq!(
        json(&snapshot_value(
            &Kind::Time,
            MyValue::Time(false, 0, 1, 2, 3, 0)
        )),
        "\"01:02:03\""
    );
    assert_eq!(
        json(&snapshot_value(
            &Kind::Date,
            MyValue::Date(7, 1, 2, 0, 0, 0, 0)
        )),
        "\"0007-01-02\""
    );
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
    assert_eq!(civil_from_days(19_782), (2024, 2, 29));
}

#[test]
fn text_charsets_and_binary_padding() {
    let latin1 = Kind::Text {
        charset: Charset::Latin1,
    };
    assert_eq!(
        binlog_plain(&latin1, MyValue::Bytes(vec![b'c', 0xe9, 0x80])),
        Value::Text("cé€".into())
    );
    assert_eq!(Charset::from_collation(8), Charset::Latin1);
    assert_eq!(Charset::from_collation(45), Charset::Utf8);
    assert_eq!(Charset::from_collation(33), Charset::Utf8);
    let bin = Kind::Binary { pad_to: 4 };
    assert_eq!(
        binlog_plain(&bin, MyValue::Bytes(vec![1, 0])),
        Value::Bytes(vec![1, 0, 0, 0])
    );
    assert_eq!(
        json(&binlog_plain(&bin, MyValue::Bytes(b"ab".to_vec()))),
        "\"YWIAAA==\""
    );
}

#[test]
fn inet6_text_follows_mariadb() {
    // (stored bytes as hex, MariaDB's text) — checked against MariaDB 10.11.
    for (hex, text) in [
        ("00000000000000000000000000000001", "::1"),
        ("00000000000000000000000000000000", "::"),
        ("00000000000000000000ffff01020304", "::ffff:1.2.3.4"),
        ("00000000000000000000000001020304", "::1.2.3.4"),
        ("20010db8000000000001000000000001", "2001:db8::1:0:0:1"),
        ("20010000000000010000000000000000", "2001:0:0:1::"),
        ("fe800000000000000001000000000000", "fe80::1:0:0:0"),
        ("00000001000200030004000500060007", "::1:2:3:4:5:6:7"),
        ("00010000000200030004000500060007", "1::2:3:4:5:6:7"),
        ("00010002000300040005000600070000", "1:2:3:4:5:6:7::"),
        ("00000000000000000000ffff00000000", "::ffff:0.0.0.0"),
        ("00000000000000000000000000010000", "::0.1.0.0"),
        ("0000000000000000000000000000ffff", "::ffff"),
        ("00000000000000000000000100000000", "::1:0:0"),
        ("00000000000000000001ffff01020304", "::1:ffff:102:304"),
        ("ffff0000000000010002000300040005", "ffff::1:2:3:4:5"),
    ] {
        let bytes: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        let bytes: [u8; 16] = bytes.try_into().expect("16 bytes");
        assert_eq!(inet6_text(&bytes), text, "{hex}");
    }
    // Trailing zero bytes are stripped in the row image.
    assert_eq!(
        binlog_plain(&Kind::Inet6, MyValue::Bytes(vec![0x20, 0x01])),
        Value::Text("2001::".into())
    );
    assert_eq!(
        binlog_plain(&Kind::Inet4, MyValue::Bytes(vec![10, 0, 0])),
        Value::Text("10.0.0.0".into())
    );
    assert_eq!(
        binlog_plain(&Kind::Uuid, MyValue::Bytes(vec![0x12, 0x3e])),
        Value::Text("123e0000-0000-0000-0000-000000000000".into())
    );
}

#[test]
fn mariadb_json_text_is_json_on_both_sides() {
    let kind = Kind::JsonText {
        charset: Charset::Utf8,
    };
    let doc = "{ \"a\" : [1, 2.50], \"é\": {\"x\": null} }";
    let binlog = binlog_plain(&kind, MyValue::Bytes(doc.as_bytes().to_vec()));
    let snapshot = snapshot_value(&kind, MyValue::Bytes(doc.as_bytes().to_vec()));
    assert_eq!(binlog, snapshot);
    assert_eq!(json(&binlog), r#"{"a":[1,2.50],"é":{"x":null}}"#);
    assert_eq!(
        snapshot_value(&kind, MyValue::Bytes(b"not json".to_vec())),
        Value::Text("not json".into())
    );
}

#[test]
fn floats_stay_single_precision() {
    assert_eq!(
        json(&binlog_plain(&Kind::Float, MyValue::Float(1.1))),
        "1.1"
    );
    assert_eq!(
        json(&snapshot_value(&Kind::Double, MyValue::Double(0.1))),
        "0.1"
    );
}

#[test]
fn information_schema_kinds() {
    assert_eq!(
        kind_from_information_schema("bigint", "bigint(20) unsigned"),
        Kind::Int { unsigned: true }
    );
    assert_eq!(
        kind_from_information_schema("varbinary", "varbinary(3)"),
        Kind::Binary { pad_to: 0 }
    );
    assert_eq!(kind_from_information_schema("inet6", "inet6"), Kind::Inet6);
    assert_eq!(kind_from_information_schema("uuid", "uuid"), Kind::Uuid);
    let text = Kind::Text {
        charset: Charset::Latin1,
    };
    assert_eq!(
        with_hint(text.clone(), Some(Hint::Json)),
        Kind::JsonText {
            charset: Charset::Latin1
        }
    );
    assert_eq!(with_hint(text.clone(), None), text);
    assert_eq!(
        with_hint(Kind::Binary { pad_to: 16 }, Some(Hint::Uuid)),
        Kind::Uuid
    );
    assert_eq!(
        with_hint(Kind::Int { unsigned: false }, Some(Hint::Json)),
        Kind::Int { unsigned: false },
        "a stale hint does not apply to another storage"
    );
    assert!(matches!(
        kind_from_information_schema("set", "set('a')"),
        Kind::Set(_)
    ));
    assert_eq!(
        kind_from_information_schema("enum", "enum('a''b','c\\\\d','e,f','')"),
        Kind::Enum(labels(&["a'b", "c\\d", "e,f", ""]))
    );
    assert_eq!(quoted_labels("set('x','y')"), vec!["x", "y"]);
    assert!(quoted_labels("int").is_empty());
}

/// TIME2 bytes as the server writes them (MySQL's `my_time_packed_to_binary`, restated):
/// the packed value's integer part (arithmetic shift) offset by 0x800000, then the fraction
/// as a truncated signed remainder in 1–2 bytes (fsp 1–4), or all 6 bytes offset (fsp 5–6).
fn time2_bytes(negative: bool, h: i64, m: i64, s: i64, micros: i64, fsp: u8) -> Vec<u8> {
    let hms = (h << 12) | (m << 6) | s;
    let unit = [1_000_000, 100_000, 10_000, 1_000, 100, 10, 1][usize::from(fsp)];
    let micros = micros / unit * unit;
    let mut packed = (hms << 24) + micros;
    if negative {
        packed = -packed;
    }
    // `>> 24` floors, C's `%` truncates: a negative value with a fraction is stored as
    // (integer part − 1, negative fraction), which the reader undoes.
    let int = packed >> 24;
    let frac = packed % (1 << 24);
    match fsp {
        0 => ((int + 0x80_0000) as u32).to_be_bytes()[1..].to_vec(),
        1 | 2 => {
            let mut b = ((int + 0x80_0000) as u32).to_be_bytes()[1..].to_vec();
            b.push((frac / 10_000) as i8 as u8);
            b
        }
        3 | 4 => {
            let mut b = ((int + 0x80_0000) as u32).to_be_bytes()[1..].to_vec();
            b.extend_from_slice(&((frac / 100) as i16).to_be_bytes());
            b
        }
        _ => ((packed + 0x8000_0000_0000) as u64).to_be_bytes()[2..].to_vec(),
    }
}

#[test]
fn time2_every_fsp_negative_and_positive() {
    for fsp in 0..=6u8 {
        for negative in [false, true] {
            for (h, m, s, micros) in [
                (0, 0, 0, 0),
                (0, 0, 1, 500_000),
                (0, 0, 0, 10_000),
                (0, 0, 0, 990_000),
                (12, 34, 56, 789_012),
                (838, 59, 59, 0),
                (838, 59, 58, 999_999),
                (25, 0, 0, 100_000),
            ] {
                let bytes = time2_bytes(negative, h, m, s, micros, fsp);
                assert_eq!(bytes.len(), time2_len(fsp));
                let unit = [1_000_000, 100_000, 10_000, 1_000, 100, 10, 1][usize::from(fsp)];
                let micros = micros / unit * unit;
                let zero = h == 0 && m == 0 && s == 0 && micros == 0;
                let want = MyValue::Time(
                    negative && !zero,
                    (h / 24) as u32,
                    (h % 24) as u8,
                    m as u8,
                    s as u8,
                    micros as u32,
                );
                assert_eq!(
                    time2_value(&bytes, fsp),
                    Some(want),
                    "fsp {fsp} {}{h}:{m}:{s}.{micros:06} {bytes:02x?}",
                    if negative { "-" } else { "" }
                );
            }
        }
    }
    // Bytes read from MariaDB 10.11's binlog: '-00:00:01.5' as TIME(2) and TIME(1).
    let t = time2_value(&[0x7f, 0xff, 0xfe, 0xce], 2).expect("time");
    assert_eq!(json(&binlog_plain(&Kind::Time, t)), "\"-00:00:01.5\"");
    assert_eq!(time2_value(&[0x7f, 0xff], 2), None, "short value");
}

#[test]
fn mariadb_compressed_values() {
    use std::io::Write;
    assert_eq!(mariadb_uncompress(&[], 10), Ok(Vec::new()));
    assert_eq!(mariadb_uncompress(b"\x00abc", 10), Ok(b"abc".to_vec()));
    let original = "é".repeat(200).into_bytes();
    for (raw, header) in [(true, 0x8a_u8), (false, 0x82)] {
        let mut stored = vec![header, 0x01, 0x90];
        let compressed = if raw {
            let mut e =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&original).expect("deflate");
            e.finish().expect("deflate")
        } else {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&original).expect("zlib");
            e.finish().expect("zlib")
        };
        stored.extend_from_slice(&compressed);
        assert_eq!(
            mariadb_uncompress(&stored, 65_535),
            Ok(original.clone()),
            "raw {raw}"
        );
        // A wrong length, a too-small column, garbage and unknown headers are errors.
        let mut wrong = stored.clone();
        wrong[2] = 0x91;
        assert!(mariadb_uncompress(&wrong, 65_535).is_err());
        assert!(mariadb_uncompress(&stored, 399).is_err());
        let mut garbage = stored[..3].to_vec();
        garbage.extend_from_slice(b"not deflate");
        assert!(mariadb_uncompress(&garbage, 65_535).is_err());
    }
    assert!(mariadb_uncompress(b"\x10abc", 10).is_err());
    assert!(mariadb_uncompress(b"\x90\x01x", 10).is_err());
}

#[test]
fn compressed_binlog_events_are_named_errors() {
    for t in 165..=171u8 {
        let err = compressed_event_error(t, "mysql-bin.000003:1234").expect("compressed");
        let message = err.to_string();
        assert!(
            message.contains("mysql-bin.000003:1234")
                && message.contains(&format!("type {t}"))
                && message.contains("SET GLOBAL log_bin_compress=OFF"),
            "{message}"
        );
        assert_eq!(err.kind(), etcdsync_core::ErrorKind::Config);
    }
    assert!(compressed_event_error(160, "f:1").is_none());
    assert!(compressed_event_error(172, "f:1").is_none());
}
