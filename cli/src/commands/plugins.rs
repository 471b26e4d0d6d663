//! `etcdsync plugins`: lists the registry; with `--examples`, each plugin's example config and
//! the pipeline's own top-level settings.

use etcdsync_core::registry;
use std::fmt::Write as _;

pub fn render(with_examples: bool) -> String {
    let mut out = String::new();
    let plugins = registry::plugins();
    let width = plugins.iter().map(|p| p.name.len()).max().unwrap_or(0);
    for plugin in plugins {
        let _ = writeln!(
            out,
            "{:<9}  {:<width$}  {}",
            plugin.kind.to_string(),
            plugin.name,
            plugin.summary
        );
        if with_examples {
            for line in plugin.example.lines() {
                let _ = writeln!(out, "      {line}");
            }
            out.push('\n');
        }
    }
    if with_examples {
        let _ = writeln!(
            out,
            "pipeline   (top level)  settings of the pipeline itself"
        );
        for line in PIPELINE_EXAMPLE.lines() {
            let _ = writeln!(out, "      {line}");
        }
    }
    out
}

/// The top-level keys beside `source`, `transforms` and `sink`, with their defaults.
const PIPELINE_EXAMPLE: &str = r#"name: app-config            # a-z 0-9 _ -; names the slot, publication and meta prefix
ha:
  enabled: false            # false: a second instance refuses to start; true: it waits as hot standby
  lease_ttl: 10s            # 2s..60s: how long a leader that stopped renewing keeps leadership
  # instance: "${POD_NAME}" # this instance's name in the leader record (default host:pid)
log: { format: text, level: info }
metrics: { listen: 127.0.0.1:9187, ready_max_lag: 30s }
shutdown_timeout: 30s
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use etcdsync_core::config::PipelineConfig;

    #[test]
    fn the_pipeline_example_parses_with_its_documented_defaults() {
        let yaml = format!(
            "{}source: {{ type: pgx, url: \"postgres://u@h/db\", tables: {{ include: [\"public.*\"] }} }}\nsink: {{ type: etcd }}\n",
            PIPELINE_EXAMPLE.replace("${POD_NAME}", "pod-0")
        );
        let config = PipelineConfig::parse(&yaml).expect("the example is a valid config");
        assert!(!config.ha.enabled);
        assert_eq!(config.ha.lease_ttl, std::time::Duration::from_secs(10));
        assert!(render(true).contains("lease_ttl: 10s"));
    }
}
