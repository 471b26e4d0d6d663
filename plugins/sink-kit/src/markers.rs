//! The metadata keys under `{meta_prefix}/` (DESIGN §2, §4–6): `checkpoint` (JSON
//! [`Checkpoint`], written only inside data transactions and by idle heartbeats), `partial` (how
//! far a split source transaction got) and `snapshot` (state of the last snapshot and its start
//! revision).

use crate::batch::CommitMark;
use crate::KitError;
use etcdsync_core::change::rfc3339;
use etcdsync_core::{Checkpoint, TableId};
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// The checkpoint JSON for a commit, stamped with the time it is sent. `writer` names the
/// streaming session and transaction that puts it (`{session}:{seq}`, the sink's ordered chain);
/// readers that know only DESIGN §5's fields ignore it.
pub fn encode_checkpoint(source: &str, mark: &CommitMark, writer: Option<&str>) -> Vec<u8> {
    let stored = StoredCheckpoint {
        checkpoint: Checkpoint {
            source: source.to_string(),
            position: mark.position.clone(),
            committed_at: mark.committed_at.clone(),
            applied_at: rfc3339(SystemTime::now()),
        },
        writer: writer.map(str::to_string),
    };
    // A struct of strings always serializes.
    serde_json::to_vec(&stored).unwrap_or_default()
}

/// The checkpoint key's value: DESIGN §5's fields plus the chain's `writer`.
#[derive(Serialize, Deserialize)]
struct StoredCheckpoint {
    #[serde(flatten)]
    checkpoint: Checkpoint,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    writer: Option<String>,
}

/// The `writer` of a checkpoint value, as (session, seq); `None` when it has none or is not a
/// checkpoint.
pub fn checkpoint_writer(value: &[u8]) -> Option<(String, u64)> {
    let stored: StoredCheckpoint = serde_json::from_slice(value).ok()?;
    let (session, seq) = stored
        .writer?
        .rsplit_once(':')
        .map(|(a, b)| (a.to_string(), b.to_string()))?;
    Some((session, seq.parse().ok()?))
}

/// Parses the value of the checkpoint key; `key` is named in the error.
pub fn decode_checkpoint(key: &str, value: &[u8]) -> Result<Checkpoint, KitError> {
    serde_json::from_slice(value).map_err(|e| KitError::Malformed {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// `{meta}/partial`: how far a source transaction larger than one etcd transaction got, written
/// in each of its parts and deleted with the checkpoint of its last (DESIGN §4). After a crash
/// between parts the transaction is replayed from the checkpoint; its first `changes` changes are
/// already in etcd and are skipped, so the replay continues exactly where the parts stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialMarker {
    /// The checkpoint position the parts followed (`None`: no checkpoint yet).
    pub after: Option<String>,
    /// Changes of the transaction that the applied parts hold, counted from its start.
    pub changes: u64,
    /// The `seq` of the last of them (decimal: it is 128 bits), when the source numbers its
    /// changes: the replay skips by it, whatever the source filters differently after the
    /// restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<String>,
}

impl PartialMarker {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(key: &str, value: &[u8]) -> Result<Self, KitError> {
        serde_json::from_slice(value).map_err(|e| KitError::Malformed {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }
}

/// `{meta}/snapshot`: which snapshot ran last, and from which etcd revision on its keys count as
/// fresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMarker {
    /// `running` or `done`.
    pub state: SnapshotState,
    /// etcd's revision before the snapshot wrote anything: keys of the snapshotted tables with a
    /// mod_revision at or below it were not rewritten and are removed when it finishes.
    pub start_revision: i64,
    pub tables: Vec<TableId>,
    /// RFC 3339 time of the state change.
    pub at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotState {
    Running,
    Done,
}

impl SnapshotMarker {
    pub fn new(state: SnapshotState, start_revision: i64, tables: &[TableId]) -> Self {
        Self {
            state,
            start_revision,
            tables: tables.to_vec(),
            at: rfc3339(SystemTime::now()),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdsync_core::Position;

    #[test]
    fn checkpoint_round_trip_and_malformed_value() {
        let mark = CommitMark {
            position: Position::new("0/1A"),
            committed_at: Some("2024-01-01T00:00:00Z".into()),
        };
        let json = encode_checkpoint("pgx", &mark, Some("a1.b2.0:7"));
        let back = decode_checkpoint("/m/checkpoint", &json).expect("parse");
        assert_eq!(back.source, "pgx");
        assert_eq!(back.position, Position::new("0/1A"));
        assert_eq!(back.committed_at.as_deref(), Some("2024-01-01T00:00:00Z"));
        assert_eq!(checkpoint_writer(&json), Some(("a1.b2.0".to_string(), 7)));
        // A checkpoint of DESIGN §5's fields alone (a snapshot's end, an older version) has no
        // writer.
        let plain = encode_checkpoint("pgx", &mark, None);
        assert_eq!(checkpoint_writer(&plain), None);
        assert!(!String::from_utf8_lossy(&plain).contains("writer"));
        let err = decode_checkpoint("/m/checkpoint", b"garbage").expect_err("malformed");
        let msg = err.to_string();
        assert!(
            msg.contains("/m/checkpoint") && msg.contains("delete"),
            "{msg}"
        );
        assert!(matches!(err, KitError::Malformed { .. }));
    }

    #[test]
    fn snapshot_marker_json() {
        let marker =
            SnapshotMarker::new(SnapshotState::Running, 42, &[TableId::new("public", "t")]);
        let text = String::from_utf8(marker.to_json()).expect("utf8");
        assert!(
            text.starts_with(r#"{"state":"running","start_revision":42,"tables":[{"schema":"public","table":"t"}]"#),
            "{text}"
        );
    }
}
