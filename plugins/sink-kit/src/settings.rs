//! What a sink on the kit is configured with, whatever its store: where data and metadata keys
//! live (DESIGN §2), how large a store transaction may be, what to do with a change that does not
//! fit or whose key is invalid, and how many transactions may be in flight.

use crate::batch::Limits;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `sink.on_oversize`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOversize {
    #[default]
    Error,
    Skip,
}

/// `sink.on_invalid_key`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInvalidKey {
    #[default]
    Error,
    Skip,
}

/// The checked settings of a sink's writer.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// The data prefix as given (normalised, no trailing `/`), for `row_key`/`table_prefix`.
    pub prefix: String,
    /// `{prefix}/`: every data key starts with this.
    pub data_prefix: String,
    /// `{meta_prefix}/`: every metadata key starts with this.
    pub meta_prefix: String,
    /// Operations per store transaction.
    pub max_txn_ops: usize,
    /// Bytes per store request.
    pub max_request_bytes: usize,
    pub on_oversize: OnOversize,
    pub on_invalid_key: OnInvalidKey,
    /// Snapshot transactions applied at once.
    pub snapshot_txns_in_flight: usize,
    /// Streaming transactions applied at once, in order ([`crate::chain`]).
    pub stream_txns_in_flight: usize,
    /// How often an idle stream writes its checkpoint.
    pub heartbeat_interval: Duration,
}

impl SinkSettings {
    pub const DEFAULT_MAX_TXN_OPS: usize = 128;
    /// etcd's own default `--max-request-bytes`.
    pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1_572_864;
    pub const DEFAULT_SNAPSHOT_TXNS_IN_FLIGHT: usize = 4;
    pub const DEFAULT_STREAM_TXNS_IN_FLIGHT: usize = 1;
    pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

    /// Data keys under `{prefix}/`, metadata under `{meta_prefix}/` (both given without the
    /// trailing `/`), the defaults for the rest (oversized changes and invalid keys are errors).
    pub fn new(prefix: &str, meta_prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            data_prefix: format!("{prefix}/"),
            meta_prefix: format!("{meta_prefix}/"),
            max_txn_ops: Self::DEFAULT_MAX_TXN_OPS,
            max_request_bytes: Self::DEFAULT_MAX_REQUEST_BYTES,
            on_oversize: OnOversize::Error,
            on_invalid_key: OnInvalidKey::Error,
            snapshot_txns_in_flight: Self::DEFAULT_SNAPSHOT_TXNS_IN_FLIGHT,
            stream_txns_in_flight: Self::DEFAULT_STREAM_TXNS_IN_FLIGHT,
            heartbeat_interval: Self::DEFAULT_HEARTBEAT_INTERVAL,
        }
    }

    /// `{meta}/checkpoint`.
    pub fn checkpoint_key(&self) -> String {
        format!("{}checkpoint", self.meta_prefix)
    }

    /// `{meta}/snapshot`.
    pub fn snapshot_key(&self) -> String {
        format!("{}snapshot", self.meta_prefix)
    }

    /// `{meta}/partial`: the progress of a source transaction applied in parts.
    pub fn partial_key(&self) -> String {
        format!("{}partial", self.meta_prefix)
    }

    /// `{meta}/status`: written only by the running sink.
    pub fn status_key(&self) -> String {
        format!("{}status", self.meta_prefix)
    }

    /// `{meta}/tables/`: one key per table this pipeline has written rows of (`verify --repair`
    /// deletes keys of no other table outside the selection).
    pub fn table_markers(&self) -> String {
        format!("{}tables/", self.meta_prefix)
    }

    /// `{meta}/tables/{schema}/{table}` (components escaped as in data keys).
    pub fn table_marker(&self, table: &etcdsync_core::TableId) -> String {
        use etcdsync_core::encode::key::escape_component;
        format!(
            "{}{}/{}",
            self.table_markers(),
            escape_component(&table.schema),
            escape_component(&table.table)
        )
    }

    /// `{meta}/leader`: the HA election key (DESIGN §7).
    pub fn leader_key(&self) -> String {
        format!("{}leader", self.meta_prefix)
    }

    /// Packing limits of streaming transactions (one op and some bytes kept for the checkpoint).
    pub fn stream_limits(&self) -> Limits {
        Limits::with_checkpoint(self.max_txn_ops, self.max_request_bytes)
    }

    /// Packing limits of snapshot transactions (no checkpoint).
    pub fn snapshot_limits(&self) -> Limits {
        Limits::without_checkpoint(self.max_txn_ops, self.max_request_bytes)
    }
}
