use super::check::needs;
use super::*;
use etcdsync_core::inspect::plural;

#[test]
fn literals_quote_quotes_and_backslashes() {
    assert_eq!(quote_literal("it's"), "'it''s'");
    assert_eq!(quote_literal("a\\b'"), "E'a\\\\b'''");
    assert_eq!(quote_literal("é/%"), "'é/%'");
}

#[test]
fn key_text_to_input_text() {
    assert_eq!(key_input(&TypeKind::Int, "42").as_deref(), Some("42"));
    assert_eq!(
        key_input(&TypeKind::Bytes, "00ff").as_deref(),
        Some("\\x00ff")
    );
    assert_eq!(key_input(&TypeKind::Bytes, "0g"), None);
    assert_eq!(key_input(&TypeKind::Bytes, "abc"), None);
    assert_eq!(key_input(&TypeKind::Bytes, "AB"), None);
    assert_eq!(key_input(&TypeKind::Text, "a\0b"), None);
    let array = TypeKind::Array {
        elem: Box::new(TypeKind::Text),
        delim: b',',
    };
    assert_eq!(
        key_input(&array, r#"["a b",null,"q\"x",[1,2]]"#).as_deref(),
        Some(r#"{"a b",NULL,"q\"x",{"1","2"}}"#)
    );
    assert_eq!(key_input(&array, "{1,2}"), None);
}

#[test]
fn values_to_input_text() {
    assert_eq!(
        input_text(&Value::Bytes(vec![0, 255])).as_deref(),
        Some("\\x00ff")
    );
    assert_eq!(input_text(&Value::Bool(true)).as_deref(), Some("true"));
    assert_eq!(
        input_text(&Value::TimestampTz("2024-01-02T01:04:05.1Z".into())).as_deref(),
        Some("2024-01-02T01:04:05.1Z")
    );
    assert_eq!(
        input_text(&Value::Float64(f64::NAN)).as_deref(),
        Some("NaN")
    );
    assert_eq!(
        input_text(&Value::Array(vec![
            Value::Text("a\"b".into()),
            Value::Null,
            Value::Array(vec![Value::Int(1)])
        ]))
        .as_deref(),
        Some(r#"{"a\"b",NULL,{"1"}}"#)
    );
    assert_eq!(input_text(&Value::Null), None);
    assert_eq!(input_text(&Value::Missing), None);
}

fn known() -> Known {
    let schema = TableSchema::new(
        TableId::new("public", "we\"ird"),
        vec![
            etcdsync_core::change::Column::new("k", "text"),
            etcdsync_core::change::Column::new("v", "int4"),
            etcdsync_core::change::Column::new("b", "bytea"),
        ],
        vec![0, 2],
    );
    Known {
        rows: "ONLY \"public\".\"we\"\"ird\"".into(),
        shape: TableShape {
            schema: Arc::new(schema),
            kinds: vec![TypeKind::Text, TypeKind::Int, TypeKind::Bytes],
            type_oids: vec![25, 23, 17],
        },
        key_types: vec!["text".into(), "bytea".into()],
    }
}

#[test]
fn scan_is_keyset_pagination_in_key_order() {
    let k = known();
    assert_eq!(
        scan_sql(&k, None, 10).expect("sql"),
        "COPY (SELECT \"k\", \"v\", \"b\" FROM ONLY \"public\".\"we\"\"ird\" \
         ORDER BY \"k\", \"b\" LIMIT 10) TO STDOUT"
    );
    let after = [Value::Text("it's/%".into()), Value::Bytes(vec![0xab])];
    assert_eq!(
        scan_sql(&k, Some(&after), 5).expect("sql"),
        "COPY (SELECT \"k\", \"v\", \"b\" FROM ONLY \"public\".\"we\"\"ird\" \
         WHERE (\"k\", \"b\") > ('it''s/%'::text, E'\\\\xab'::bytea) ORDER BY \"k\", \"b\" LIMIT 5) TO STDOUT"
    );
    assert!(scan_sql(&k, Some(&after[..1]), 5).is_err());
    assert!(scan_sql(&k, Some(&[Value::Null, Value::Bytes(vec![])]), 5).is_err());
}

#[test]
fn only_the_canonical_text_of_a_found_key_exists() {
    let k = known();
    let keys = vec![
        vec!["a".to_string(), "00ff".to_string()],
        vec!["a".to_string(), "00FF".to_string()],
    ];
    let mut found = vec![false; 2];
    let hit = |n: usize| (n, vec![Some("a".to_string()), Some("\\x00ff".to_string())]);
    record(&k, &keys, vec![hit(0), hit(1), hit(7)], &mut found);
    assert_eq!(found, vec![true, false]);
    assert_eq!(
        key_inputs(&k, &keys[0]),
        Some(vec!["a".to_string(), "\\x00ff".to_string()])
    );
    assert_eq!(key_inputs(&k, &keys[1]), None);
}

#[test]
fn capacity_reasons() {
    assert_eq!(
        needs(true, true, "its slot"),
        " (its slot, and one while copying tables added later)"
    );
    assert_eq!(needs(false, false, "its slot"), "");
    assert_eq!(plural(1, "table"), "1 table");
    assert_eq!(plural(3, "table"), "3 tables");
}
