//! Core's config loading and pipeline, driven by in-memory fake plugins (no servers).

use etcdsync_core::change::{Column, Commit, Message, Position, TableId, TableSchema};
use etcdsync_core::config::PipelineConfig;
use etcdsync_core::sink::{Sink, SinkConfig, SinkContext, SinkIo};
use etcdsync_core::source::{Source, SourceConfig, SourceContext, SourceIo};
use etcdsync_core::transform::{Transform, TransformConfig};
use etcdsync_core::{async_trait, Change, Checkpoint, Error, Op, Result, Value};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Emits `transactions` one-row transactions, positions "1", "2", …; then waits for shutdown
/// and records the final acknowledged position.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeSourceConfig {
    transactions: u32,
    #[serde(default)]
    fail_after: Option<u32>,
}

static FINAL_ACK: Mutex<Option<Position>> = Mutex::new(None);

#[async_trait]
#[typetag::serde(name = "fake")]
impl SourceConfig for FakeSourceConfig {
    fn validate(&self, _name: &str) -> Result<()> {
        if self.transactions == 0 {
            return Err(Error::config(
                "at `source.transactions`: must be at least 1",
            ));
        }
        Ok(())
    }

    async fn build(&self, cx: SourceContext) -> Result<Box<dyn Source>> {
        Ok(Box::new(FakeSource {
            transactions: self.transactions,
            fail_after: self.fail_after,
            resume: cx.resume,
        }))
    }
}

struct FakeSource {
    transactions: u32,
    fail_after: Option<u32>,
    resume: Option<Checkpoint>,
}

fn schema() -> Arc<TableSchema> {
    Arc::new(TableSchema::new(
        TableId::new("s", "t"),
        vec![Column::new("id", "int"), Column::new("v", "text")],
        vec![0],
    ))
}

#[async_trait]
impl Source for FakeSource {
    async fn run(self: Box<Self>, io: SourceIo) -> Result<()> {
        let start: u32 = self.resume.map_or(0, |c| c.position.0.parse().unwrap_or(0));
        let table = schema();
        for n in start + 1..=self.transactions {
            if self.fail_after == Some(n - 1) {
                return Err(Error::fatal(format!("source failed at transaction {n}")));
            }
            let row = vec![Value::Int(i64::from(n)), Value::Text(format!("row {n}"))];
            if io
                .send(Message::Changes(vec![Change::insert(table.clone(), row)]))
                .await
                .is_err()
                || io
                    .send(Message::Commit(Commit {
                        position: Position::new(n.to_string()),
                        commit_time: None,
                    }))
                    .await
                    .is_err()
            {
                return Ok(());
            }
        }
        io.shutdown.cancelled().await;
        let SourceIo { output, acked, .. } = io;
        drop(output);
        *FINAL_ACK.lock().expect("lock") = SourceIo::final_ack(acked).await;
        Ok(())
    }
}

/// Records every change and commit; acknowledges each commit.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeSinkConfig {
    #[serde(default)]
    checkpoint: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
}

/// (pipeline name, applied value) of every insert any fake sink applied.
static APPLIED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn applied(pipeline: &str) -> Vec<String> {
    let all = APPLIED.lock().expect("lock");
    all.iter()
        .filter(|(name, _)| name == pipeline)
        .map(|(_, v)| v.clone())
        .collect()
}

#[async_trait]
#[typetag::serde(name = "fake")]
impl SinkConfig for FakeSinkConfig {
    fn validate(&self, _name: &str) -> Result<()> {
        Ok(())
    }

    async fn build(&self, cx: SinkContext) -> Result<Box<dyn Sink>> {
        Ok(Box::new(FakeSink {
            checkpoint: self.checkpoint.clone(),
            source_type: cx.source_type,
            name: cx.name,
        }))
    }
}

struct FakeSink {
    checkpoint: Option<String>,
    source_type: String,
    name: String,
}

#[async_trait]
impl Sink for FakeSink {
    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>> {
        Ok(self.checkpoint.as_ref().map(|p| Checkpoint {
            source: self.source_type.clone(),
            position: Position::new(p.clone()),
            committed_at: None,
            applied_at: "now".into(),
        }))
    }

