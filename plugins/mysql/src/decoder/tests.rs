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
