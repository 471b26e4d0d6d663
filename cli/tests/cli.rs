//! The `etcdsync` binary: plugin listing, example configs, and config errors (no servers needed).

use etcdsync_core::registry::{self, PluginKind};
use etcdsync_core::sink::SinkConfig;
use etcdsync_core::source::SourceConfig;
use etcdsync_core::transform::TransformConfig;
use serde::Deserialize as _;
use std::process::Command;

// Link the built-in plugins into this test binary too.
use etcdsync_etcd as _;
use etcdsync_mysql as _;
use etcdsync_pgx as _;
use etcdsync_transforms as _;

fn etcdsync(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_etcdsync"))
        .args(args)
        .output()
        .expect("run etcdsync")
}

#[test]
fn plugins_lists_the_built_in_plugins() {
    let output = etcdsync(&["plugins"]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for (kind, name) in [
        ("source", "pgx"),
        ("source", "mysql"),
        ("sink", "etcd"),
        ("transform", "key_template"),
        ("transform", "value"),
        ("transform", "filter"),
        ("transform", "drop_columns"),
        ("transform", "rename_columns"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().take(2).eq([kind, name])),
            "`{kind} {name}` missing from:\n{text}"
        );
    }
}

#[test]
fn every_registered_example_parses_and_validates() {
    let plugins = registry::plugins();
    assert!(
        plugins.len() >= 3,
        "built-in plugins not registered: {plugins:?}"
    );
    for plugin in plugins {
        let context = format!(
            "example of {} `{}`:\n{}",
            plugin.kind, plugin.name, plugin.example
        );
        let result = match plugin.kind {
            PluginKind::Source => serde_yaml::from_str::<Box<dyn SourceConfig>>(plugin.example)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate("example").map_err(|e| e.to_string())),
            PluginKind::Sink => serde_yaml::from_str::<Box<dyn SinkConfig>>(plugin.example)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate("example").map_err(|e| e.to_string())),
            PluginKind::Transform => {
                serde_yaml::from_str::<Box<dyn TransformConfig>>(plugin.example)
                    .map_err(|e| e.to_string())
                    .and_then(|c| c.validate().map_err(|e| e.to_string()))
            }
        };
        if let Err(error) = result {
            panic!("{context}\nfails: {error}");
        }
    }
}

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("etcdsync-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

const SOURCE: &str = "source: { type: pgx, url: \"postgres://u@127.0.0.1:1/db\", tables: { include: [\"public.*\"] } }";

fn assert_run_fails_with(config_name: &str, text: &str, needle: &str) {
    let path = write_config(config_name, text);
    let output = etcdsync(&["run", "--config-file", path.to_str().expect("utf8 path")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{config_name} should fail");
    assert!(
        stderr.contains(needle),
        "{config_name}: expected `{needle}` in:\n{stderr}"
    );
}

#[test]
fn bad_configs_exit_non_zero_naming_the_key() {
    assert_run_fails_with(
        "unknown-key.yaml",
        &format!("name: t\n{SOURCE}\nsink: {{ type: etcd, endpoint: x }}\n"),
        "sink.endpoint",
    );
    assert_run_fails_with(
        "missing-sink.yaml",
        &format!("name: t\n{SOURCE}\n"),
        "missing field `sink`",
    );
    assert_run_fails_with(
        "overlap.yaml",
        &format!("name: t\n{SOURCE}\nsink: {{ type: etcd, prefix: /a, meta_prefix: /a/meta }}\n"),
        "sink.meta_prefix",
    );
    assert_run_fails_with("no-file.yaml", "", "");
    let output = etcdsync(&["run", "-c", "/nonexistent/etcdsync.yaml"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/etcdsync.yaml"));
}

#[test]
fn version_and_help() {
    let output = etcdsync(&["--version"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains(env!("CARGO_PKG_VERSION")));
    let output = etcdsync(&["--help"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("etcdsync run --config-file"));
}

/// Every `examples/*.yaml` parses and validates (with its `${VAR}`s set), so they never rot.
#[test]
fn every_example_config_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let env = |name: &str| -> Option<String> {
        Some(match name {
            "ETCDSYNC_DEMO_PG" => "postgres://demo@127.0.0.1:5432/demo".into(),
            "ETCDSYNC_DEMO_ETCD" => "http://127.0.0.1:2379".into(),
            _ => "example-secret".into(),
        })
    };
    let mut parsed = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read example");
        if let Err(error) = etcdsync_core::config::PipelineConfig::parse_with_env(&text, &env) {
            panic!("{}: {error}", path.display());
        }
        parsed.push(path.file_name().map(|n| n.to_string_lossy().into_owned()));
    }
    for wanted in [
        "ha.yaml",
        "quickstart.yaml",
        "postgres.yaml",
        "mariadb.yaml",
        "config-table.yaml",
        "etcd-tls.yaml",
    ] {
        assert!(
            parsed.iter().flatten().any(|n| n == wanted),
            "examples/{wanted} missing; parsed {parsed:?}"
        );
    }
}

#[test]
fn the_kubernetes_example_embeds_a_valid_ha_config() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/kubernetes/etcdsync.yaml");
    let text = std::fs::read_to_string(&path).expect("read the manifest");
    let mut embedded = None;
    let mut replicas = None;
    for document in serde_yaml::Deserializer::from_str(&text) {
        let document = serde_yaml::Value::deserialize(document).expect("manifest document");
        match document["kind"].as_str() {
            Some("ConfigMap") => {
                embedded = document["data"]["etcdsync.yaml"].as_str().map(String::from)
            }
            Some("Deployment") => replicas = document["spec"]["replicas"].as_u64(),
            _ => {}
        }
    }
    assert_eq!(replicas, Some(2), "a hot standby needs two replicas");
    let config = etcdsync_core::config::PipelineConfig::parse_with_env(
        &embedded.expect("the ConfigMap holds etcdsync.yaml"),
        &|_| Some("from-the-environment".into()),
    )
    .expect("the embedded config is valid");
    assert!(config.ha.enabled);
    assert_eq!(config.ha.instance.as_deref(), Some("from-the-environment"));
}

#[test]
fn grafana_dashboard_is_json_and_uses_the_metric_names() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/grafana/etcdsync.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    let _: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    use etcdsync_core::telemetry as t;
    for metric in [
        t::CHANGES_APPLIED,
        t::SINK_TXNS,
        t::SINK_TXN_SECONDS,
        t::SINK_BATCH_OPS,
        t::SNAPSHOT_ROWS,
        t::SNAPSHOT_ROWS_ESTIMATED,
        t::REPLICATION_LAG,
        t::LAST_CHECKPOINT,
        t::ERRORS,
        t::RETRIES,
        t::PHASE,
        t::OVERSIZE_SKIPPED,
        t::INVALID_KEYS_SKIPPED,
    ] {
        assert!(
            text.contains(metric),
            "the dashboard does not show {metric}"
        );
    }
}

#[test]
fn operator_commands_have_help() {
    for command in ["check", "status", "verify"] {
        let output = etcdsync(&[command, "--help"]);
        assert!(output.status.success(), "{command} --help");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("--config-file"), "{command}: {text}");
    }
    let output = etcdsync(&["verify", "--help"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("--repair") && text.contains("--max-report"),
        "{text}"
    );
    let output = etcdsync(&["check", "--help"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("--write-probe") && text.contains("Nothing is written unless"),
        "{text}"
    );
}

#[test]
fn check_reports_a_bad_config_as_a_failed_check() {
    let path = write_config(
        "check-bad.yaml",
        &format!("name: t\n{SOURCE}\nsink: {{ type: etcd, endpoint: x }}\n"),
    );
    let output = etcdsync(&["check", "-c", path.to_str().expect("utf8 path"), "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("check --json prints JSON");
    assert_eq!(report["ok"], false);
    let first = &report["checks"][0];
    assert_eq!(first["scope"], "config");
    assert_eq!(first["ok"], false);
    assert!(
        first["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("sink.endpoint"),
        "{report}"
    );
}
