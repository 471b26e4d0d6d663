//! `EtcdError`: everything the etcd sink can fail with, and its mapping onto core's
//! [`ErrorKind`] (retry / stop / fix the config). Messages name the table, key or config key and
//! the fix; they never contain secrets.

use etcdsync_core::{Error, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A TLS file named in the config cannot be read.
    #[error("sink.tls.{field}: cannot read `{path}`: {source}; check that the file exists and is readable")]
    TlsFile {
        field: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// An etcd request failed; `kind` says whether retrying can help and `hint` what to do.
    #[error("etcd {op} failed: {detail}{hint}")]
    Request {
        op: String,
        kind: ErrorKind,
        detail: String,
        hint: String,
        #[source]
        source: etcd_client::Error,
    },

    /// What any sink on the kit can fail with: a change it cannot store (too large, a bad or
    /// colliding key, an unresolvable unchanged value), a marker that does not parse
    /// ([`etcdsync_sink_kit::KitError`]).
    #[error(transparent)]
    Kit(#[from] etcdsync_sink_kit::KitError),

    /// A write's leadership compare failed (DESIGN §7): another instance leads now.
    #[error("etcd refused to {0}: this instance no longer holds the pipeline's leadership; it stops writing")]
    CompareFailed(String),

    /// Another instance leads the pipeline and `ha.enabled` is off: the message names it.
    #[error("{0}")]
    AlreadyRunning(String),

    /// An internal failure of the sink (a task panicked, etcd answered without a header).
    #[error("etcd sink internal error: {0}")]
    Task(String),

    /// The pipeline is stopping; whatever was being retried is abandoned, unacknowledged.
    #[error("stopped while waiting for etcd")]
    Shutdown,
}

impl EtcdError {
    /// The fix an etcd request error suggests (without the leading `; `), if it has one.
    pub fn hint(&self) -> Option<&str> {
        match self {
            EtcdError::Request { hint, .. } if !hint.is_empty() => {
                Some(hint.trim_start_matches("; "))
            }
            _ => None,
        }
    }

    /// What failed, without the suggested fix.
    pub fn detail(&self) -> String {
        match self {
            EtcdError::Request { op, detail, .. } => format!("etcd {op} failed: {detail}"),
            other => other.to_string(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            EtcdError::TlsFile { .. } => ErrorKind::Config,
            EtcdError::Kit(error) => error.kind(),
            EtcdError::Request { kind, .. } => *kind,
            EtcdError::AlreadyRunning(_) | EtcdError::Task(_) => ErrorKind::Fatal,
            // The leadership fence (DESIGN §7); streaming order compares report ChainBroken.
            EtcdError::CompareFailed(_) => ErrorKind::Fenced,
            EtcdError::Shutdown => ErrorKind::Transient,
        }
    }
}

impl From<EtcdError> for Error {
    fn from(error: EtcdError) -> Self {
        let kind = error.kind();
        Error::wrap(kind, error)
    }
}
