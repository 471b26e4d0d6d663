//! `PgxError`: what goes wrong talking to PostgreSQL, and how each failure maps to core's
//! `ErrorKind` (STYLE §4): lost connections and server restarts are `Transient` so the pipeline
//! restarts from the checkpoint; missing prerequisites are `Config` errors that name the fix.

use etcdsync_core::{Error, ErrorKind};
use pgwire_replication::PgWireError;

#[derive(Debug, thiserror::Error)]
pub enum PgxError {
    #[error("{context}: {source}")]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{context}: {source}")]
    Replication {
        context: String,
        #[source]
        source: PgWireError,
    },
    #[error("{0}")]
    Protocol(String),
}

impl PgxError {
    pub fn postgres(context: impl Into<String>, source: tokio_postgres::Error) -> Self {
        PgxError::Postgres {
            context: context.into(),
            source,
        }
    }

    pub fn replication(context: impl Into<String>, source: PgWireError) -> Self {
        PgxError::Replication {
            context: context.into(),
            source,
        }
    }

    /// How the pipeline should treat this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PgxError::Postgres { source, .. } => postgres_kind(source),
            PgxError::Replication { source, .. } => replication_kind(source),
            PgxError::Protocol(_) => ErrorKind::Fatal,
        }
    }
}

impl From<PgxError> for Error {
    fn from(error: PgxError) -> Self {
        let kind = error.kind();
        Error::wrap(kind, error)
    }
}

/// SQLSTATEs after which a retry can succeed: connection exceptions (class 08), operator
/// intervention (class 57: admin shutdown, crash shutdown, cannot connect now), insufficient
/// resources (class 53), serialization failures and lock contention (40001, 40P01, 55P03),
/// object in use (55006: a slot still held by the previous session).
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("57")
        || code.starts_with("53")
        || matches!(code, "40001" | "40P01" | "55P03" | "55006")
}

fn postgres_kind(error: &tokio_postgres::Error) -> ErrorKind {
    if let Some(db) = error.as_db_error() {
        let code = db.code().code();
        if transient_sqlstate(code) {
            return ErrorKind::Transient;
        }
        if code.starts_with("28") || code == "3D000" {
            // invalid authorization / password, database does not exist
            return ErrorKind::Config;
        }
        return ErrorKind::Fatal;
    }
    if tls_rejected(error) {
        // The server's certificate (or ours) was refused: retrying cannot fix it.
        return ErrorKind::Config;
    }
    // No server error: the connection closed, could not be opened, or I/O failed.
    ErrorKind::Transient
}

/// True when a TLS handshake failed on a certificate (rustls's error is wrapped in an
/// `io::Error` somewhere in the chain, which `source()` does not reveal).
fn tls_rejected(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        let rustls_error = current.downcast_ref::<rustls::Error>().or_else(|| {
            current
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if matches!(
            rustls_error,
            Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
        ) {
            return true;
        }
        cause = current.source();
    }
    false
}

fn replication_kind(error: &PgWireError) -> ErrorKind {
    if error.is_auth() {
        return ErrorKind::Config;
    }
    if error.is_transient() || error.is_io() {
        return ErrorKind::Transient;
    }
    if error.is_server() {
        let text = error.to_string();
        // The server restarting or a slot still held by a walsender that is going away.
        if text.contains("is active for PID")
            || text.contains("terminating connection")
            || text.contains("shutting down")
            || text.contains("the database system is")
        {
            return ErrorKind::Transient;
        }
        return ErrorKind::Fatal;
    }
    if matches!(error, PgWireError::Task(_) | PgWireError::Internal(_)) {
        return ErrorKind::Transient;
    }
    ErrorKind::Fatal
}

/// Wraps a tokio-postgres error with what was being done.
pub fn pg(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    let context = context.into();
    move |e| PgxError::postgres(context, e).into()
}

/// Wraps a replication-session error with what was being done.
pub fn wire(context: impl Into<String>) -> impl FnOnce(PgWireError) -> Error {
    let context = context.into();
    move |e| PgxError::replication(context, e).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates() {
        assert!(transient_sqlstate("08006"));
        assert!(transient_sqlstate("57P01"));
        assert!(transient_sqlstate("55006"));
        assert!(!transient_sqlstate("42P01"));
    }

    #[test]
    fn replication_errors() {
        let io = PgWireError::Io(std::sync::Arc::new(std::io::Error::other("reset")));
        assert_eq!(replication_kind(&io), ErrorKind::Transient);
        let busy = PgWireError::Server("replication slot \"s\" is active for PID 42".into());
        assert_eq!(replication_kind(&busy), ErrorKind::Transient);
        let bad = PgWireError::Server("publication \"p\" does not exist".into());
        assert_eq!(replication_kind(&bad), ErrorKind::Fatal);
    }
}

/// A prerequisite that does not hold: what was found, and the change that fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub detail: String,
    pub fix: String,
}

impl Problem {
    pub fn new(detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            fix: fix.into(),
        }
    }

    /// The configuration error `build` fails with: the finding, then the fix.
    pub fn into_error(self) -> etcdsync_core::Error {
        etcdsync_core::Error::config(format!("{}: {}", self.detail, self.fix))
    }
}
