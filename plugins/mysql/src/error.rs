//! `MysqlError`: what can go wrong in the `mysql` source, and how each case maps to a core
//! [`ErrorKind`] (connection trouble is transient and restarts the pipeline from the checkpoint).

use etcdsync_core::{Error, ErrorKind, TableId};

#[derive(Debug, thiserror::Error)]
pub enum MysqlError {
    /// The server or the network failed in a way a reconnect may fix.
    #[error("{context}: {source}")]
    Connection {
        context: String,
        #[source]
        source: mysql_async::Error,
    },
    /// The server refused a statement; retrying will not help.
    #[error("{context}: {source}")]
    Server {
        context: String,
        #[source]
        source: mysql_async::Error,
    },
    /// A server setting or privilege etcdsync needs is missing.
    #[error("the MySQL/MariaDB server is not set up for etcdsync:\n{0}")]
    Prerequisite(String),
    /// The checkpoint's binlog file is gone from the server.
    #[error("{0}")]
    Purged(String),
    /// The configuration does not fit the database (found only once connected).
    #[error("{0}")]
    Config(String),
    /// A binlog event could not be decoded.
    #[error("cannot decode binlog event at {position}: {message}")]
    Decode { position: String, message: String },
    /// Anything else that is fatal, with its message.
    #[error("{0}")]
    Other(String),
}

impl MysqlError {
    /// Classifies a driver error: I/O and connection-level failures are transient; server
    /// errors are fatal except the few that mean "try again" (lock wait, deadlock, shutdown).
    pub fn driver(context: impl Into<String>, source: mysql_async::Error) -> Self {
        let context = context.into();
        if is_transient(&source) {
            MysqlError::Connection { context, source }
        } else {
            MysqlError::Server { context, source }
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            MysqlError::Connection { .. } => ErrorKind::Transient,
            MysqlError::Prerequisite(_) => ErrorKind::Config,
            MysqlError::Purged(_) | MysqlError::Config(_) => ErrorKind::Config,
            MysqlError::Server { .. } | MysqlError::Decode { .. } | MysqlError::Other(_) => {
                ErrorKind::Fatal
            }
        }
    }
}

impl From<MysqlError> for Error {
    fn from(error: MysqlError) -> Self {
        let kind = error.kind();
        Error::wrap(kind, error)
    }
}

/// Server error codes worth a retry: lock wait timeout, deadlock, server shutting down,
/// connection killed, too many connections, query interrupted, and 1412 (a table changed under
/// the snapshot transaction: the snapshot starts over).
const TRANSIENT_CODES: &[u16] = &[1205, 1213, 1053, 1927, 1040, 1317, 2006, 2013, 1412];

pub fn is_transient(error: &mysql_async::Error) -> bool {
    match error {
        mysql_async::Error::Io(_) => true,
        mysql_async::Error::Driver(driver) => matches!(
            driver,
            mysql_async::DriverError::ConnectionClosed | mysql_async::DriverError::PoolDisconnected
        ),
        mysql_async::Error::Server(server) => TRANSIENT_CODES.contains(&server.code),
        _ => false,
    }
}

/// Error 1814: the table's tablespace was discarded (`ALTER TABLE … DISCARD TABLESPACE`); its
/// rows cannot be read until `ALTER TABLE … IMPORT TABLESPACE`.
pub const TABLESPACE_DISCARDED: u16 = 1814;

/// "Table definition has changed, please retry transaction": a table altered after a
/// consistent snapshot began is read in it.
pub const TABLE_DEFINITION_CHANGED: u16 = 1412;

/// An error reading the rows of `table` (snapshot or copy): without SELECT privilege (1142) it
/// is a prerequisite naming the grant; a discarded tablespace (1814) is transient — the read is
/// retried from the checkpoint (with backoff) until `IMPORT TABLESPACE` or `DROP TABLE` — since
/// copying it as empty would delete its keys although its rows come back at the import.
pub fn read_error(table: &TableId, error: mysql_async::Error) -> MysqlError {
    let context = format!("reading {table}");
    match server_code(&error) {
        Some(1142) => MysqlError::Prerequisite(format!(
            "  - {context}: {error}; GRANT SELECT ON {}.* TO the etcdsync user",
            crate::statement::quote_ident(&table.schema)
        )),
        Some(TABLESPACE_DISCARDED) => MysqlError::Connection {
            context: format!(
                "{context}: its tablespace is discarded; retrying until ALTER TABLE … IMPORT TABLESPACE \
                 (or DROP TABLE) makes it readable"
            ),
            source: error,
        },
        _ => MysqlError::driver(context, error),
    }
}

/// The server error code, if this is a server error.
pub fn server_code(error: &mysql_async::Error) -> Option<u16> {
    match error {
        mysql_async::Error::Server(server) => Some(server.code),
        _ => None,
    }
}

pub type Result<T, E = MysqlError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16) -> mysql_async::Error {
        mysql_async::Error::Server(mysql_async::ServerError {
            code,
            message: format!("error {code}"),
            state: "HY000".into(),
        })
    }

    #[test]
    fn a_table_changed_under_the_snapshot_is_retried() {
        // 1412: "Table definition has changed, please retry transaction", met by a snapshot
        // whose table was altered after its consistent read began.
        let error = MysqlError::driver("reading `db`.`t`", server(1412));
        assert!(matches!(error, MysqlError::Connection { .. }), "{error:?}");
        assert_eq!(error.kind(), ErrorKind::Transient);
        let error = read_error(&TableId::new("db", "t"), server(1412));
        assert_eq!(error.kind(), ErrorKind::Transient);
        assert_eq!(Error::from(error).kind(), ErrorKind::Transient);
    }

    #[test]
    fn read_errors_by_code() {
        let t = TableId::new("db", "t");
        let error = read_error(&t, server(1142));
        assert_eq!(error.kind(), ErrorKind::Config);
        assert!(
            error.to_string().contains("GRANT SELECT ON `db`.*"),
            "{error}"
        );
        let error = read_error(&t, server(TABLESPACE_DISCARDED));
        assert_eq!(error.kind(), ErrorKind::Transient);
        assert!(error.to_string().contains("IMPORT TABLESPACE"), "{error}");
        assert_eq!(read_error(&t, server(1146)).kind(), ErrorKind::Fatal);
        for code in [1205, 1213, 1053, 1927, 1040, 1317, 2006, 2013] {
            assert_eq!(
                read_error(&t, server(code)).kind(),
                ErrorKind::Transient,
                "{code}"
            );
        }
    }
}
