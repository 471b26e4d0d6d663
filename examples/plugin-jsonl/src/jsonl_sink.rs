//! `type: jsonl` — appends each change as a JSON line to a file and keeps the checkpoint in a
//! sidecar file written after the data is flushed, so a restart resumes after it.

use etcdsync_core::change::{rfc3339, Checkpoint, Message, Op};
use etcdsync_core::encode::json::{encode_row, write_str};
use etcdsync_core::registry::{PluginInfo, PluginKind};
use etcdsync_core::sink::{Sink, SinkConfig, SinkContext, SinkIo};
use etcdsync_core::{async_trait, Error, ErrorKind, Result};
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

impl JsonlSink {
    fn checkpoint_path(&self) -> PathBuf {
        let mut path = self.path.clone().into_os_string();
        path.push(".checkpoint");
        path.into()
    }
}

#[async_trait]
impl Sink for JsonlSink {
    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>> {
        match tokio::fs::read(self.checkpoint_path()).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::config(format!(
                    "jsonl sink: {} is not a checkpoint ({e}); delete it to start over",
                    self.checkpoint_path().display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("read", &self.checkpoint_path(), e)),
        }
    }

    async fn run(mut self: Box<Self>, mut io: SinkIo) -> Result<()> {
        let mut lines = Vec::new();
        while let Some(message) = io.input.recv().await {
            let position = match message {
                Message::Changes(changes) => {
                    for change in changes {
                        let row = match &change.op {
                            Op::Insert { row } | Op::Update { row, .. } => Some(
                                encode_row(&change.table, row)
                                    .map_err(|e| Error::fatal(e.to_string()))?,
                            ),
                            _ => None,
                        };
                        lines.extend_from_slice(b"{\"table\":");
                        write_str(&mut lines, &change.table.id.to_string());
                        lines.extend_from_slice(b",\"op\":");
                        write_str(&mut lines, change.op_name());
                        lines.extend_from_slice(b",\"row\":");
                        lines.extend_from_slice(row.as_deref().unwrap_or(b"null"));
                        lines.extend_from_slice(b"}\n");
                    }
                    continue;
                }
                Message::Commit(commit) => commit.position,
                Message::SnapshotFinished { position } | Message::Heartbeat { position } => {
                    position
                }
                Message::SnapshotStarted { .. } => continue,
            };
            self.file
                .write_all(&lines)
                .await
                .map_err(|e| io_error("write", &self.path, e))?;
            self.file
                .sync_data()
                .await
                .map_err(|e| io_error("sync", &self.path, e))?;
            lines.clear();
            let checkpoint = Checkpoint {
                source: self.source_type.clone(),
                position: position.clone(),
                committed_at: None,
                applied_at: rfc3339(SystemTime::now()),
            };
            let text = serde_json::to_vec(&checkpoint).map_err(|e| Error::fatal(e.to_string()))?;
            tokio::fs::write(self.checkpoint_path(), text)
                .await
                .map_err(|e| io_error("write", &self.checkpoint_path(), e))?;
            io.acked.send_replace(Some(position));
        }
        Ok(())
    }
}
