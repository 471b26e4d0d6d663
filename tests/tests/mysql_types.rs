//! Values of the `mysql` source against a real MariaDB (tools/testenv.sh), with an in-memory
//! sink that acknowledges every position: every type, JSON, INET6 and UUID byte for byte the
//! same from the snapshot and from the binlog, and every charset converted as the server
//! converts it or refused (at start, naming the column, unless the column is left out).
#![cfg(feature = "integration-tests")]

use etcdsync_mysql as _;
use etcdsync_tests::mysql::{
    apply, assert_parity, build, commits, connect, db_state, db_state_yaml, exec, includes,
    snapshot_done, source_yaml, split_phases, unique, url, SourceRun, TestDbs,
};
use mysql_async::prelude::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const PREFIX: &str = "/t";

/// Every MariaDB type of issue 4 item 6, with edge values.
const TYPES_TABLE: &str = "CREATE TABLE `{db}`.types (
    id INT PRIMARY KEY,
    ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED, mi MEDIUMINT, miu MEDIUMINT UNSIGNED,
    i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
    d DECIMAL(12,4), d0 DECIMAL(30,0), dneg DECIMAL(5,2), f FLOAT, db DOUBLE,
    b1 BIT(1), b64 BIT(64), b10 BIT(10),
    e ENUM('small','médium','large'), s SET('a','b','c','d','e','f','g','h','i'),
    y YEAR, dt DATE, t0 TIME, t6 TIME(6), dt0 DATETIME, dt3 DATETIME(3), dt6 DATETIME(6),
    ts0 TIMESTAMP NULL, ts6 TIMESTAMP(6) NULL,
    c CHAR(5), vc VARCHAR(50), tx TEXT, l1 VARCHAR(20) CHARACTER SET latin1, l1c CHAR(4) CHARACTER SET latin1,
    bin BINARY(4), vb VARBINARY(10), bl BLOB, j JSON, g GEOMETRY, n INT NULL,
    t1 TIME(1), t2 TIME(2), t3 TIME(3), g2 GEOMETRY,
    ru VARCHAR(20) CHARACTER SET cp1251, np VARCHAR(20) CHARACTER SET latin1 COLLATE latin1_swedish_nopad_ci,
    u16 VARCHAR(20) CHARACTER SET utf16, u2 CHAR(4) CHARACTER SET ucs2, zh TEXT CHARACTER SET gbk,
    ce VARCHAR(20) CHARACTER SET cp1250 COLLATE cp1250_nopad_bin, sj VARCHAR(10) CHARACTER SET sjis,
    en ENUM('а','б') CHARACTER SET cp1251, cz TEXT COMPRESSED CHARACTER SET utf8mb4, cb BLOB COMPRESSED,
    cl VARCHAR(300) COMPRESSED CHARACTER SET latin1
)";

