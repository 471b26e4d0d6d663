//! `type: jsonl` — appends each change as a JSON line (with its key, also for deletes) to a file
//! and keeps the checkpoint in a sidecar file, replaced atomically after the lines are durable,
//! with the file's length at that point: a restart cuts off lines after it and resumes after the
//! checkpoint, so each change is in the file once. Memory stays bounded: lines are written out
//! every [`FLUSH_BYTES`], a snapshot is never held whole.

use etcdsync_core::change::{rfc3339, Change, Checkpoint, Message, Op, Position};
use etcdsync_core::encode::json::{encode_row, write_str};
use etcdsync_core::registry::{PluginInfo, PluginKind};
use etcdsync_core::sink::{Sink, SinkConfig, SinkContext, SinkIo};
use etcdsync_core::{async_trait, Error, ErrorKind, Result, Value};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::SystemTime;
use tokio::io::AsyncWriteExt;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// File the change lines are appended to.
    pub path: PathBuf,
}

inventory::submit! {
    PluginInfo {
        kind: PluginKind::Sink,
        name: "jsonl",
        summary: "appends every change as a JSON line to a file (example plugin)",
        example: "type: jsonl\npath: /tmp/changes.jsonl\n",
    }
}

#[async_trait]
#[typetag::serde(name = "jsonl")]
impl SinkConfig for JsonlConfig {
    fn validate(&self, _pipeline_name: &str) -> Result<()> {
        if self.path.as_os_str().is_empty() {
            return Err(Error::config(
                "at `sink.path`: empty; give the file to append to",
            ));
        }
        Ok(())
    }

    async fn build(&self, cx: SinkContext) -> Result<Box<dyn Sink>> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(|e| io_error("open", &self.path, e))?;
        Ok(Box::new(JsonlSink {
            path: self.path.clone(),
            file,
            source_type: cx.source_type,
        }))
    }
}

fn io_error(what: &str, path: &std::path::Path, e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Fatal,
        format!("jsonl sink: cannot {what} {}: {e}", path.display()),
    )
}

struct JsonlSink {
    path: PathBuf,
    file: tokio::fs::File,
    source_type: String,
}

/// Lines kept in memory before they are written (without a checkpoint): a snapshot or a large
/// source transaction never sits in memory whole.
const FLUSH_BYTES: usize = 1 << 20;

/// The sidecar file: the checkpoint and the data file's length when it was written. Lines past
/// that length belong to transactions after the checkpoint; a restart cuts them off and the
/// source sends them again, so every change is in the file exactly once.
#[derive(Serialize, Deserialize)]
struct Sidecar {
    #[serde(flatten)]
    checkpoint: Checkpoint,
    offset: u64,
}

impl JsonlSink {
    fn checkpoint_path(&self) -> PathBuf {
        let mut path = self.path.clone().into_os_string();
        path.push(".checkpoint");
        path.into()
    }

    async fn write_lines(&mut self, lines: &mut Vec<u8>) -> Result<()> {
        self.file
            .write_all(lines)
            .await
            .map_err(|e| io_error("write", &self.path, e))?;
        lines.clear();
        Ok(())
    }

    /// Makes the lines durable, then replaces the sidecar atomically (write, fsync, rename,
    /// fsync of the directory): a crash leaves the old checkpoint or the new one, never a torn one.
    async fn commit(&mut self, lines: &mut Vec<u8>, position: &Position) -> Result<()> {
        self.write_lines(lines).await?;
        self.file
            .sync_data()
            .await
            .map_err(|e| io_error("sync", &self.path, e))?;
        let offset = self
            .file
            .metadata()
            .await
            .map_err(|e| io_error("stat", &self.path, e))?
            .len();
        let sidecar = Sidecar {
            checkpoint: Checkpoint {
                source: self.source_type.clone(),
                position: position.clone(),
                committed_at: None,
                applied_at: rfc3339(SystemTime::now()),
            },
            offset,
        };
        let text = serde_json::to_vec(&sidecar).map_err(|e| Error::fatal(e.to_string()))?;
        let target = self.checkpoint_path();
        let mut temporary = target.clone().into_os_string();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let mut file = tokio::fs::File::create(&temporary)
            .await
            .map_err(|e| io_error("create", &temporary, e))?;
        file.write_all(&text)
            .await
            .map_err(|e| io_error("write", &temporary, e))?;
        file.sync_all()
            .await
            .map_err(|e| io_error("sync", &temporary, e))?;
        tokio::fs::rename(&temporary, &target)
            .await
            .map_err(|e| io_error("rename", &temporary, e))?;
        let dir = target.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(std::path::Path::new("."));
        let directory = tokio::fs::File::open(dir)
            .await
            .map_err(|e| io_error("open", dir, e))?;
        directory
            .sync_all()
            .await
            .map_err(|e| io_error("sync", dir, e))?;
        Ok(())
    }
}

