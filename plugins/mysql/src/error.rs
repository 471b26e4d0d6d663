//! `MysqlError`: what can go wrong in the `mysql` source, and how each case maps to a core
//! [`ErrorKind`] (connection trouble is transient and restarts the pipeline from the checkpoint).

use etcdsync_core::{Error, ErrorKind};

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

/// The server error code, if this is a server error.
pub fn server_code(error: &mysql_async::Error) -> Option<u16> {
    match error {
        mysql_async::Error::Server(server) => Some(server.code),
        _ => None,
    }
}

pub type Result<T, E = MysqlError> = std::result::Result<T, E>;
