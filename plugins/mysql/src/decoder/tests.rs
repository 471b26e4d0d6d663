use super::*;
use crate::config::MysqlConfig;
use mysql_common::binlog::consts::{BinlogVersion, EventType};
use mysql_common::binlog::events::{FormatDescriptionEvent, GtidEvent, QueryEvent, RotateEvent};
use mysql_common::proto::MySerialize;

const UUID: [u8; 16] = [
    0x3e, 0x11, 0xfa, 0x47, 0x71, 0xca, 0x11, 0xe1, 0x9e, 0x33, 0xc8, 0x0a, 0xa9, 0x42, 0x95, 0x62,
];
const U: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";

fn config() -> ValidMysql {
    serde_yaml::from_str::<MysqlConfig>(
        "url: mysql://u:p@127.0.0.1:1/\ntables: { include: [\"db.*\"] }\n",
    )
    .expect("yaml")
    .validate_config("unit")
    .expect("valid")
}

/// An event as the server frames it: the 19-byte v4 header, then `data` (no checksum).
fn event(event_type: u8, log_pos: u32, flags: u16, server_id: u32, data: &[u8]) -> Event {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&1_700_000_000u32.to_le_bytes());
    bytes.push(event_type);
    bytes.extend_from_slice(&server_id.to_le_bytes());
    bytes.extend_from_slice(&(19 + data.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&log_pos.to_le_bytes());
    bytes.extend_from_slice(&flags.to_le_bytes());
    bytes.extend_from_slice(data);
    let fde = FormatDescriptionEvent::new(BinlogVersion::Version4);
    Event::read(&fde, &bytes[..]).expect("event bytes")
}

fn serialized(value: &impl MySerialize) -> Vec<u8> {
    let mut buf = Vec::new();
    value.serialize(&mut buf);
    buf
}

fn query(sql: &str, log_pos: u32) -> Event {
    let q = QueryEvent::new(Vec::new(), b"db".to_vec()).with_query(sql.as_bytes().to_vec());
    event(EventType::QUERY_EVENT as u8, log_pos, 0, 1, &serialized(&q))
}

fn mysql_gtid(gno: u64, log_pos: u32) -> Event {
    let g = GtidEvent::new(UUID, gno);
    event(EventType::GTID_EVENT as u8, log_pos, 0, 1, &serialized(&g))
}

fn mariadb_gtid(domain: u32, seq: u64, standalone: bool, log_pos: u32) -> Event {
    let mut data = Vec::new();
    data.extend_from_slice(&seq.to_le_bytes());
    data.extend_from_slice(&domain.to_le_bytes());
    data.push(u8::from(standalone));
    data.extend_from_slice(&[0; 6]);
    event(MARIADB_GTID, log_pos, 0, 7, &data)
}

fn rotate(name: &str, position: u64, artificial: bool) -> Event {
    let r = RotateEvent::new(position, name.as_bytes().to_vec());
    let (log_pos, flags) = if artificial {
        (0, ARTIFICIAL_EVENT)
    } else {
        (9, 0)
    };
    event(
        EventType::ROTATE_EVENT as u8,
        log_pos,
        flags,
        1,
        &serialized(&r),
    )
}

async fn feed(
    flavour: Flavour,
    mode: Mode,
    start: &str,
    events: &[Event],
) -> (Vec<Message>, SourcePosition) {
    let config = config();
    let (tx, mut rx) = mpsc::channel(64);
    let start = SourcePosition::parse(start).expect("start");
    let server = ServerInfo {
        flavour,
        version: String::new(),
        server_id: 1,
    };
    let mut decoder = Decoder::new(&config, &server, Dialect::default(), mode, start, tx);
    for e in events {
        assert!(decoder.handle(e).await.expect("handle"));
    }
    let position = decoder.position.clone();
    drop(decoder);
    let mut out = Vec::new();
    while let Ok(m) = rx.try_recv() {
        out.push(m);
    }
    (out, position)
}

/// An XA_PREPARE event (MySQL's and MariaDB's shape): one_phase, format id, lengths, xid.
fn xa_prepare(gtrid: &[u8], one_phase: bool, log_pos: u32) -> Event {
    let mut data = vec![u8::from(one_phase)];
    data.extend_from_slice(&1u32.to_le_bytes());
    data.extend_from_slice(&(gtrid.len() as u32).to_le_bytes());
    data.extend_from_slice(&0u32.to_le_bytes());
    data.extend_from_slice(gtrid);
    event(EventType::XA_PREPARE_LOG_EVENT as u8, log_pos, 0, 1, &data)
}

