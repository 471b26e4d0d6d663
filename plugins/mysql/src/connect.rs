//! Opening connections to MySQL/MariaDB with the session settings the snapshot and the stream
//! rely on (utf8mb4 text, UTC TIMESTAMPs, DESIGN §3).

use crate::error::{MysqlError, Result};
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts};

/// Opens a connection with the session settings snapshot and stream rely on (utf8mb4 text,
/// UTC TIMESTAMPs).
pub async fn connect(opts: &Opts) -> Result<Conn> {
    let target = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
    let mut conn = Conn::new(opts.clone())
        .await
        .map_err(|e| MysqlError::driver(format!("connecting to {target}"), e))?;
    conn.query_drop("SET NAMES utf8mb4, time_zone = '+00:00'")
        .await
        .map_err(|e| MysqlError::driver(format!("setting up the session on {target}"), e))?;
    Ok(conn)
}
