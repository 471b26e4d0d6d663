//! `type: jsonl_file` — a source that tails a file of JSON-lines changes, one source transaction
//! per line, the model for "extending etcdsync to a new database":
//!
//! ```json
//! {"table": "app.settings", "key": ["name"], "op": "upsert", "row": {"name": "a", "value": 1}}
//! {"table": "app.settings", "key": ["name"], "op": "delete", "row": {"name": "a"}}
//! ```
//!
//! Its position is the byte offset after the last line applied: the checkpoint the sink stores
//! with the data, so a restart resumes strictly after it (no line applied twice or lost). There
//! is no separate snapshot: the file from offset 0 is the whole history. Memory holds one line.

use etcdsync_core::change::{Column, Commit, Message, Position, TableId, TableSchema};
use etcdsync_core::registry::{PluginInfo, PluginKind};
use etcdsync_core::source::{Source, SourceConfig, SourceContext, SourceIo};
use etcdsync_core::{async_trait, Change, Error, ErrorKind, Result, Value};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlFileConfig {
    /// The change file to follow.
    pub path: PathBuf,
}

inventory::submit! {
    PluginInfo {
        kind: PluginKind::Source,
        name: "jsonl_file",
        summary: "follows a file of JSON-lines changes, one transaction per line (example plugin)",
        example: "type: jsonl_file\npath: /var/lib/app/changes.jsonl\n",
    }
}

#[async_trait]
#[typetag::serde(name = "jsonl_file")]
impl SourceConfig for JsonlFileConfig {
    fn validate(&self, _pipeline_name: &str) -> Result<()> {
        if self.path.as_os_str().is_empty() {
            return Err(Error::config(
                "at `source.path`: empty; give the change file to follow",
            ));
        }
        Ok(())
    }

    async fn build(&self, cx: SourceContext) -> Result<Box<dyn Source>> {
        // Resume strictly after the checkpoint the sink stored; a fresh pipeline reads from 0.
        let offset = match &cx.resume {
            Some(checkpoint) => checkpoint.position.as_str().parse::<u64>().map_err(|_| {
                Error::config(format!(
                    "the checkpoint position `{}` is not a jsonl_file offset; was it written by another source type?",
                    checkpoint.position
                ))
            })?,
            None => 0,
        };
        Ok(Box::new(JsonlFileSource {
            path: self.path.clone(),
            offset,
        }))
    }
}

struct JsonlFileSource {
    path: PathBuf,
    offset: u64,
}

/// One line of the change file.
#[derive(Deserialize)]
struct Line {
    table: String,
    key: Vec<String>,
    op: String,
    row: serde_json::Map<String, serde_json::Value>,
}

#[async_trait]
impl Source for JsonlFileSource {
    async fn run(self: Box<Self>, io: SourceIo) -> Result<()> {
        let file = tokio::fs::File::open(&self.path).await.map_err(|e| {
            Error::new(
                ErrorKind::Transient,
                format!("jsonl_file: cannot open {}: {e}", self.path.display()),
            )
        })?;
        let mut reader = BufReader::new(file);
        reader
            .seek(std::io::SeekFrom::Start(self.offset))
            .await
            .map_err(|e| {
                Error::fatal(format!("jsonl_file: cannot seek to {}: {e}", self.offset))
            })?;
        let mut offset = self.offset;
        let mut text = String::new();
        loop {
            text.clear();
            let read = tokio::select! {
                _ = io.shutdown.cancelled() => break,
                read = reader.read_line(&mut text) => read.map_err(|e| {
                    Error::new(ErrorKind::Transient, format!("jsonl_file: reading at offset {offset}: {e}"))
                })?,
            };
            // At the end, or in the middle of a line still being written: wait for more.
            if read == 0 || !text.ends_with('\n') {
                if read > 0 {
                    reader
                        .seek(std::io::SeekFrom::Start(offset))
                        .await
                        .map_err(|e| {
                            Error::fatal(format!("jsonl_file: cannot seek back to {offset}: {e}"))
                        })?;
                }
                tokio::select! {
                    _ = io.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
            offset += read as u64;
            if text.trim().is_empty() {
                continue;
            }
            let change = parse(&text).map_err(|why| {
                Error::fatal(format!(
                    "jsonl_file: the line ending at offset {offset} of {} is not a change: {why}; fix the line",
                    self.path.display()
                ))
            })?;
            let commit = Commit {
                position: Position::new(offset.to_string()),
                commit_time: Some(SystemTime::now()),
            };
            if io.send(Message::Changes(vec![change])).await.is_err()
                || io.send(Message::Commit(commit)).await.is_err()
            {
                break; // the sink is gone: its error is the pipeline's
            }
        }
        // Source contract: stop reading, close the output, wait for the last acknowledgement.
        drop(io.output);
        let _ = SourceIo::final_ack(io.acked).await;
        Ok(())
    }
}

/// A change from one line: columns in the row's key order, the key columns named by `key`.
fn parse(text: &str) -> std::result::Result<Change, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let (schema, table) = line
        .table
        .split_once('.')
        .ok_or_else(|| format!("table `{}` is not schema.table", line.table))?;
    let names: Vec<&String> = line.row.keys().collect();
    let key = line
        .key
        .iter()
        .map(|k| {
            names
                .iter()
                .position(|n| *n == k)
                .ok_or_else(|| format!("key column `{k}` is not in the row"))
        })
        .collect::<std::result::Result<Vec<usize>, String>>()?;
    if key.is_empty() {
        return Err("`key` names no column".into());
    }
    let columns = names
        .iter()
        .map(|n| Column::new(n.as_str(), "json"))
        .collect();
    let schema = Arc::new(TableSchema::new(TableId::new(schema, table), columns, key));
    let row: Vec<Value> = line.row.values().map(value).collect();
    match line.op.as_str() {
        "upsert" | "insert" => Ok(Change::insert(schema, row)),
        "delete" => Ok(Change::delete(schema, row)),
        other => Err(format!("op `{other}` is not upsert, insert or delete")),
    }
}

fn value(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i),
            (_, Some(u), _) => Value::UInt(u),
            (_, _, Some(f)) => Value::Float64(f),
            _ => Value::Text(n.to_string()),
        },
        serde_json::Value::String(s) => Value::Text(s.clone()),
        other => Value::Json(other.to_string()),
    }
}
