//! The store-neutral parts of a key-value sink (DESIGN §2, §4–6), for the etcd sink and for
//! sinks of other stores: [`batch`] packs changes into store transactions (coalescing by key,
//! splitting by op and byte limits, commit marks and change tallies); [`markers`] encodes the
//! checkpoint, split-transaction and snapshot markers kept beside the data; [`events`] logs and
//! counts what a sink does; [`chain`] keeps
//! streaming writes in flight in their order; [`index`] names the
//! key-index entries of tables whose keys come from a transform; [`store`] is what a store
//! offers the kit's drivers, and [`stale`] the driver that removes the keys a snapshot did not
//! rewrite. It depends on core only.

pub mod batch;
pub mod chain;
pub mod events;
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
    pub fn kind(&self) -> etcdsync_core::ErrorKind {
        match self {
            KitError::Malformed { .. } => etcdsync_core::ErrorKind::Config,
            KitError::Protocol(_) | KitError::PredecessorFailed => etcdsync_core::ErrorKind::Fatal,
            // Read the chain again from a restart; a persistent other writer repeats it loudly.
            KitError::ChainBroken { .. } => etcdsync_core::ErrorKind::Transient,
        }
    }
}

impl From<KitError> for etcdsync_core::Error {
    fn from(error: KitError) -> Self {
        let kind = error.kind();
        etcdsync_core::Error::wrap(kind, error)
    }
}
