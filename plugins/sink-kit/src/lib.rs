//! The store-neutral parts of a key-value sink (DESIGN §2, §4–6), for the etcd sink and for
//! sinks of other stores: [`batch`] packs changes into store transactions (coalescing by key,
//! splitting by op and byte limits, commit marks and change tallies); [`markers`] encodes the
//! checkpoint, split-transaction and snapshot markers kept beside the data; [`index`] names the
//! key-index entries of tables whose keys come from a transform; [`store`] is what a store
//! offers the kit's drivers, and [`stale`] the driver that removes the keys a snapshot did not
//! rewrite. It depends on core only.

pub mod batch;
pub mod index;
pub mod markers;
pub mod stale;
pub mod store;

/// What the kit itself can refuse: a marker that does not parse, a change the sink cannot key.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// A metadata key holds something that is not its marker.
    #[error(
        "`{key}` holds a malformed checkpoint ({reason}); delete it (etcdctl del '{key}') to start over \
         with a fresh snapshot, or point sink.meta_prefix elsewhere"
    )]
    Malformed { key: String, reason: String },

    /// A change that breaks the source contract (a key column without a value).
    #[error("unexpected message from the source: {0}")]
    Protocol(String),
}

impl KitError {
    pub fn kind(&self) -> etcdsync_core::ErrorKind {
        match self {
            KitError::Malformed { .. } => etcdsync_core::ErrorKind::Config,
            KitError::Protocol(_) => etcdsync_core::ErrorKind::Fatal,
        }
    }
}

impl From<KitError> for etcdsync_core::Error {
    fn from(error: KitError) -> Self {
        let kind = error.kind();
        etcdsync_core::Error::wrap(kind, error)
    }
}
