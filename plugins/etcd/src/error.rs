//! `EtcdError`: everything the etcd sink can fail with, and its mapping onto core's
//! [`ErrorKind`] (retry / stop / fix the config). Messages name the table, key or config key and
//! the fix; they never contain secrets.

use etcdsync_core::encode::json::EncodeError;
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

    /// One change does not fit into one etcd request.
    #[error(
        "table {table}: the change of key `{key}` needs {size} bytes, more than one etcd request may carry \
         ({limit} bytes with sink.max_request_bytes = {max_request_bytes}); raise sink.max_request_bytes \
         (and etcd's --max-request-bytes to match), or set sink.on_oversize: skip to skip such values"
    )]
    Oversize {
        table: String,
        key: String,
        size: usize,
        limit: usize,
        max_request_bytes: usize,
    },

    /// A row whose key from a transform has an empty component (`on_invalid_key: error`).
    #[error(
        "table {table}, row ({row}): its key `{key}` has an empty component, so it cannot be stored (a key \
         template renders one when a column it names is empty in the row, e.g. `{{name}}` with name = ''; a \
         transform's key is relative to the data prefix, without a leading `/`); give that column a value in the \
         row, change the key_template, or set sink.on_invalid_key: skip to skip such rows (each is logged and \
         counted, and the row's previous key is deleted)"
    )]
    InvalidKey {
        table: String,
        row: String,
        key: String,
    },

    /// A (transformed) key that is not under the data prefix.
    #[error(
        "table {table}: key `{key}` is not a key below the data prefix `{prefix}` (transforms give keys relative \
         to sink.prefix, non-empty and without a leading `/`); etcdsync writes only under sink.prefix and \
         sink.meta_prefix, so fix the transform that produced this key"
    )]
    KeyOutsidePrefix {
        table: String,
        key: String,
        prefix: String,
    },

    /// Two rows map to the same key (a key template that does not hold the primary key).
    #[error(
        "key `{key}` of row {row} is already the key of row {other}: two rows map to one key; make the \
         key_template hold every primary-key column (e.g. {{id}}) so keys are unique"
    )]
    KeyCollision {
        key: String,
        row: String,
        other: String,
    },

    /// A PostgreSQL TOAST column arrived unchanged and there is no stored value to fill it from.
    #[error(
        "table {table}, key `{key}`: column {column} arrived unchanged (TOAST) but {reason}; \
         to get past this change take a fresh snapshot (stop etcdsync, delete the checkpoint key under the \
         sink's meta prefix, start it again), and run ALTER TABLE … REPLICA IDENTITY FULL on the table so \
         later updates carry the value"
    )]
    UnresolvedUnchanged {
        table: String,
        key: String,
        column: String,
        reason: String,
    },

    /// A row that cannot be encoded as JSON.
    #[error("table {table}, key `{key}`: {source}")]
    Encode {
        table: String,
        key: String,
        #[source]
        source: EncodeError,
    },

    /// A marker that does not parse, a change the kit cannot key ([`etcdsync_sink_kit`]).
    #[error(transparent)]
    Kit(#[from] etcdsync_sink_kit::KitError),

    /// The message stream broke the source contract (e.g. a `Commit` inside a snapshot).
    #[error("unexpected message from the source: {0}")]
    Protocol(String),

    /// A write's leadership compare failed (DESIGN §7): another instance leads now.
    #[error("etcd refused to {0}: this instance no longer holds the pipeline's leadership; it stops writing")]
    CompareFailed(String),

    /// The checkpoint key changed under the streaming chain (DESIGN §4): something else wrote
    /// it. The pipeline starts again from the checkpoint etcd holds.
    #[error(
        "the checkpoint key `{key}` holds {found}, not what this instance's previous transaction put: something \
         else wrote it (a late retry of an earlier attempt of this instance, another `etcdsync run` of the same \
         pipeline without ha, `etcdctl`, or a restore); the pipeline starts again from the checkpoint etcd holds — \
         if this repeats, stop the other writer"
    )]
    ChainBroken { key: String, found: String },

    /// Another instance leads the pipeline and `ha.enabled` is off: the message names it.
    #[error("{0}")]
    AlreadyRunning(String),

    /// Reading a row from the source to fill an unchanged value failed; `kind` is the source
    /// error's (a lost connection is retried).
    #[error("{message}")]
    Fetch { message: String, kind: ErrorKind },

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
            EtcdError::Request { kind, .. } | EtcdError::Fetch { kind, .. } => *kind,
            EtcdError::Oversize { .. }
            | EtcdError::InvalidKey { .. }
            | EtcdError::KeyOutsidePrefix { .. }
            | EtcdError::KeyCollision { .. }
            | EtcdError::UnresolvedUnchanged { .. }
            | EtcdError::Encode { .. }
            | EtcdError::Protocol(_)
            | EtcdError::AlreadyRunning(_)
            | EtcdError::Task(_) => ErrorKind::Fatal,
            // Read the chain again from a restart; a persistent other writer repeats it loudly.
            EtcdError::ChainBroken { .. } => ErrorKind::Transient,
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
