//! The pipeline's YAML configuration: loading with `${VAR}` expansion, unknown keys rejected
//! with their path, and validation across plugins (DESIGN §2 prefix rules live in the sink).

use crate::error::{Error, Result};
use crate::leadership::{Fence, HaConfig};
use crate::sink::{SinkConfig, SinkContext};
use crate::source::SourceConfig;
use crate::transform::TransformConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// The whole file given to `--config-file`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Pipeline name: default slot/publication names, meta prefix, metrics label.
    pub name: String,
    pub source: Box<dyn SourceConfig>,
    /// Applied in order to every change.
    #[serde(default)]
    pub transforms: Vec<Box<dyn TransformConfig>>,
    pub sink: Box<dyn SinkConfig>,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// One writer per pipeline: leadership, hot standby (DESIGN §7).
    #[serde(default)]
    pub ha: HaConfig,
    /// After SIGINT/SIGTERM, how long to wait for the in-flight transaction before exiting
    /// with an error (default `30s`).
    #[serde(default = "default_shutdown_timeout", with = "crate::duration")]
    pub shutdown_timeout: Duration,
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `metrics:` section: Prometheus `/metrics`, `/healthz` and `/readyz` over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve on, e.g. `127.0.0.1:9187`; absent (default) serves nothing.
    #[serde(default)]
    pub listen: Option<String>,
    /// `/readyz` answers 200 only while streaming with replication lag below this (default `30s`).
    #[serde(default = "default_ready_max_lag", with = "crate::duration")]
    pub ready_max_lag: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            ready_max_lag: default_ready_max_lag(),
        }
    }
}

fn default_ready_max_lag() -> Duration {
    Duration::from_secs(30)
}

/// `log:` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `etcdsync=debug`; `RUST_LOG` overrides it.
    #[serde(default)]
    pub level: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl PipelineConfig {
    /// Reads, expands and parses a config file, then validates it.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        Self::parse(&text).map_err(|e| e.context(format!("config file {}", path.display())))
    }

    /// Parses and validates YAML text, expanding `${VAR}` in string values from the environment.
    pub fn parse(text: &str) -> Result<Self> {
        Self::parse_with_env(text, &|name| std::env::var(name).ok())
    }

    pub fn parse_with_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let mut document: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| Error::config(format!("invalid YAML: {e}")))?;
        expand_env(&mut document, &mut Vec::new(), env)?;
        let config: PipelineConfig = serde_path_to_error::deserialize(document).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                Error::config(format!("at the top level: {inner}"))
            } else {
                Error::config(format!("at `{path}`: {inner}"))
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// What the sink is built with; `fence` is the leadership it writes under (DESIGN §7).
    pub fn sink_context(&self, fence: Option<Fence>) -> SinkContext {
        SinkContext {
            name: self.name.clone(),
            source_type: self.source.plugin_name().to_string(),
            former_source_names: self
                .source
                .former_names()
                .iter()
                .map(|n| n.to_string())
                .collect(),
            fence,
        }
    }

    /// Checks every section without I/O.
    pub fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        if let Some(listen) = &self.metrics.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(Error::config(format!(
                    "at `metrics.listen`: `{listen}` is not an address; write e.g. `127.0.0.1:9187`"
                )));
            }
        }
        self.ha.validate()?;
        if self.ha.enabled && !self.sink.supports_leadership() {
            return Err(Error::config(format!(
                "at `ha.enabled`: sink `{}` cannot elect a leader, so it cannot run a hot standby; \
                 set `ha.enabled: false` or use the etcd sink",
                self.sink.typetag_name()
            )));
        }
        self.source.validate(&self.name)?;
        for (i, transform) in self.transforms.iter().enumerate() {
            transform
                .validate()
                .map_err(|e| e.context(format!("transforms[{i}]")))?;
        }
        self.sink.validate(&self.name)?;
        Ok(())
    }
}

fn validate_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 48
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if valid {
        Ok(())
    } else {
        Err(Error::config(format!(
            "at `name`: `{name}` must be 1–48 characters of a-z, 0-9, `_` or `-` (it names the replication slot and the meta prefix)"
        )))
    }
}

/// Replaces `${VAR}` (and `${VAR:-default}`) in every string value; `$${` is a literal `${`.
fn expand_env(
    value: &mut serde_yaml::Value,
    path: &mut Vec<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    match value {
        serde_yaml::Value::String(s) if s.contains('$') => {
            *s = expand_string(s, env).map_err(|var| {
                Error::config(format!(
                    "at `{}`: environment variable {var} is not set; export it or give a default as ${{{var}:-value}}",
                    path.join(".")
                ))
            })?;
        }
        serde_yaml::Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                path.push(key.as_str().unwrap_or("?").to_string());
                expand_env(item, path, env)?;
                path.pop();
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                expand_env(item, path, env)?;
                path.pop();
            }
        }
        serde_yaml::Value::Tagged(tagged) => expand_env(&mut tagged.value, path, env)?,
        _ => {}
    }
    Ok(())
}

/// Expands one string; the error is the name of an unset variable.
fn expand_string(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let (Some(body_start), Some(end)) = (after.strip_prefix("${"), after.find('}')) {
            let body = &body_start[..end - 2];
            let (name, default) = match body.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (body, None),
            };
            match (env(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(name.to_string()),
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PASS" => Some("s3cr:et #x".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_defaults_and_escapes() {
        assert_eq!(
            expand_string("a${PASS}b", &env).as_deref(),
            Ok("as3cr:et #xb")
        );
        assert_eq!(expand_string("${NOPE:-dflt}", &env).as_deref(), Ok("dflt"));
        assert_eq!(expand_string("${EMPTY:-dflt}", &env).as_deref(), Ok(""));
        assert_eq!(
            expand_string("$${PASS} $5", &env).as_deref(),
            Ok("${PASS} $5")
        );
        assert_eq!(expand_string("${NOPE}", &env), Err("NOPE".to_string()));
    }

    #[test]
    fn unset_variable_error_names_key_and_variable() {
        let mut doc: serde_yaml::Value =
            serde_yaml::from_str("sink: { password: \"${NOPE}\" }").expect("yaml");
        let err = expand_env(&mut doc, &mut Vec::new(), &env).expect_err("unset");
        let msg = err.to_string();
        assert!(
            msg.contains("`sink.password`") && msg.contains("NOPE"),
            "{msg}"
        );
        assert!(!msg.contains("s3cr"));
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("demo_1-x").is_ok());
        for bad in ["", "Demo", "a b", "x/y"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