#[tokio::test]
async fn mysql_xa_shape_pins_positions_until_the_commit() {
    let events = [
        rotate("binlog.000003", 4, true),
        // MySQL: GTID, `XA START` as a query event (no BEGIN), …, `XA END`, XA_PREPARE.
        mysql_gtid(2, 100),
        query("XA START X'61',X'',1", 150),
        query("XA END X'61',X'',1", 200),
        xa_prepare(b"a", false, 250),
        // A transaction committed while it waits: reported before the prepared one.
        mysql_gtid(3, 300),
        query("TRUNCATE TABLE t", 350),
        // The commit, its own event group.
        mysql_gtid(4, 400),
        query("XA COMMIT X'61',X'',1", 450),
        // After it, positions move on again.
        mysql_gtid(5, 500),
        query("TRUNCATE TABLE t", 550),
    ];
    let start = format!("binlog.000003:50 gtid={U}:1");
    let (messages, position) = feed(Flavour::MySql, Mode::Gtid, &start, &events).await;
    let after = format!("binlog.000003:550 gtid={U}:1-5");
    assert_eq!(
        commit_positions(&messages),
        vec![start.clone(), after.clone()]
    );
    assert_eq!(position.to_string(), after);
}

#[tokio::test]
async fn an_xa_commit_without_its_prepare_stops_and_a_rollback_does_not() {
    let rolled_back = [
        rotate("binlog.000003", 4, true),
        mysql_gtid(2, 100),
        query("XA ROLLBACK X'61',X'',1", 150),
    ];
    let start = format!("binlog.000003:50 gtid={U}:1");
    let (_, position) = feed(Flavour::MySql, Mode::Gtid, &start, &rolled_back).await;
    assert_eq!(
        position.to_string(),
        format!("binlog.000003:150 gtid={U}:1-2")
    );

    let config = config();
    let server = ServerInfo {
        flavour: Flavour::MySql,
        version: String::new(),
        server_id: 1,
    };
    let (tx, _rx) = mpsc::channel(64);
    let start = SourcePosition::parse(&start).expect("start");
    let mut decoder = Decoder::new(&config, &server, Dialect::default(), Mode::Gtid, start, tx);
    for e in &[rotate("binlog.000003", 4, true), mysql_gtid(2, 100)] {
        assert!(decoder.handle(e).await.expect("handle"));
    }
    let error = decoder
        .handle(&query("XA COMMIT X'61',X'',1", 150))
        .await
        .expect_err("an unknown XA COMMIT");
    assert!(error.to_string().contains("XA RECOVER"), "{error}");
}