const TYPES_ROWS: &[&str] = &[
    "({id}, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295, -9223372036854775808, 18446744073709551615,
      12.3400, 123456789012345678901234567890, -0.50, 1.1, 0.1,
      b'1', b'1111111111111111111111111111111111111111111111111111111111111111', b'1000000001',
      'médium', 'a,c,i',
      2024, '2024-02-29', '-838:59:59', '12:34:56.789012', '2024-02-29 23:59:58', '2000-01-01 00:00:00.120', '1999-12-31 23:59:59.000001',
      '2024-02-29 23:59:58', '2038-01-19 03:14:07.999999',
      'ab', 'héllo \"q\" \\\\ /', 'multi\nline\ttab', 'café €', 'ü',
      x'0102', x'00ff', x'deadbeef', '{\"b\": [1, 2.50], \"a\": \"x\"}', ST_GeomFromText('POINT(1 2)'), NULL,
      '-00:00:01.5', '-838:59:58.99', '-00:00:00.001', ST_GeomFromText('POINT(3 4)'),
      'Привет', 'Grüße € ', 'emoji 😀', 'añb', '中文字符', 'Żółć', 'テスト',
      'б', REPEAT('compress me ', 50), REPEAT(x'00ff', 100), REPEAT('ü', 200))",
    "({id}, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
      0.0000, 0, 0.00, -3.4e38, 1e308,
      b'0', b'0', b'0',
      'small', '',
      1901, '1000-01-01', '00:00:00', '-00:00:01.5', '1000-01-01 00:00:00', '9999-12-31 23:59:59.999', '2024-01-01 00:00:00.5',
      '1970-01-01 00:00:01', NULL,
      '', '', '', '', '',
      x'', x'', x'', '[]', ST_GeomFromText('LINESTRING(0 0,1 1)'), 7,
      '-00:00:00.1', '12:00:00.01', '-01:02:03.456', NULL,
      '', 'a', '', '', 'x', '', '',
      'а', 'short', x'', '')",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_is_byte_identical_between_snapshot_and_binlog() {
    let dbs = TestDbs::create("my_types", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    exec(&mut db, &TYPES_TABLE.replace("{db}", &name)).await;
    let insert = |base: usize| {
        format!(
            "INSERT INTO `{name}`.types VALUES {}",
            TYPES_ROWS
                .iter()
                .enumerate()
                .map(|(i, row)| row.replace("{id}", &(base + i).to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    db.query_drop(insert(1)).await.expect("snapshot rows");
    let run = SourceRun::start(&source_yaml(&includes(&dbs), ""), &unique("types"), None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    db.query_drop(insert(101)).await.expect("binlog rows");
    // The same values again through UPDATE (after image) and DELETE (before image).
    exec(
        &mut db,
        &format!(
            "UPDATE `{name}`.types SET id = id + 100 WHERE id > 100;
             DELETE FROM `{name}`.types WHERE id > 200"
        ),
    )
    .await;
    run.wait_for("binlog rows", WAIT, |m| commits(m) >= 3).await;
    let (messages, _) = run.stop().await;

    // Encoded values by (source, id): snapshot inserts, binlog inserts, updates, deletes.
    let phases = split_phases(&messages);
    let (snapshot, binlog) = &phases;
    assert_eq!(snapshot.len(), TYPES_ROWS.len());
    assert_eq!(binlog.len(), 3 * TYPES_ROWS.len(), "{binlog:#?}");
    assert_parity(&phases);
    let expected_first = concat!(
        r#"{"id":0,"ti":-128,"tiu":255,"si":-32768,"siu":65535,"mi":-8388608,"miu":16777215,"#,
        r#""i":-2147483648,"iu":4294967295,"bi":-9223372036854775808,"biu":18446744073709551615,"#,
        r#""d":"12.3400","d0":"123456789012345678901234567890","dneg":"-0.50","f":1.1,"db":0.1,"#,
        r#""b1":1,"b64":18446744073709551615,"b10":513,"e":"médium","s":["a","c","i"],"#,
        r#""y":2024,"dt":"2024-02-29","t0":"-838:59:59","t6":"12:34:56.789012","dt0":"2024-02-29T23:59:58","#,
        r#""dt3":"2000-01-01T00:00:00.12","dt6":"1999-12-31T23:59:59.000001","ts0":"2024-02-29T23:59:58Z","#,
        r#""ts6":"2038-01-19T03:14:07.999999Z","c":"ab","vc":"héllo \"q\" \\ /","tx":"multi\nline\ttab","#,
        r#""l1":"café €","l1c":"ü","bin":"AQIAAA==","vb":"AP8=","bl":"3q2+7w==","#,
        r#""j":{"b":[1,2.50],"a":"x"},"#
    );
    let first = snapshot.get(&1).expect("row 1");
    assert!(
        first.starts_with(expected_first),
        "\n got: {first}\nwant: {expected_first}…"
    );
    assert!(first.contains(r#","n":null,"t1":"#), "{first}");
    // After the second GEOMETRY: text in other charsets (MariaDB counts GEOMETRY among the
    // character columns of the charset metadata), negative TIME(1)/TIME(2) with fractions,
    // COMPRESSED columns.
    for needle in [
        r#""t1":"-00:00:01.5","t2":"-838:59:58.99","t3":"-00:00:00.001","g2":""#,
        r#""ru":"Привет","np":"Grüße € ","u16":"emoji 😀","u2":"añb","zh":"中文字符","ce":"Żółć","sj":"テスト","en":"б","#,
    ] {
        assert!(first.contains(needle), "{needle} not in {first}");
    }
    // REPEAT(x'00ff', 100) in base64: "AP8A/wD/" per 6 bytes, then "AP8=".
    let compressed = format!(
        r#""cz":"{}","cb":"{}AP8=","cl":"{}"}}"#,
        "compress me ".repeat(50),
        "AP8A/wD/".repeat(33),
        "ü".repeat(200)
    );
    assert!(first.ends_with(&compressed), "{first}");
    let second = snapshot.get(&2).expect("row 2");
    for needle in [
        r#""f":-3.4e38"#,
        r#""db":1e308"#,
        r#""s":[]"#,
        r#""y":1901"#,
        r#""t6":"-00:00:01.5""#,
        r#""ts0":"1970-01-01T00:00:01Z""#,
        r#""ts6":null"#,
        r#""bin":"AAAAAA==""#,
        r#""n":7"#,
        r#""t1":"-00:00:00.1","t2":"12:00:00.01","t3":"-01:02:03.456","g2":null"#,
        r#""ru":"","np":"a","u16":"","u2":"","zh":"x","ce":"","sj":"","en":"а","cz":"short","cb":"","cl":""}"#,
    ] {
        assert!(second.contains(needle), "{needle} not in {second}");
    }
}

/// MariaDB's JSON (LONGTEXT + `json_valid` CHECK, also on a latin1 TEXT), INET6 and UUID.
const DOCS_TABLE: &str = "CREATE TABLE `{db}`.docs (
    id INT PRIMARY KEY,
    j JSON,
    jl TEXT CHARACTER SET latin1 CHECK (json_valid(jl)),
    plain LONGTEXT,
    ip INET6,
    u UUID
)";

const DOCS_ROWS: &[&str] = &[
    r#"({id}, '{ "b" : [1, 2.50, -0.5e+3],\n\t"a" : {"nested": {"deeper": [true, false, null]}}, "ü": "ß \\" \\\\ \\n \\u00e9 日本" }',
       '{"k" :  "vé"}', '{"not": "a JSON column"}', '2001:db8::1:0:0:1', '123e4567-e89b-12d3-a456-426614174000')"#,
    r#"({id}, '"top-level string"', '[ ]', 'x', '::ffff:1.2.3.4', '01234567-89ab-7def-8123-456789abcdef')"#,
    r#"({id}, '123.450', 'null', '', '::1.2.3.4', 'ffffffff-ffff-ffff-ffff-ffffffffffff')"#,
    r#"({id}, NULL, NULL, NULL, 'fe80::1:0:0:0', '00000000-0000-0000-0000-000000000000')"#,
    r#"({id}, '[1, {"a": [ ]}, "é", {}]', '{"x":{"y":{"z":1}}}', '[1]', '::', '123e4567-e89b-12d3-e456-426614174000')"#,
    r#"({id}, '{}', '"ü"', NULL, '::1', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')"#,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_json_inet6_and_uuid_are_identical_between_snapshot_and_binlog() {
    let dbs = TestDbs::create("my_docs", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "{};
             CREATE TABLE `{name}`.late (id INT PRIMARY KEY, doc LONGTEXT);
             INSERT INTO `{name}`.late VALUES (1, '{{\"a\":  1}}')",
            DOCS_TABLE.replace("{db}", &name)
        ),
    )
    .await;
    let insert = |base: usize| {
        format!(
            "INSERT INTO `{name}`.docs VALUES {}",
            DOCS_ROWS
                .iter()
                .enumerate()
                .map(|(i, row)| row.replace("{id}", &(base + i).to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    db.query_drop(insert(1)).await.expect("snapshot rows");
    let include = vec![format!("{name}.docs")];
    let run = SourceRun::start(&source_yaml(&include, ""), &unique("docs"), None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    db.query_drop(insert(101)).await.expect("binlog rows");
    exec(
        &mut db,
        &format!(
            "UPDATE `{name}`.docs SET id = id + 100 WHERE id > 100;
             DELETE FROM `{name}`.docs WHERE id > 200"
        ),
    )
    .await;
    run.wait_for("binlog rows", WAIT, |m| commits(m) >= 3).await;
    let (messages, _) = run.stop().await;
    let phases = split_phases(&messages);
    assert_eq!(phases.0.len(), DOCS_ROWS.len());
    assert_eq!(phases.1.len(), 3 * DOCS_ROWS.len(), "{:#?}", phases.1);
    assert_parity(&phases);
    let row = |id: i64| phases.0.get(&id).map(String::as_str).unwrap_or_default();
    assert_eq!(
        row(1),
        concat!(
            r#"{"id":0,"j":{"b":[1,2.50,-0.5e+3],"a":{"nested":{"deeper":[true,false,null]}},"ü":"ß \" \\ \n \u00e9 日本"},"#,
            r#""jl":{"k":"vé"},"plain":"{\"not\": \"a JSON column\"}","ip":"2001:db8::1:0:0:1","#,
            r#""u":"123e4567-e89b-12d3-a456-426614174000"}"#
        )
    );
    assert_eq!(
        row(2),
        r#"{"id":0,"j":"top-level string","jl":[],"plain":"x","ip":"::ffff:1.2.3.4","u":"01234567-89ab-7def-8123-456789abcdef"}"#
    );
    assert_eq!(
        row(3),
        r#"{"id":0,"j":123.450,"jl":null,"plain":"","ip":"::1.2.3.4","u":"ffffffff-ffff-ffff-ffff-ffffffffffff"}"#
    );
    assert_eq!(
        row(4),
        r#"{"id":0,"j":null,"jl":null,"plain":null,"ip":"fe80::1:0:0:0","u":"00000000-0000-0000-0000-000000000000"}"#
    );
    assert!(
        row(5).contains(r#""j":[1,{"a":[]},"é",{}],"jl":{"x":{"y":{"z":1}}}"#),
        "{}",
        row(5)
    );
    assert!(row(6).contains(r#""ip":"::1","#), "{}", row(6));

    // A column that becomes JSON while streaming: the DDL refreshes the cached hints.
    let include = vec![format!("{name}.late")];
    let run = SourceRun::start(&source_yaml(&include, ""), &unique("late"), None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    exec(
        &mut db,
        &format!(
            "ALTER TABLE `{name}`.late MODIFY doc JSON;
             INSERT INTO `{name}`.late VALUES (2, '{{\"b\" : [2]}}');
             UPDATE `{name}`.late SET doc = '{{\"a\": 1}}' WHERE id = 1"
        ),
    )
    .await;
    let fresh = db_state(&include, PREFIX).await;
    run.wait_for("changes after the ALTER", WAIT, |m| {
        apply(m, PREFIX) == fresh
    })
    .await;
    let (messages, _) = run.stop().await;
    let streamed = apply(&messages, PREFIX);
    assert_eq!(
        streamed
            .get(&format!("{PREFIX}/{name}/late/2"))
            .map(String::as_str),
        Some(r#"{"id":2,"doc":{"b":[2]}}"#)
    );
    assert_eq!(streamed, db_state(&include, PREFIX).await);
}

/// Byte sequences to store in a column of `charset` (`maxlen` bytes per character at most), as
/// `(length, first, last)` runs of big-endian numbers.
fn charset_probes(charset: &str, maxlen: u32) -> Vec<(u32, u64, u64)> {
    match (charset, maxlen) {
        (_, 1) => vec![(1, 0, 0xff)],
        ("ucs2", _) => vec![(2, 0, 0xffff)],
        ("utf16", _) => vec![
            (2, 0, 0xffff),
            (4, 0xd800_dc00, 0xd800_dfff),
            (4, 0xdbff_dc00, 0xdbff_dfff),
            (4, 0xd83d_de00, 0xd83d_de4f),
        ],
        ("utf16le", _) => vec![
            (2, 0, 0xffff),
            (4, 0x00d8_00dc, 0x00d8_ffdf),
            (4, 0x3dd8_00de, 0x3dd8_4fde),
        ],
        ("utf32", _) => vec![
            (4, 0, 0x2ff),
            (4, 0xd7f0, 0xe010),
            (4, 0xfff0, 0x1_0010),
            (4, 0x1_f600, 0x1_f650),
            (4, 0x10_fff0, 0x11_0010),
        ],
        ("ujis" | "eucjpms", _) => {
            vec![(1, 0, 0xff), (2, 0x8e00, 0xffff), (3, 0x8f_a1a1, 0x8f_fefe)]
        }
        _ => vec![(1, 0, 0xff), (2, 0x8000, 0xffff)],
    }
}

/// Every charset MariaDB ships, every byte sequence of its character ranges stored in a column
/// and read back through the snapshot's utf8mb4 session: etcdsync's decoder of the raw bytes
/// (what the binlog carries) gives exactly the server's text, or the charset is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_charset_decodes_like_the_server_or_is_refused() {
    use etcdsync_mysql::charset::Charset;
    let dbs = TestDbs::create("my_cs", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    let charsets: Vec<(String, u32)> = db
        .query(
            "SELECT CHARACTER_SET_NAME, MAXLEN FROM information_schema.CHARACTER_SETS ORDER BY 1",
        )
        .await
        .expect("charsets");
    assert!(charsets.len() >= 40, "{charsets:?}");
    let refused = [
        "armscii8", "big5", "cp850", "cp852", "dec8", "eucjpms", "geostd8", "hp8", "keybcs2",
        "macce", "swe7", "ujis",
    ];
    let mut report = Vec::new();
    for (charset, maxlen) in &charsets {
        let decoder = Charset::from_name(charset);
        if charset == "binary" {
            continue;
        }
        if refused.contains(&charset.as_str()) {
            assert!(
                !decoder.is_supported(),
                "{charset} is expected to be refused"
            );
            continue;
        }
        assert!(decoder.is_supported(), "{charset} is not supported");
        let table = format!("`{name}`.`cs_{charset}`");
        exec(
            &mut db,
            &format!(
                "CREATE TABLE {table} (l INT, v BIGINT UNSIGNED, c VARCHAR(4) CHARACTER SET {charset}, PRIMARY KEY (l, v))"
            ),
        )
        .await;
        for (len, first, last) in charset_probes(charset, *maxlen) {
            db.query_drop(format!(
                "INSERT IGNORE INTO {table} SELECT {len}, seq, UNHEX(LPAD(HEX(seq), {}, '0')) FROM `{name}`.seq_{first}_to_{last}",
                2 * len
            ))
            .await
            .expect("probe rows");
        }
        let rows: Vec<(u32, u64, Vec<u8>, Vec<u8>)> = db
            .query(format!("SELECT l, v, CAST(c AS BINARY), c FROM {table}"))
            .await
            .expect("read back");
        assert!(rows.len() >= 256, "{charset}: {} rows", rows.len());
        let mut wrong = Vec::new();
        for (len, v, raw, server) in &rows {
            let ours = decoder.decode(raw);
            let theirs = String::from_utf8_lossy(server);
            if ours != theirs {
                wrong.push(format!(
                    "{len}:{v:x} raw {raw:02x?} server {theirs:?} ours {ours:?}"
                ));
            }
        }
        if !wrong.is_empty() {
            report.push(format!(
                "{charset}: {} of {} differ, e.g.\n    {}",
                wrong.len(),
                rows.len(),
                wrong
                    .iter()
                    .take(40)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n    ")
            ));
        }
    }
    assert!(report.is_empty(), "\n{}", report.join("\n"));
}

/// A kept column in a charset etcdsync does not convert exactly stops `run` at start, naming
/// table, column, charset and the fix; leaving the column out runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconvertible_charset_is_refused_at_start_and_can_be_left_out() {
    let dbs = TestDbs::create("my_big5", 1).await;
    let name = dbs.name(0).to_string();
    let mut db = connect().await;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE `{name}`.tw (id INT PRIMARY KEY, title VARCHAR(20) CHARACTER SET big5, note TEXT);
             INSERT INTO `{name}`.tw VALUES (1, '中文', 'one')"
        ),
    )
    .await;
    let err = match build(&source_yaml(&includes(&dbs), ""), &unique("b5"), None).await {
        Ok(_) => panic!("a big5 column must be refused"),
        Err(e) => e,
    };
    let message = err.to_string();
    assert_eq!(err.kind(), etcdsync_core::ErrorKind::Config, "{message}");
    for needle in [
        format!("charset of {name}.tw.title"),
        "is big5 (big5_chinese_ci)".to_string(),
        format!("ALTER TABLE `{name}`.`tw` CONVERT TO CHARACTER SET utf8mb4"),
        "exclude_columns".to_string(),
    ] {
        assert!(message.contains(&needle), "{needle} not in {message}");
    }
    let yaml = format!(
        "type: mysql\nurl: \"{}\"\ntables:\n  include: [\"{name}.*\"]\n  exclude_columns: {{ \"{name}.tw\": [title] }}\n",
        url()
    );
    let run = SourceRun::start(&yaml, &unique("b5"), None).await;
    run.wait_for("snapshot", WAIT, snapshot_done).await;
    exec(
        &mut db,
        &format!("INSERT INTO `{name}`.tw VALUES (2, '字', 'two')"),
    )
    .await;
    run.wait_for("the insert", WAIT, |m| commits(m) >= 1).await;
    let (messages, _) = run.stop().await;
    let state = apply(&messages, PREFIX);
    assert_eq!(
        state
            .get(&format!("{PREFIX}/{name}/tw/2"))
            .map(String::as_str),
        Some(r#"{"id":2,"note":"two"}"#)
    );
    assert_eq!(state, db_state_yaml(&yaml, PREFIX).await);
}
