//! Prints the raw event types a MariaDB/MySQL server sends a replica, with and without the
//! MariaDB GTID capability (`@mariadb_slave_capability=4`), for one small transaction and one DDL.
//! Usage: `cargo run -p etcdsync-mysql --example binlog_events -- mysql://user:pw@host:port/ [capability]`

use futures::StreamExt;
use mysql_async::prelude::*;
use mysql_async::{BinlogStreamRequest, Conn, Opts};
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().ok_or("usage: binlog_events URL [capability]")?;
    let capability: Option<u8> = args.next().and_then(|c| c.parse().ok());
    let opts = Opts::from_url(&url)?;
    let mut admin = Conn::new(opts.clone()).await?;
    let (file, pos): (String, u64) = admin
        .query_first::<mysql_async::Row, _>("SHOW MASTER STATUS")
        .await?
        .map(|mut r| (r.take(0).unwrap_or_default(), r.take(1).unwrap_or(4)))
        .ok_or("no binlog")?;
    let mut conn = Conn::new(opts).await?;
    if let Some(c) = capability {
        conn.query_drop(format!("SET @mariadb_slave_capability = {c}"))
            .await?;
    }
    let mut stream = conn
        .get_binlog_stream(
            BinlogStreamRequest::new(987_654)
                .with_filename(file.as_bytes())
                .with_pos(pos),
        )
        .await?;
    admin
        .query_drop(
            "CREATE DATABASE IF NOT EXISTS probe_events; \
             CREATE TABLE IF NOT EXISTS probe_events.t (id int primary key, y year, u bigint unsigned); \
             BEGIN; INSERT INTO probe_events.t VALUES (1, 2024, 18446744073709551615); COMMIT; \
             DROP DATABASE probe_events",
        )
        .await?;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
        let event = event?;
        let h = event.header();
        let name = match h.event_type() {
            Ok(t) => format!("{t:?}"),
            Err(_) => "UNKNOWN".into(),
        };
        let detail = match event.read_data() {
            Ok(Some(mysql_async::binlog::events::EventData::QueryEvent(q))) => {
                q.query().into_owned()
            }
            Ok(Some(mysql_async::binlog::events::EventData::RowsEvent(r))) => {
                let tme = stream.get_tme(r.table_id());
                match tme {
                    Some(tme) => format!("{:?}", r.rows(tme).collect::<Vec<_>>()),
                    None => String::new(),
                }
            }
            Ok(Some(mysql_async::binlog::events::EventData::TableMapEvent(t))) => format!(
                "{:?}",
                t.iter_optional_meta()
                    .map(|f| f.map(|f| format!("{f:?}")))
                    .collect::<Vec<_>>()
            ),
            Ok(Some(_)) => String::new(),
            Ok(None) => format!("raw data {:?}", &event.data()[..event.data().len().min(16)]),
            Err(e) => format!("error {e}"),
        };
        println!(
            "{:3} {:<28} log_pos={:<6} {}",
            h.event_type_raw(),
            name,
            h.log_pos(),
            detail
        );
    }
    Ok(())
}