fn commit_positions(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Commit(c) => Some(c.position.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn mysql_gtid_stream_skips_executed_transactions_and_extends_the_set() {
    let events = [
        // The opening ROTATE of a GTID dump names the file, not the offset.
        rotate("binlog.000003", 4, true),
        // Already in the checkpoint's set: skipped.
        mysql_gtid(5, 200),
        query("TRUNCATE TABLE t", 300),
        mysql_gtid(6, 350),
        query("TRUNCATE TABLE t", 400),
        // A transaction of another table: the position moves, nothing is sent.
        mysql_gtid(7, 450),
        query("BEGIN", 480),
        event(EventType::XID_EVENT as u8, 500, 0, 1, &9u64.to_le_bytes()),
    ];
    let start = format!("binlog.000002:900 gtid={U}:1-5");
    let (messages, position) = feed(Flavour::MySql, Mode::Gtid, &start, &events).await;
    assert_eq!(
        commit_positions(&messages),
        vec![format!("binlog.000003:400 gtid={U}:1-6")]
    );
    let truncates: Vec<&Change> = messages
        .iter()
        .filter_map(|m| match m {
            Message::Changes(c) => Some(c.iter()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(truncates.len(), 1);
    assert_eq!(truncates[0].table.id, TableId::new("db", "t"));
    assert_eq!(
        position.to_string(),
        format!("binlog.000003:500 gtid={U}:1-7")
    );
    assert!(matches!(position.gtid, Gtids::MySql(ref set) if set.contains(U, 7)));
}

#[tokio::test]
async fn mariadb_gtid_events_advance_the_domain_and_file_mode_skips_by_offset() {
    let events = [
        rotate("mysql-bin.000001", 1000, true),
        // At or before the checkpoint offset: skipped in file/offset mode.
        mariadb_gtid(0, 41, true, 950),
        query("TRUNCATE TABLE t", 1000),
        mariadb_gtid(0, 42, true, 1050),
        query("TRUNCATE TABLE t", 1100),
        mariadb_gtid(2, 9, false, 1150),
        query("BEGIN", 1160),
        event(EventType::XID_EVENT as u8, 1200, 0, 1, &1u64.to_le_bytes()),
    ];
    let (messages, position) = feed(
        Flavour::MariaDb,
        Mode::FileOffset,
        "mysql-bin.000001:1000 gtid=0-1-41",
        &events,
    )
    .await;
    assert_eq!(
        commit_positions(&messages),
        vec!["mysql-bin.000001:1100 gtid=0-7-42".to_string()]
    );
    assert_eq!(
        position.to_string(),
        "mysql-bin.000001:1200 gtid=0-7-42,2-7-9"
    );
    // Without a GTID state at the start, none is invented from a partial view.
    let (_, position) = feed(
        Flavour::MariaDb,
        Mode::FileOffset,
        "mysql-bin.000001:1000",
        &events,
    )
    .await;
    assert_eq!(position.to_string(), "mysql-bin.000001:1200");
}

/// A TABLE_MAP event (`binlog_row_metadata=FULL`) of `schema.table (id INT PRIMARY KEY,
/// v INT NOT NULL)`.
fn table_map(table_id: u64, schema: &str, table: &str, log_pos: u32) -> Event {
    let mut data = table_id.to_le_bytes()[..6].to_vec();
    data.extend_from_slice(&1u16.to_le_bytes());
    for name in [schema, table] {
        data.push(name.len() as u8);
        data.extend_from_slice(name.as_bytes());
        data.push(0);
    }
    // Two columns, both LONG, no metadata, neither nullable.
    data.extend_from_slice(&[2, 3, 3, 0, 0]);
    // Optional metadata: SIGNEDNESS (both signed), COLUMN_NAME, SIMPLE_PRIMARY_KEY (column 0).
    data.extend_from_slice(&[1, 1, 0]);
    data.extend_from_slice(&[4, 5, 2, b'i', b'd', 1, b'v']);
    data.extend_from_slice(&[8, 1, 0]);
    event(EventType::TABLE_MAP_EVENT as u8, log_pos, 0, 1, &data)
}

/// A WRITE_ROWS (v2) event of the table `table_id` maps, one row `(id, id * 10)` per id.
fn write_rows(table_id: u64, ids: std::ops::RangeInclusive<i32>, log_pos: u32) -> Event {
    let mut data = table_id.to_le_bytes()[..6].to_vec();
    // Flags (end of statement), extra data length (2: none), 2 columns, both present.
    data.extend_from_slice(&1u16.to_le_bytes());
    data.extend_from_slice(&2u16.to_le_bytes());
    data.extend_from_slice(&[2, 0b11]);
    for id in ids {
        data.push(0);
        data.extend_from_slice(&id.to_le_bytes());
        data.extend_from_slice(&(id * 10).to_le_bytes());
    }
    event(EventType::WRITE_ROWS_EVENT as u8, log_pos, 0, 1, &data)
}

fn xid_event(log_pos: u32) -> Event {
    event(
        EventType::XID_EVENT as u8,
        log_pos,
        0,
        1,
        &1u64.to_le_bytes(),
    )
}

/// A decoder of MySQL events that knows `db.t` as synced (no server is asked).
fn mysql_decoder<'a>(
    config: &'a ValidMysql,
    server: &'a ServerInfo,
    start: &str,
    tx: mpsc::Sender<Message>,
) -> Decoder<'a> {
    let start = SourcePosition::parse(start).expect("start");
    let mut decoder = Decoder::new(config, server, Dialect::default(), Mode::Gtid, start, tx);
    decoder.synced_at_start([TableId::new("db", "t")]);
    decoder
}

fn mysql_server() -> ServerInfo {
    ServerInfo {
        flavour: Flavour::MySql,
        version: String::new(),
        server_id: 1,
    }
}

/// Feeds `events` one by one and returns the ids of the rows inserted after each event.
async fn inserted_per_event(events: &[Event]) -> Vec<Vec<i64>> {
    inserted_per_event_copied_at(events, None).await
}

/// As [`inserted_per_event`], with `db.t` copied while streaming at `copied_at` (an offset in
/// binlog.000003).
async fn inserted_per_event_copied_at(events: &[Event], copied_at: Option<u64>) -> Vec<Vec<i64>> {
    let config = config();
    let server = mysql_server();
    let (tx, mut rx) = mpsc::channel(64);
    let mut decoder = mysql_decoder(
        &config,
        &server,
        &format!("binlog.000003:50 gtid={U}:1"),
        tx,
    );
    if let Some(offset) = copied_at {
        decoder.copied.insert(
            TableId::new("db", "t"),
            BinlogPos::new("binlog.000003".to_string(), offset),
        );
    }
    let mut out = Vec::new();
    for e in events {
        assert!(decoder.handle(e).await.expect("handle"));
        let mut ids = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let Message::Changes(changes) = m {
                for c in changes {
                    match &c.op {
                        etcdsync_core::Op::Insert { row } => match row[0] {
                            etcdsync_core::Value::Int(id) => ids.push(id),
                            ref other => panic!("id {other:?}"),
                        },
                        other => panic!("unexpected change {other:?}"),
                    }
                }
            }
        }
        out.push(ids);
    }
    out
}

/// MySQL's XA shape with rows: GTID, `XA START` (a query event, no BEGIN), TABLE_MAP, a
/// WRITE_ROWS of more rows than one message holds, `XA END`, XA_PREPARE; the decision comes
/// in a later group of its own.
fn mysql_xa_prepared(gtrid: &[u8], one_phase: bool) -> Vec<Event> {
    let name = String::from_utf8_lossy(gtrid);
    vec![
        rotate("binlog.000003", 4, true),
        mysql_gtid(2, 100),
        query(&format!("XA START '{name}'"), 150),
        table_map(70, "db", "t", 200),
        write_rows(70, 1..=300, 3000),
        query(&format!("XA END '{name}'"), 3050),
        xa_prepare(gtrid, one_phase, 3100),
    ]
}

#[tokio::test]
async fn mysql_xa_rows_arrive_all_at_the_commit_and_never_after_a_rollback() {
    const {
        assert!(
            CHANGES_PER_MESSAGE < 300,
            "more rows than one message holds"
        )
    };
    let all: Vec<i64> = (1..=300).collect();

    // XA COMMIT: nothing before it, every row at it, in order.
    let mut events = mysql_xa_prepared(b"x", false);
    events.extend([mysql_gtid(3, 3200), query("XA COMMIT 'x'", 3250)]);
    let per_event = inserted_per_event(&events).await;
    let (commit, before) = per_event.split_last().expect("events");
    assert!(before.iter().all(Vec::is_empty), "{before:?}");
    assert_eq!(*commit, all);

    // XA ROLLBACK: none ever; an ordinary transaction after it arrives alone.
    let mut events = mysql_xa_prepared(b"x", false);
    events.extend([
        mysql_gtid(3, 3200),
        query("XA ROLLBACK 'x'", 3250),
        mysql_gtid(4, 3300),
        query("BEGIN", 3350),
        table_map(70, "db", "t", 3400),
        write_rows(70, 999..=999, 3450),
        xid_event(3500),
    ]);
    let per_event = inserted_per_event(&events).await;
    let (last, before) = per_event.split_last().expect("events");
    assert!(before.iter().all(Vec::is_empty), "{before:?}");
    assert_eq!(*last, vec![999]);

    // XA COMMIT … ONE PHASE as MySQL logs it: the XA_PREPARE event has one_phase set.
    let per_event = inserted_per_event(&mysql_xa_prepared(b"x", true)).await;
    let (commit, before) = per_event.split_last().expect("events");
    assert!(before.iter().all(Vec::is_empty), "{before:?}");
    assert_eq!(*commit, all);

    // … and as a query event inside the group still open.
    let mut events = mysql_xa_prepared(b"x", false);
    events.pop();
    events.push(query("XA COMMIT 'x' ONE PHASE", 3100));
    let per_event = inserted_per_event(&events).await;
    let (commit, before) = per_event.split_last().expect("events");
    assert!(before.iter().all(Vec::is_empty), "{before:?}");
    assert_eq!(*commit, all);
}

#[tokio::test]
async fn savepoint_and_xa_statements_keep_the_column_hints_and_ddl_clears_them() {
    let config = config();
    let server = mysql_server();
    let (tx, _rx) = mpsc::channel(64);
    let mut decoder = mysql_decoder(
        &config,
        &server,
        &format!("binlog.000003:50 gtid={U}:1"),
        tx,
    );
    decoder.hints.tables.insert(
        TableId::new("db", "t"),
        (vec!["id".into(), "v".into()], ColumnHints::default()),
    );
    let statements = [
        "BEGIN",
        "SAVEPOINT s1",
        "ROLLBACK TO SAVEPOINT s1",
        "ROLLBACK TO s1",
        "SAVEPOINT `s 2`",
        "COMMIT",
        "XA START 'x'",
        "XA END 'x'",
    ];
    let mut log_pos = 100;
    for sql in statements {
        log_pos += 50;
        assert!(decoder.handle(&query(sql, log_pos)).await.expect(sql));
        assert_eq!(decoder.hints.tables.len(), 1, "cleared by `{sql}`");
    }
    assert!(decoder
        .handle(&xa_prepare(b"x", false, log_pos + 50))
        .await
        .expect("prepare"));
    assert!(decoder
        .handle(&query("XA ROLLBACK 'x'", log_pos + 100))
        .await
        .expect("rollback"));
    assert_eq!(decoder.hints.tables.len(), 1, "cleared by the XA steps");
    // A DDL statement (even one that changes no rows) may change a CHECK or a column type.
    assert!(decoder
        .handle(&query("ALTER TABLE t ADD INDEX i (v)", log_pos + 150))
        .await
        .expect("ddl"));
    assert!(decoder.hints.tables.is_empty(), "kept over a DDL");
}

#[tokio::test]
async fn the_table_map_cache_is_bounded() {
    let config = config();
    let server = mysql_server();
    let (tx, mut rx) = mpsc::channel(64);
    let mut decoder = mysql_decoder(
        &config,
        &server,
        &format!("binlog.000003:50 gtid={U}:1"),
        tx,
    );
    let mut most = 0;
    // Each transaction maps a table (not selected: no server is asked) under a new table id.
    for i in 0..(2 * TABLE_MAP_CACHE as u64 + 10) {
        let log_pos = 100 + 100 * i as u32;
        for e in [
            query("BEGIN", log_pos),
            table_map(1000 + i, "other", &format!("t{i}"), log_pos + 20),
            xid_event(log_pos + 40),
        ] {
            assert!(decoder.handle(&e).await.expect("handle"));
            most = most.max(decoder.tables.len());
        }
        while rx.try_recv().is_ok() {}
    }
    assert!(most <= TABLE_MAP_CACHE + 1, "{most} table maps kept");
    assert!(decoder.tables.len() <= TABLE_MAP_CACHE + 1);
}

#[tokio::test]
async fn under_lower_case_table_names_2_a_ddl_names_the_table_as_stored() {
    let config = config();
    let server = mysql_server();
    let (tx, mut rx) = mpsc::channel(64);
    let start = SourcePosition::parse(&format!("binlog.000003:50 gtid={U}:1")).expect("start");
    let dialect = Dialect {
        names: NameCase::Insensitive,
        ..Dialect::default()
    };
    let mut decoder = Decoder::new(&config, &server, dialect, Mode::Gtid, start, tx);
    decoder.synced_at_start([TableId::new("db", "Orders"), TableId::new("DB2", "Other")]);
    for e in [
        rotate("binlog.000003", 4, true),
        mysql_gtid(2, 100),
        query("TRUNCATE TABLE ORDERS", 150),
        mysql_gtid(3, 200),
        query("DROP DATABASE db", 250),
    ] {
        assert!(decoder.handle(&e).await.expect("handle"));
    }
    drop(decoder);
    let mut truncated = Vec::new();
    while let Ok(m) = rx.try_recv() {
        if let Message::Changes(changes) = m {
            truncated.extend(changes.iter().map(|c| c.table.id.to_string()));
        }
    }
    // The keys are under the stored name (`db.Orders`), which row events carry too.
    assert_eq!(truncated, ["db.Orders", "db.Orders"]);
}

/// A copy while streaming read the table after an XA transaction committed: the transaction's
/// held rows are in the copy, and applying them at the commit would undo later changes the copy
/// also read. Committed after the copy's read, they arrive.
#[tokio::test]
async fn xa_rows_committed_before_a_copy_of_their_table_are_left_to_the_copy() {
    let mut events = mysql_xa_prepared(b"x", false);
    events.extend([mysql_gtid(3, 3200), query("XA COMMIT 'x'", 3250)]);
    let per_event = inserted_per_event_copied_at(&events, Some(3260)).await;
    assert!(per_event.iter().all(Vec::is_empty), "{per_event:?}");
    let per_event = inserted_per_event_copied_at(&events, Some(3240)).await;
    assert_eq!(per_event.last().map(Vec::len), Some(300));
}
