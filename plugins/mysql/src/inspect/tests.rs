use super::*;
use crate::decode::Charset;
use etcdsync_core::change::Column;

fn labels(items: &[&str]) -> Arc<[String]> {
    items.iter().map(|s| s.to_string()).collect()
}

fn table(key: &[(&str, Kind)]) -> SnapshotTable {
    let mut columns: Vec<Column> = key
        .iter()
        .map(|(name, kind)| Column::new(*name, kind.type_name()))
        .collect();
    columns.push(Column::new("v", "text"));
    let mut kinds: Vec<Kind> = key.iter().map(|(_, k)| k.clone()).collect();
    kinds.push(Kind::Text {
        charset: Charset::Utf8,
    });
    SnapshotTable {
        schema: Arc::new(TableSchema::new(
            TableId::new("db", "t"),
            columns,
            (0..key.len()).collect(),
        )),
        kinds,
        select: "SELECT `a`, `b`, `v` FROM `db`.`t`".into(),
        estimated_rows: None,
    }
}

#[test]
fn keyset_pages_expand_the_row_comparison() {
    let t = table(&[
        ("a", Kind::Int { unsigned: false }),
        ("b", Kind::Binary { pad_to: 0 }),
    ]);
    let (sql, params) = scan_statement(&t, None, 10).expect("first page");
    assert_eq!(
        sql,
        "SELECT `a`, `b`, `v` FROM `db`.`t` ORDER BY `a`, `b` LIMIT 10"
    );
    assert!(params.is_empty());
    let after = [Value::Int(5), Value::Bytes(vec![0x00, 0xff])];
    let (sql, params) = scan_statement(&t, Some(&after), 10).expect("next page");
    assert_eq!(
        sql,
        "SELECT `a`, `b`, `v` FROM `db`.`t` WHERE `a` >= ? AND ((`a` > ?) OR (`a` = ? AND `b` > UNHEX(?))) ORDER BY `a`, `b` LIMIT 10"
    );
    assert_eq!(
        params,
        vec![
            MyValue::Int(5),
            MyValue::Int(5),
            MyValue::Int(5),
            MyValue::Bytes(b"00ff".to_vec())
        ]
    );
    let one = table(&[("a", Kind::DateTime)]);
    let (sql, params) = scan_statement(
        &one,
        Some(&[Value::Timestamp("2024-02-29T23:59:58.12".into())]),
        2,
    )
    .expect("one column");
    assert!(sql.ends_with("WHERE `a` > ? ORDER BY `a` LIMIT 2"), "{sql}");
    assert_eq!(
        params,
        vec![MyValue::Bytes(b"2024-02-29 23:59:58.12".to_vec())]
    );
    assert!(scan_statement(&t, Some(&[Value::Int(1)]), 1).is_err());
}

#[test]
fn key_values_become_parameters() {
    let e = Kind::Enum(labels(&["zeta", "alpha"]));
    assert_eq!(
        key_param(&e, &Value::Text("alpha".into())),
        Some(("?", MyValue::UInt(2)))
    );
    assert_eq!(key_param(&e, &Value::Text("nope".into())), None);
    let s = Kind::Set(labels(&["a", "b", "c"]));
    assert_eq!(
        key_param(
            &s,
            &Value::Array(vec![Value::Text("a".into()), Value::Text("c".into())])
        ),
        Some(("?", MyValue::UInt(5)))
    );
    assert_eq!(
        key_param(
            &Kind::Timestamp,
            &Value::TimestampTz("2024-01-01T00:00:00Z".into())
        ),
        Some(("?", MyValue::Bytes(b"2024-01-01 00:00:00".to_vec())))
    );
    assert_eq!(key_param(&Kind::Json, &Value::Json("{}".into())), None);
}

#[test]
fn key_texts_become_parameters_or_nothing() {
    let int = Kind::Int { unsigned: true };
    assert_eq!(key_input(&int, "42"), Some(("?", MyValue::Int(42))));
    assert_eq!(
        key_input(&int, "18446744073709551615"),
        Some(("?", MyValue::UInt(u64::MAX)))
    );
    assert_eq!(key_input(&int, "4x"), None);
    let bin = Kind::Binary { pad_to: 0 };
    assert_eq!(
        key_input(&bin, "00ff"),
        Some(("UNHEX(?)", MyValue::Bytes(b"00ff".to_vec())))
    );
    assert_eq!(key_input(&bin, "0F"), None);
    assert_eq!(key_input(&bin, "abc"), None);
    assert_eq!(
        key_input(&Kind::DateTime, "2024-01-02T03:04:05.5"),
        Some(("?", MyValue::Bytes(b"2024-01-02 03:04:05.5".to_vec())))
    );
    assert_eq!(key_input(&Kind::Timestamp, "2024-01-02T03:04:05"), None);
    assert_eq!(
        key_input(&Kind::Timestamp, "2024-01-02T03:04:05Z"),
        Some(("?", MyValue::Bytes(b"2024-01-02 03:04:05".to_vec())))
    );
    let set = Kind::Set(labels(&["a", "b"]));
    assert_eq!(
        key_input(&set, r#"["a","b"]"#),
        Some(("?", MyValue::Bytes(b"a,b".to_vec())))
    );
    assert_eq!(key_input(&set, r#"["x"]"#), None);
    assert_eq!(
        key_input(&Kind::Decimal, "1.50"),
        Some(("?", MyValue::Bytes(b"1.50".to_vec())))
    );
    assert_eq!(key_input(&Kind::Decimal, "1e5"), None);
}

#[test]
fn lag_across_binlog_files() {
    let pos = |f: &str, o: u64| BinlogPos::new(f, o);
    let logs = vec![
        ("mysql-bin.000001".to_string(), 1000),
        ("mysql-bin.000002".to_string(), 500),
        ("mysql-bin.000003".to_string(), 300),
    ];
    assert_eq!(
        bytes_between(
            &pos("mysql-bin.000003", 100),
            &pos("mysql-bin.000003", 300),
            &[]
        ),
        Some(200)
    );
    assert_eq!(
        bytes_between(
            &pos("mysql-bin.000001", 400),
            &pos("mysql-bin.000003", 300),
            &logs
        ),
        Some(600 + 500 + 300)
    );
    assert_eq!(
        bytes_between(
            &pos("mysql-bin.000003", 300),
            &pos("mysql-bin.000002", 10),
            &logs
        ),
        Some(0)
    );
    assert_eq!(
        bytes_between(
            &pos("mysql-bin.000000", 4),
            &pos("mysql-bin.000003", 300),
            &logs
        ),
        None,
        "purged"
    );
    assert_eq!(
        bytes_between(
            &pos("other.000001", 4),
            &pos("mysql-bin.000003", 300),
            &logs
        ),
        None
    );
}