    async fn run(self: Box<Self>, mut io: SinkIo) -> Result<()> {
        while let Some(message) = io.input.recv().await {
            match message {
                Message::Changes(changes) => {
                    for change in changes {
                        if let Op::Insert { row } = &change.op {
                            APPLIED
                                .lock()
                                .expect("lock")
                                .push((self.name.clone(), row[1].to_text()));
                        }
                    }
                }
                Message::Commit(commit) => {
                    io.acked.send_replace(Some(commit.position));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Upper-cases column `v` and drops rows whose id is even.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShoutConfig {
    drop_even: bool,
}

#[typetag::serde(name = "shout")]
impl TransformConfig for ShoutConfig {
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    fn build(&self) -> Result<Box<dyn Transform>> {
        Ok(Box::new(Shout {
            drop_even: self.drop_even,
        }))
    }
}

struct Shout {
    drop_even: bool,
}

impl Transform for Shout {
    fn apply(&mut self, mut change: Change, out: &mut Vec<Change>) -> Result<()> {
        if let Op::Insert { row } = &mut change.op {
            if self.drop_even && matches!(row[0], Value::Int(i) if i % 2 == 0) {
                return Ok(());
            }
            row[1] = Value::Text(row[1].to_text().to_uppercase());
        }
        out.push(change);
        Ok(())
    }
}

const GOOD: &str = "
name: demo
source: { type: fake, transactions: 5 }
transforms:
  - { type: shout, drop_even: true }
sink: { type: fake }
";

#[test]
fn config_errors_name_the_key() {
    PipelineConfig::parse(GOOD).expect("valid config");

    let unknown = GOOD.replace("{ type: fake }", "{ type: fake, colour: red }");
    let err = PipelineConfig::parse(&unknown)
        .expect_err("unknown key")
        .to_string();
    assert!(
        err.contains("at `sink.colour`: unknown field `colour`"),
        "{err}"
    );

    let unknown_top = format!("{GOOD}\nextra: 1\n");
    let err = PipelineConfig::parse(&unknown_top)
        .expect_err("unknown top key")
        .to_string();
    assert!(err.contains("extra"), "{err}");

    let missing_sink = GOOD.replace("sink: { type: fake }", "");
    let err = PipelineConfig::parse(&missing_sink)
        .expect_err("no sink")
        .to_string();
    assert!(err.contains("missing field `sink`"), "{err}");

    let unknown_type = GOOD.replace("{ type: fake }", "{ type: kafka }");
    let err = PipelineConfig::parse(&unknown_type)
        .expect_err("unknown type")
        .to_string();
    assert!(
        err.contains("at `sink.type`: unknown variant `kafka`, expected `fake`"),
        "{err}"
    );

    let invalid = GOOD.replace("transactions: 5", "transactions: 0");
    let err = PipelineConfig::parse(&invalid)
        .expect_err("validate")
        .to_string();
    assert!(err.contains("source.transactions"), "{err}");

    let bad_name = GOOD.replace("name: demo", "name: Demo App");
    let err = PipelineConfig::parse(&bad_name)
        .expect_err("name")
        .to_string();
    assert!(err.contains("`name`"), "{err}");
}

#[test]
fn env_variables_expand_in_values() {
    std::env::set_var("ETCDSYNC_FAKE_TEST_PREFIX", "/from-env");
    let text = GOOD.replace(
        "{ type: fake }",
        "{ type: fake, prefix: \"${ETCDSYNC_FAKE_TEST_PREFIX}\" }",
    );
    let config = PipelineConfig::parse(&text).expect("valid");
    let yaml = serde_yaml::to_string(&config.sink).expect("serialize");
    assert!(yaml.contains("/from-env"), "{yaml}");
}

#[tokio::test]
async fn pipeline_runs_transforms_acks_and_stops_cleanly() {
    let config = PipelineConfig::parse(GOOD).expect("valid");
    let shutdown = CancellationToken::new();
    let stopper = shutdown.clone();
    let handle = tokio::spawn(async move { etcdsync_core::pipeline::run(&config, shutdown).await });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while applied("demo").len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pipeline made no progress"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stopper.cancel();
    handle.await.expect("join").expect("pipeline ok");
    assert_eq!(applied("demo"), vec!["ROW 1", "ROW 3", "ROW 5"]);
    assert_eq!(
        FINAL_ACK.lock().expect("lock").clone(),
        Some(Position::new("5"))
    );
}

#[tokio::test]
async fn pipeline_resumes_after_checkpoint_and_reports_source_errors() {
    let text = "
name: resume
source: { type: fake, transactions: 9, fail_after: 8 }
sink: { type: fake, checkpoint: \"7\" }
";
    let config = PipelineConfig::parse(text).expect("valid");
    let err = etcdsync_core::pipeline::run(&config, CancellationToken::new())
        .await
        .expect_err("source fails");
    assert!(err.to_string().contains("transaction 9"), "{err}");
    assert_eq!(
        applied("resume"),
        vec!["row 8"],
        "resumes strictly after the checkpoint"
    );
}
