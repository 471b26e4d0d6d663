//! The store-neutral parts of a key-value sink (DESIGN §2, §4–6), for the etcd sink and for
//! sinks of other stores. A store implements [`store::Store`] (atomic guarded writes, reads, a
//! revision, paged listings); [`writer::Writer`] does the rest: ordering and group commit,
//! coalescing by key and splitting by the limits of [`settings::SinkSettings`] ([`batch`]), the
//! checkpoint in the same write ([`markers`]), acknowledgement after durability, snapshot batches
//! in flight, stale-key clean-up ([`stale`]), the key index of tables whose keys come from a
//! transform ([`index`]), and streaming writes in flight in their order ([`chain`]); [`events`]
//! logs and counts what it does. It depends on core only.

pub mod batch;
pub mod chain;
pub mod events;
pub mod index;
pub mod keys;
pub mod markers;
pub mod settings;
pub mod stale;
pub mod store;
#[doc(hidden)]
pub mod test_hooks;
pub mod writer;

/// What a sink on the kit can fail with, whatever its store: a marker that does not parse, a
/// change it cannot store (too large, a bad or colliding key, an unresolvable unchanged value).
use etcdsync_core::encode::json::EncodeError;
use etcdsync_core::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// A metadata key holds something that is not its marker.
    #[error(
        "`{key}` holds a malformed checkpoint ({reason}); delete it (etcdctl del '{key}') to start over \
         with a fresh snapshot, or point sink.meta_prefix elsewhere"
    )]
    Malformed { key: String, reason: String },

    /// A change that breaks the source contract (a key column without a value, a `Commit`
    /// inside a snapshot).
    #[error("unexpected message from the source: {0}")]
    Protocol(String),

    /// One change does not fit into one store request; `raise` is the store's way to allow more.
    #[error(
        "table {table}: the change of key `{key}` needs {size} bytes, more than one request may carry \
         ({limit} bytes with sink.max_request_bytes = {max_request_bytes}); {raise}, or set \
         sink.on_oversize: skip to skip such values"
    )]
    Oversize {
        table: String,
        key: String,
        size: usize,
        limit: usize,
        max_request_bytes: usize,
        raise: &'static str,
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

    /// Reading a row from the source to fill an unchanged value failed; `kind` is the source
    /// error's (a lost connection is retried).
    #[error("{message}")]
    Fetch { message: String, kind: ErrorKind },

    /// An internal failure of the sink (a task panicked, a state that cannot happen).
    #[error("sink internal error: {0}")]
    Internal(String),

    /// The store failed in a way it cannot retry (a file that cannot be written).
    #[error("{0}")]
    Store(String),

    /// The store cannot do what the configuration asks (the message names the fix).
    #[error("{0}")]
    Unsupported(String),

    /// The checkpoint key changed under the streaming chain ([`chain`]): something else wrote
    /// it. The pipeline starts again from the checkpoint the store holds.
    #[error(
        "the checkpoint key `{key}` holds {found}, not what this instance's previous transaction put: something \
         else wrote it (a late retry of an earlier attempt of this instance, another `etcdsync run` of the same \
         pipeline without ha, `etcdctl`, or a restore); the pipeline starts again from the checkpoint the store \
         holds — if this repeats, stop the other writer"
    )]
    ChainBroken { key: String, found: String },

    /// A streaming transaction was not sent because the one before it failed (that one's error
    /// is the one reported).
    #[error("a streaming transaction was not applied because the one before it failed")]
    PredecessorFailed,
}

impl KitError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            KitError::Malformed { .. } => ErrorKind::Config,
            KitError::Fetch { kind, .. } => *kind,
            KitError::Protocol(_)
            | KitError::PredecessorFailed
            | KitError::Oversize { .. }
            | KitError::InvalidKey { .. }
            | KitError::KeyOutsidePrefix { .. }
            | KitError::KeyCollision { .. }
            | KitError::UnresolvedUnchanged { .. }
            | KitError::Encode { .. }
            | KitError::Internal(_)
            | KitError::Store(_) => ErrorKind::Fatal,
            KitError::Unsupported(_) => ErrorKind::Config,
            // Read the chain again from a restart; a persistent other writer repeats it loudly.
            KitError::ChainBroken { .. } => ErrorKind::Transient,
        }
    }
}

impl From<KitError> for etcdsync_core::Error {
    fn from(error: KitError) -> Self {
        let kind = error.kind();
        etcdsync_core::Error::wrap(kind, error)
    }
}
