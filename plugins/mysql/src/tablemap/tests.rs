use super::*;
use etcdsync_core::tables::TableSelection;

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

/// A TABLE_MAP event of MariaDB 10.11 (body, no checksum) for
/// `probe.g (id INT PRIMARY KEY, g GEOMETRY, a VARCHAR(10) cp1251, p POINT, ip INET6,
/// u UUID, v4 INET4, b BLOB, e ENUM('x','y') latin2, t TEXT gbk, c CHAR(3) ucs2, j JSON,
/// vc VARCHAR(100) COMPRESSED latin1, bc BLOB COMPRESSED, tc TEXT COMPRESSED utf16)`.
const PROBE_TABLE_MAP: &str = "12000000000001000570726f6265000167000f03ff0ffffefefefcfefcfefc8d8c8c15040a0004fe10fe10fe0402f70102fe060465000202fe7f010100020d3f0133071c0823092e0a080c3607020001042402696401670161017002697001750276340162016501740163016a0276630262630274630a010906050201780179080100";
/// The row image (null bitmap and values) of its first row, from the WRITE_ROWS event:
/// `(1, POINT(1 2), 'абв', POINT(3 4), '::1', '123e4567-…', '1.2.3.4', x'01', 'y', '中文',
/// 'ab', '{}', REPEAT('a', 90), REPEAT('b', 300), REPEAT('z', 200))`.
const PROBE_ROW: &str = "00800100000019000000000000000101000000000000000000f03f000000000000004003e0e1e2190000000000000001010000000000000000000840000000000000104010000000000000000000000000000000010f123e4567e89b12d3a45642661417400401020304010001020400d6d0cec40400610062020000007b7d5b006161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161610a008a012c4b4a1a05c402000c008a019063a862188583080200";
/// Its second row: `(2, NULL, '', NULL, …, '', '', NULL, 'x', '', 'q')`.
const PROBE_ROW_2: &str = "fa89020000000000000002007800000300000071";

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

fn probe_table_map() -> TableMapEvent<'static> {
    use mysql_common::binlog::consts::BinlogVersion;
    use mysql_common::binlog::events::FormatDescriptionEvent;
    use mysql_common::binlog::BinlogCtx;
    let bytes = unhex(PROBE_TABLE_MAP);
    let fde = FormatDescriptionEvent::new(BinlogVersion::Version4);
    let ctx = BinlogCtx::new(bytes.len(), &fde, 19);
    let tme: TableMapEvent<'_> = ParseBuf(&bytes).parse(ctx).expect("table map");
    tme.into_owned()
}

fn probe_hints() -> ColumnHints {
    ColumnHints::from_schema([("ip", "inet6"), ("u", "uuid"), ("v4", "inet4")], []).from_mariadb()
}

fn selection(yaml: &str) -> TableSelection {
    serde_yaml::from_str(yaml).expect("selection")
}

/// The probe table as `map_table` describes it with these hints.
fn probe_info(hints: &ColumnHints) -> Arc<TableInfo> {
    let tme = probe_table_map();
    match map_table(&tme, &selection("{ include: [\"probe.*\"] }"), hints).expect("map") {
        Mapped::Synced(info) => info,
        Mapped::Ignored => panic!("the table is synced"),
    }
}

fn text(charset: Charset) -> Kind {
    Kind::Text { charset }
}

#[test]
fn raw_column_types_and_metadata_include_compressed_columns() {
    let columns = raw_columns(&probe_table_map()).expect("columns");
    let types: Vec<u8> = columns.iter().map(|c| c.type_code).collect();
    assert_eq!(
        types,
        [3, 255, 15, 255, 254, 254, 254, 252, 247, 252, 254, 252, 141, 140, 140],
        "ENUM resolved from STRING; 141/140 are MariaDB's VARCHAR/BLOB COMPRESSED"
    );
    assert_eq!(
        columns[12].meta,
        [0x65, 0x00],
        "VARCHAR(100) COMPRESSED: 101 bytes"
    );
    assert_eq!(columns[13].meta, [2]);
    assert_eq!(columns[10].meta, [0xfe, 6], "CHAR(3) ucs2");
}

