//! etcdsync `pgx` plugin: the PostgreSQL source (issue 3). Snapshot through a slot's exported
//! snapshot and parallel COPY, then pgoutput streaming, exactly-once into the sink via
//! checkpointed LSNs (DESIGN §1–6). Registered as `type: pgx`, with `type: postgres` as alias.

pub mod config;
pub mod connect;
pub mod decode;
pub mod error;
pub mod identity;
pub mod inspect;
pub mod position;
pub mod prereq;
pub mod publication;
pub mod relations;
pub mod replication;
pub mod slot;
pub mod snapshot;
pub mod source;
pub mod types;
pub mod visibility;

pub use config::PgxConfig;

use etcdsync_core::inspect::SourceInspector;
use etcdsync_core::registry::{PluginInfo, PluginKind};
use etcdsync_core::source::{Source, SourceConfig, SourceContext};
use etcdsync_core::{async_trait, inventory, typetag, Result};
use serde::{Deserialize, Serialize};

const EXAMPLE: &str = r#"type: pgx
url: postgres://etcdsync:${PGPASSWORD}@localhost:5432/app?sslmode=prefer
tables:
  include: ["public.*"]
  exclude: ["public.audit_*"]
  exclude_columns: { "public.users": [password_hash] }
snapshot: initial
snapshot_workers: 2
key_columns: { "public.events": [id] }
"#;

const ALIAS_EXAMPLE: &str = r#"type: postgres
url: postgres://etcdsync:${PGPASSWORD}@localhost:5432/app
tables:
  include: ["public.*"]
"#;

inventory::submit!(PluginInfo {
    kind: PluginKind::Source,
    name: "pgx",
    summary: "PostgreSQL ≥ 10: exported-snapshot COPY, then pgoutput logical replication",
    example: EXAMPLE,
});

inventory::submit!(PluginInfo {
    kind: PluginKind::Source,
    name: "postgres",
    summary: "alias of pgx",
    example: ALIAS_EXAMPLE,
});

/// Before the alias recorded `pgx`, a pipeline configured with `type: postgres` recorded that.
const FORMER_NAMES: &[&str] = &["postgres"];

#[async_trait]
#[typetag::serde(name = "pgx")]
impl SourceConfig for PgxConfig {
    fn former_names(&self) -> &'static [&'static str] {
        FORMER_NAMES
    }

    fn validate(&self, pipeline_name: &str) -> Result<()> {
        self.validated(pipeline_name).map(|_| ())
    }

    async fn build(&self, cx: SourceContext) -> Result<Box<dyn Source>> {
        source::build(self, cx).await
    }

    async fn inspect(&self, pipeline_name: &str) -> Result<Box<dyn SourceInspector>> {
        let valid = self.validated(pipeline_name)?;
        Ok(Box::new(inspect::PgxInspector::new(valid)))
    }
}

/// `type: postgres`: the same source under its database's name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PostgresAlias(pub PgxConfig);

#[async_trait]
#[typetag::serde(name = "postgres")]
impl SourceConfig for PostgresAlias {
    fn plugin_name(&self) -> &'static str {
        "pgx"
    }

    fn former_names(&self) -> &'static [&'static str] {
        FORMER_NAMES
    }

    fn validate(&self, pipeline_name: &str) -> Result<()> {
        self.0.validate(pipeline_name)
    }

    async fn build(&self, cx: SourceContext) -> Result<Box<dyn Source>> {
        source::build(&self.0, cx).await
    }

    async fn inspect(&self, pipeline_name: &str) -> Result<Box<dyn SourceInspector>> {
        self.0.inspect(pipeline_name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alias_records_the_canonical_plugin_name() {
        let config: Box<dyn SourceConfig> = serde_yaml::from_str(
            "type: postgres\nurl: postgres://u@h/db\ntables: { include: [\"public.*\"] }\n",
        )
        .expect("alias parses");
        assert_eq!(config.typetag_name(), "postgres");
        assert_eq!(
            config.plugin_name(),
            "pgx",
            "checkpoints name the plugin, not the alias"
        );
        // Checkpoints the alias recorded before it named the plugin resume under either type.
        let pgx: Box<dyn SourceConfig> = serde_yaml::from_str(
            "type: pgx\nurl: postgres://u@h/db\ntables: { include: [\"public.*\"] }\n",
        )
        .expect("parses");
        for config in [&config, &pgx] {
            assert!(config.former_names().contains(&"postgres"));
        }
    }

    #[test]
    fn examples_parse_through_typetag() {
        for example in [EXAMPLE, ALIAS_EXAMPLE] {
            let expanded = example.replace("${PGPASSWORD}", "pw");
            let config: Box<dyn SourceConfig> =
                serde_yaml::from_str(&expanded).expect("example parses");
            config.validate("demo").expect("example is valid");
        }
    }
}