/// One change as a line: table, op, the row's key (a delete's too; an update that moved the row
/// also names its old key) and the row's JSON (`null` for deletes and truncates).
fn append_line(lines: &mut Vec<u8>, change: &Change) -> Result<()> {
    let table = &change.table;
    let key = |row: &[Value]| -> Result<Vec<u8>> {
        let values: Vec<String> = table.key_values(row).map(Value::to_text).collect();
        serde_json::to_vec(&values).map_err(|e| Error::fatal(e.to_string()))
    };
    let (row, key, old_key) = match &change.op {
        Op::Insert { row } => (Some(row), Some(key(row)?), None),
        Op::Update { row, old } => {
            let moved = old
                .as_ref()
                .filter(|old| table.key_of(old) != table.key_of(row));
            (
                Some(row),
                Some(key(row)?),
                moved.map(|old| key(old)).transpose()?,
            )
        }
        Op::Delete { old } => (None, Some(key(old)?), None),
        Op::Truncate => (None, None, None),
    };
    lines.extend_from_slice(b"{\"table\":");
    write_str(lines, &table.id.to_string());
    lines.extend_from_slice(b",\"op\":");
    write_str(lines, change.op_name());
    lines.extend_from_slice(b",\"key\":");
    lines.extend_from_slice(key.as_deref().unwrap_or(b"null"));
    if let Some(old_key) = old_key {
        lines.extend_from_slice(b",\"old_key\":");
        lines.extend_from_slice(&old_key);
    }
    lines.extend_from_slice(b",\"row\":");
    match row {
        Some(row) => lines
            .extend_from_slice(&encode_row(table, row).map_err(|e| Error::fatal(e.to_string()))?),
        None => lines.extend_from_slice(b"null"),
    }
    lines.extend_from_slice(b"}\n");
    Ok(())
}

#[async_trait]
impl Sink for JsonlSink {
    /// Reads the sidecar and cuts the data file back to the length it records.
    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>> {
        let path = self.checkpoint_path();
        let sidecar: Sidecar = match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::config(format!(
                    "jsonl sink: {} is not a checkpoint ({e}); delete it and {} to start over",
                    path.display(),
                    self.path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // No checkpoint: whatever the file holds is from a run that never committed.
                self.file
                    .set_len(0)
                    .await
                    .map_err(|e| io_error("truncate", &self.path, e))?;
                return Ok(None);
            }
            Err(e) => return Err(io_error("read", &path, e)),
        };
        self.file
            .set_len(sidecar.offset)
            .await
            .map_err(|e| io_error("truncate", &self.path, e))?;
        Ok(Some(sidecar.checkpoint))
    }

    async fn run(mut self: Box<Self>, mut io: SinkIo) -> Result<()> {
        let mut lines = Vec::new();
        while let Some(message) = io.input.recv().await {
            let position = match message {
                Message::Changes(changes) => {
                    for change in &changes {
                        append_line(&mut lines, change)?;
                    }
                    if lines.len() >= FLUSH_BYTES {
                        self.write_lines(&mut lines).await?;
                    }
                    continue;
                }
                Message::Commit(commit) => commit.position,
                Message::SnapshotFinished { position } | Message::Heartbeat { position } => {
                    position
                }
                Message::SnapshotStarted { .. } => continue,
            };
            self.commit(&mut lines, &position).await?;
            io.acked.send_replace(Some(position));
        }
        Ok(())
    }
}