#[test]
fn metadata_lengths_by_type() {
    assert_eq!(metadata_len(3, &[]), Some(0));
    assert_eq!(metadata_len(19, &[6]), Some(1), "TIME2: fsp");
    assert_eq!(metadata_len(MARIADB_BLOB_COMPRESSED, &[2]), Some(1));
    assert_eq!(metadata_len(MARIADB_VARCHAR_COMPRESSED, &[1, 0]), Some(2));
    assert_eq!(
        metadata_len(244, &[15, 0, 1, 0]),
        Some(4),
        "array of VARCHAR"
    );
    assert_eq!(metadata_len(244, &[8]), Some(1), "array of BIGINT");
    assert_eq!(metadata_len(244, &[]), None);
    assert_eq!(metadata_len(200, &[]), None, "unknown types are errors");
}

#[test]
fn mariadb_counts_geometry_and_compressed_columns_as_character_columns() {
    let info = probe_info(&probe_hints());
    let kinds: Vec<&Kind> = info.columns.iter().map(|c| &c.kind).collect();
    assert_eq!(
        kinds[2],
        &text(Charset::from_name("cp1251")),
        "the column after GEOMETRY keeps its own charset"
    );
    assert_eq!(kinds[9], &text(Charset::from_name("gbk")));
    assert_eq!(kinds[10], &text(Charset::Ucs2));
    assert_eq!(kinds[12], &text(Charset::Latin1));
    assert_eq!(kinds[13], &Kind::Binary { pad_to: 0 });
    assert_eq!(kinds[14], &text(Charset::Utf16));
    assert_eq!(kinds[4], &Kind::Inet6);
    // MySQL's layout (GEOMETRY not counted) would give `a` the GEOMETRY's binary charset.
    let mysql_layout = probe_info(&ColumnHints::default());
    assert_ne!(mysql_layout.columns[2].kind, info.columns[2].kind);
}

#[test]
fn probe_rows_decode_to_the_inserted_values() {
    let info = probe_info(&probe_hints());
    let present = vec![true; 15];
    let row = unhex(PROBE_ROW);
    let values = read_image(&info, &present, &mut ParseBuf(&row)).expect("row 1");
    let text = |s: &str| Value::Text(s.to_string());
    assert_eq!(values[0], Value::Int(1));
    assert!(matches!(&values[1], Value::Bytes(b) if b.len() == 25));
    assert_eq!(values[2], text("абв"));
    assert_eq!(values[4], text("::1"));
    assert_eq!(values[5], text("123e4567-e89b-12d3-a456-426614174000"));
    assert_eq!(values[6], text("1.2.3.4"));
    assert_eq!(values[7], Value::Bytes(vec![1]));
    assert_eq!(values[8], text("y"));
    assert_eq!(values[9], text("中文"));
    assert_eq!(values[10], text("ab"));
    assert_eq!(values[11], text("{}"));
    assert_eq!(
        values[12],
        text(&"a".repeat(90)),
        "stored uncompressed (header 0)"
    );
    assert_eq!(values[13], Value::Bytes(vec![b'b'; 300]), "raw deflate");
    assert_eq!(values[14], text(&"z".repeat(200)), "utf16 after inflating");
    let row = unhex(PROBE_ROW_2);
    let values = read_image(&info, &present, &mut ParseBuf(&row)).expect("row 2");
    assert_eq!(values[1], Value::Null);
    assert_eq!(values[2], text(""));
    assert_eq!(values[12], text("x"));
    assert_eq!(values[13], Value::Bytes(Vec::new()));
    assert_eq!(values[14], text("q"));
}

#[test]
fn unsupported_charsets_are_refused_unless_the_column_is_excluded() {
    // Column `t` (gbk, collation 28) rewritten as big5 (collation 1) in the event bytes.
    let big5 = PROBE_TABLE_MAP.replace("071c0823", "07010823");
    let bytes = unhex(&big5);
    let fde = mysql_common::binlog::events::FormatDescriptionEvent::new(
        mysql_common::binlog::consts::BinlogVersion::Version4,
    );
    let ctx = mysql_common::binlog::BinlogCtx::new(bytes.len(), &fde, 19);
    let tme: TableMapEvent<'_> = ParseBuf(&bytes).parse(ctx).expect("table map");
    let err = map_table(
        &tme,
        &selection("{ include: [\"probe.*\"] }"),
        &probe_hints(),
    )
    .expect_err("big5 is refused");
    let message = err.to_string();
    assert!(
        message.contains("column `t` of probe.g is in charset big5")
            && message.contains("CONVERT TO CHARACTER SET utf8mb4"),
        "{message}"
    );
    let excluded = selection("{ include: [\"probe.*\"], exclude_columns: { \"probe.g\": [t] } }");
    assert!(map_table(&tme, &excluded, &probe_hints()).is_ok());
}
