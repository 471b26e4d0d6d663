//! `sink: { type: etcd, … }`: the etcd sink's options, defaults and checks (DESIGN §2, §4).
//! `validate` does no I/O and resolves the options into [`Settings`]; only `build` connects.

use etcdsync_core::encode::key::{normalise_prefix, prefixes_overlap};
use etcdsync_core::secret::Secret;
use etcdsync_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The etcd sink's configuration (`sink:` with `type: etcd`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// etcd client URLs, all `http://host:port` or all `https://host:port`.
    #[serde(default = "default_endpoints")]
    pub endpoints: Vec<String>,
    /// Data prefix: a row goes to `{prefix}/{schema}/{table}/{pk1}[/{pk2}…]`. The sink writes and
    /// deletes nothing outside this prefix and `meta_prefix`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Metadata prefix (`checkpoint`, `snapshot`, `status`, the key index, later `leader`); default
    /// `/etcdsync-meta/{name}` with the pipeline name. Must not overlap `prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_prefix: Option<String>,
    /// etcd user for authentication (requires `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password of `username`; use `${VAR}` to take it from the environment. Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// TLS settings for `https://` endpoints; without it, https uses the system's root CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Operations per etcd transaction, the checkpoint put included; match etcd's `--max-txn-ops`.
    #[serde(default = "default_max_txn_ops")]
    pub max_txn_ops: usize,
    /// Bytes per etcd request; match etcd's `--max-request-bytes`. The sink keeps a margin for
    /// protocol overhead and the checkpoint.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// What to do with a single change too large for one request: `error` (stop the pipeline,
    /// naming table and key) or `skip` (log a warning, count it, go on).
    #[serde(default)]
    pub on_oversize: OnOversize,
    /// What to do with a row whose key (from a transform) has an empty component, e.g. a key
    /// template `{service}/{name}` and a row with name = '': `error` (stop the pipeline, naming
    /// table, row and key) or `skip` (log a warning, count it, delete the row's previous key, go
    /// on).
    #[serde(default)]
    pub on_invalid_key: OnInvalidKey,
    /// etcd transactions a snapshot keeps in flight at once (in any order).
    #[serde(default = "default_snapshot_txns_in_flight")]
    pub snapshot_txns_in_flight: usize,
    /// Streaming etcd transactions in flight at once. etcd applies them in commit order whatever
    /// order they arrive in: each compares the checkpoint with exactly what its predecessor puts,
    /// and one that arrives first is sent again after its predecessor. Default 1: etcd's gRPC
    /// server hands requests that arrive together to racing goroutines, so on a nearby etcd most
    /// pipelined transactions arrive "early" and cost a second round trip (README, Benchmark).
    #[serde(default = "default_stream_txns_in_flight")]
    pub stream_txns_in_flight: usize,
    /// Timeout of each etcd request, as `10s`, `500ms`, `1m` or a number of seconds. A timed-out
    /// request is retried.
    #[serde(default = "default_request_timeout", with = "etcdsync_core::duration")]
    pub request_timeout: Duration,
    /// Timeout of establishing a connection to an endpoint (same formats).
    #[serde(default = "default_connect_timeout", with = "etcdsync_core::duration")]
    pub connect_timeout: Duration,
    /// Least time between two checkpoint-only writes (idle heartbeats, filtered transactions).
    #[serde(
        default = "default_heartbeat_interval",
        with = "etcdsync_core::duration"
    )]
    pub heartbeat_interval: Duration,
    /// Longest pause between two retries of a failing etcd request (backoff starts at 100 ms and
    /// doubles up to this).
    #[serde(
        default = "default_retry_max_backoff",
        with = "etcdsync_core::duration"
    )]
    pub retry_max_backoff: Duration,
}

/// `sink.tls`: file paths, read when the sink is built.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA that signed etcd's server certificate (default: system roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// PEM client certificate, for etcd's `--client-cert-auth` (requires `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// PEM private key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Server name to verify the certificate against, when it differs from the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

pub use etcdsync_sink_kit::settings::{OnInvalidKey, OnOversize, SinkSettings};

fn default_endpoints() -> Vec<String> {
    vec!["http://127.0.0.1:2379".into()]
}

fn default_prefix() -> String {
    "/etcdsync".into()
}

/// The default meta prefix of a pipeline.
pub fn default_meta_prefix(pipeline_name: &str) -> String {
    format!("/etcdsync-meta/{pipeline_name}")
}

fn default_max_txn_ops() -> usize {
    SinkSettings::DEFAULT_MAX_TXN_OPS
}

fn default_max_request_bytes() -> usize {
    SinkSettings::DEFAULT_MAX_REQUEST_BYTES
}

fn default_snapshot_txns_in_flight() -> usize {
    SinkSettings::DEFAULT_SNAPSHOT_TXNS_IN_FLIGHT
}

fn default_stream_txns_in_flight() -> usize {
    SinkSettings::DEFAULT_STREAM_TXNS_IN_FLIGHT
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_heartbeat_interval() -> Duration {
    SinkSettings::DEFAULT_HEARTBEAT_INTERVAL
}

fn default_retry_max_backoff() -> Duration {
    Duration::from_secs(5)
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: default_endpoints(),
            prefix: default_prefix(),
            meta_prefix: None,
            username: None,
            password: None,
            tls: None,
            max_txn_ops: default_max_txn_ops(),
            max_request_bytes: default_max_request_bytes(),
            on_oversize: OnOversize::default(),
            on_invalid_key: OnInvalidKey::default(),
            snapshot_txns_in_flight: default_snapshot_txns_in_flight(),
            stream_txns_in_flight: default_stream_txns_in_flight(),
            request_timeout: default_request_timeout(),
            connect_timeout: default_connect_timeout(),
            heartbeat_interval: default_heartbeat_interval(),
            retry_max_backoff: default_retry_max_backoff(),
        }
    }
}

/// The smallest `max_txn_ops` accepted: a key change of a tracked table (delete old key, owner and
/// index entry; put new ones) plus the checkpoint must fit one transaction.
pub const MIN_TXN_OPS: usize = 8;

/// The smallest `max_request_bytes` accepted: below it the margin leaves no room for data.
pub const MIN_REQUEST_BYTES: usize = 16 * 1024;

/// Most snapshot transactions in flight accepted.
pub const MAX_SNAPSHOT_TXNS_IN_FLIGHT: usize = 64;

/// Most streaming transactions in flight: beyond a few, a reordered arrival costs more re-sends
/// than the extra parallelism gains.
pub const MAX_STREAM_TXNS_IN_FLIGHT: usize = 16;

/// The checked, resolved configuration the running sink uses: the kit's settings of its writer
/// ([`SinkSettings`]: prefixes, metadata keys, limits) and how to reach etcd.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kv: SinkSettings,
    pub endpoints: Vec<String>,
    pub credentials: Option<(String, Secret)>,
    pub tls: Option<TlsConfig>,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub retry_max_backoff: Duration,
}

impl EtcdConfig {
    /// Checks every option (no I/O) and resolves defaults that depend on the pipeline name.
    pub fn settings(&self, pipeline_name: &str) -> Result<Settings> {
        let endpoints = self.check_endpoints()?;
        let prefix = normalise_prefix(&self.prefix).to_string();
        if prefix.is_empty() {
            return Err(Error::config(format!(
                "sink.prefix `{}` would make the sink own the whole keyspace; give a prefix such as `/etcdsync`",
                self.prefix
            )));
        }
        let meta_given = self
            .meta_prefix
            .clone()
            .unwrap_or_else(|| default_meta_prefix(pipeline_name));
        let meta = normalise_prefix(&meta_given).to_string();
        if meta.is_empty() {
            return Err(Error::config(format!(
                "sink.meta_prefix `{meta_given}` would make the sink own the whole keyspace; give a prefix such as `/etcdsync-meta/{pipeline_name}`"
            )));
        }
        let data_prefix = format!("{prefix}/");
        let meta_prefix = format!("{meta}/");
        if prefixes_overlap(&data_prefix, &meta_prefix) {
            return Err(Error::config(format!(
                "sink.prefix `{data_prefix}` and sink.meta_prefix `{meta_prefix}` overlap (one begins with the other), \
                 so data could overwrite the checkpoint; choose prefixes where neither begins with the other, \
                 e.g. prefix: /etcdsync and meta_prefix: /etcdsync-meta/{pipeline_name}"
            )));
        }
        let credentials = match (&self.username, &self.password) {
            (None, None) => None,
            (Some(user), Some(password)) => {
                if user.is_empty() {
                    return Err(Error::config("sink.username is empty; give the etcd user name or remove sink.username and sink.password"));
                }
                Some((user.clone(), password.clone()))
            }
            (Some(_), None) => {
                return Err(Error::config(
                    "sink.username is set but sink.password is not; add sink.password (e.g. password: \"${ETCD_PASSWORD}\")",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::config(
                    "sink.password is set but sink.username is not; add sink.username or remove sink.password",
                ))
            }
        };
        if let Some(tls) = &self.tls {
            check_tls(tls)?;
            if let Some(http) = endpoints.iter().find(|e| e.starts_with("http://")) {
                return Err(Error::config(format!(
                    "sink.tls is set but endpoint `{http}` in sink.endpoints uses http://; use https:// endpoints or remove sink.tls"
                )));
            }
        }
        if self.max_txn_ops < MIN_TXN_OPS {
            return Err(Error::config(format!(
                "sink.max_txn_ops is {} but must be at least {MIN_TXN_OPS} (a moved key of a table with transformed keys \
                 takes 6 operations plus the checkpoint); use etcd's --max-txn-ops (default 128)",
                self.max_txn_ops
            )));
        }
        if self.max_request_bytes < MIN_REQUEST_BYTES {
            return Err(Error::config(format!(
                "sink.max_request_bytes is {} but must be at least {MIN_REQUEST_BYTES}; use etcd's --max-request-bytes (default 1572864)",
                self.max_request_bytes
            )));
        }
        if !(1..=MAX_SNAPSHOT_TXNS_IN_FLIGHT).contains(&self.snapshot_txns_in_flight) {
            return Err(Error::config(format!(
                "sink.snapshot_txns_in_flight is {} but must be between 1 and {MAX_SNAPSHOT_TXNS_IN_FLIGHT} (default 4)",
                self.snapshot_txns_in_flight
            )));
        }
        if !(1..=MAX_STREAM_TXNS_IN_FLIGHT).contains(&self.stream_txns_in_flight) {
            return Err(Error::config(format!(
                "sink.stream_txns_in_flight is {} but must be between 1 and {MAX_STREAM_TXNS_IN_FLIGHT} (default 1)",
                self.stream_txns_in_flight
            )));
        }
        for (key, value) in [
            ("request_timeout", self.request_timeout),
            ("connect_timeout", self.connect_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
            ("retry_max_backoff", self.retry_max_backoff),
        ] {
            if value.is_zero() {
                return Err(Error::config(format!(
                    "sink.{key} must be more than zero; write a duration such as `5s`"
                )));
            }
        }
        Ok(Settings {
            kv: SinkSettings {
                prefix,
                data_prefix,
                meta_prefix,
                max_txn_ops: self.max_txn_ops,
                max_request_bytes: self.max_request_bytes,
                on_oversize: self.on_oversize,
                on_invalid_key: self.on_invalid_key,
                snapshot_txns_in_flight: self.snapshot_txns_in_flight,
                stream_txns_in_flight: self.stream_txns_in_flight,
                heartbeat_interval: self.heartbeat_interval,
            },
            endpoints,
            credentials,
            tls: self.tls.clone(),
            request_timeout: self.request_timeout,
            connect_timeout: self.connect_timeout,
            retry_max_backoff: self.retry_max_backoff,
        })
    }

    fn check_endpoints(&self) -> Result<Vec<String>> {
        if self.endpoints.is_empty() {
            return Err(Error::config(
                "sink.endpoints is empty; list etcd's client URLs, e.g. endpoints: [\"http://127.0.0.1:2379\"]",
            ));
        }
        let mut schemes = Vec::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let endpoint = endpoint.trim();
            // Messages show the endpoint without anything that may be a credential.
            let shown = etcdsync_core::secret::redact_url(endpoint);
            let Some((scheme, rest)) = endpoint.split_once("://") else {
                return Err(Error::config(format!(
                    "sink.endpoints[{i}] `{shown}` has no scheme; write http://host:port or https://host:port"
                )));
            };
            if scheme != "http" && scheme != "https" {
                return Err(Error::config(format!(
                    "sink.endpoints[{i}] `{shown}`: scheme `{scheme}` is not supported; write http://host:port or https://host:port"
                )));
            }
            let host = rest.split('/').next().unwrap_or("");
            if host.is_empty() || host.contains('@') || host.contains(char::is_whitespace) {
                return Err(Error::config(format!(
                    "sink.endpoints[{i}] `{shown}` needs a host and port without credentials, e.g. {scheme}://127.0.0.1:2379 \
                     (put credentials in sink.username and sink.password)"
                )));
            }
            if !schemes.contains(&scheme) {
                schemes.push(scheme);
            }
        }
        if schemes.len() > 1 {
            return Err(Error::config(
                "sink.endpoints mixes http:// and https:// URLs; use one scheme for all endpoints",
            ));
        }
        Ok(self
            .endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .collect())
    }
}

fn check_tls(tls: &TlsConfig) -> Result<()> {
    for (field, value) in [
        ("ca", &tls.ca),
        ("cert", &tls.cert),
        ("key", &tls.key),
        ("domain", &tls.domain),
    ] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return Err(Error::config(format!(
                "sink.tls.{field} is empty; give a value or remove the key"
            )));
        }
    }
    match (&tls.cert, &tls.key) {
        (Some(_), None) => Err(Error::config(
            "sink.tls.cert is set but sink.tls.key is not; a client certificate needs its private key (sink.tls.key)",
        )),
        (None, Some(_)) => Err(Error::config(
            "sink.tls.key is set but sink.tls.cert is not; add the client certificate (sink.tls.cert) or remove sink.tls.key",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdsync_core::sink::SinkConfig;

    fn parse(yaml: &str) -> Result<Box<dyn SinkConfig>, serde_yaml::Error> {
        serde_yaml::from_str(yaml)
    }

    fn err_of(yaml: &str) -> String {
        match parse(yaml) {
            Ok(config) => match config.validate("demo") {
                Ok(()) => panic!("expected an error for {yaml}"),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn endpoint_errors_never_show_credentials() {
        for endpoint in [
            "http://root:Secret9@127.0.0.1:2379",
            "ftp://root:Secret9@127.0.0.1:2379",
        ] {
            let error = err_of(&format!("type: etcd\nendpoints: [\"{endpoint}\"]\n"));
            assert!(!error.contains("Secret9"), "{error}");
        }
    }

    #[test]
    fn defaults_are_valid_and_resolve_the_meta_prefix() {
        let config: EtcdConfig = serde_yaml::from_str("{}").expect("parse");
        assert_eq!(config, EtcdConfig::default());
        let settings = config.settings("demo").expect("valid");
        assert_eq!(settings.kv.data_prefix, "/etcdsync/");
        assert_eq!(settings.kv.meta_prefix, "/etcdsync-meta/demo/");
        assert_eq!(
            settings.kv.checkpoint_key(),
            "/etcdsync-meta/demo/checkpoint"
        );
        assert_eq!(settings.kv.max_txn_ops, 128);
        assert_eq!(settings.kv.max_request_bytes, 1_572_864);
        assert_eq!(settings.request_timeout, Duration::from_secs(10));
    }

    #[test]
    fn yaml_selects_the_plugin_by_type() {
        let config = parse(
            "type: etcd\nendpoints: [\"https://e1:2379\", \"https://e2:2379\"]\nprefix: /app/\n\
             username: u\npassword: p\ntls: { ca: /ca.pem }\nrequest_timeout: 2s\nheartbeat_interval: 1\n",
        )
        .expect("parse");
        config.validate("demo").expect("valid");
        assert_eq!(config.typetag_name(), "etcd");
        let debug = format!("{config:?}");
        assert!(!debug.contains("\"p\""), "password leaked: {debug}");
    }

    #[test]
    fn the_example_parses_and_validates() {
        let info = etcdsync_core::registry::find(etcdsync_core::registry::PluginKind::Sink, "etcd")
            .expect("registered");
        parse(info.example)
            .expect("example parses")
            .validate("demo")
            .expect("example is valid");
    }

    #[test]
    fn unknown_keys_are_named() {
        let msg = err_of("type: etcd\nprefx: /x\n");
        assert!(msg.contains("prefx"), "{msg}");
        let msg = err_of("type: etcd\ntls: { ca: /a, crt: /b }\n");
        assert!(msg.contains("crt"), "{msg}");
    }

    #[test]
    fn overlapping_prefixes_are_rejected() {
        let msg = err_of("type: etcd\nprefix: /etcdsync\nmeta_prefix: /etcdsync/meta\n");
        assert!(
            msg.contains("sink.prefix")
                && msg.contains("sink.meta_prefix")
                && msg.contains("overlap"),
            "{msg}"
        );
        let msg = err_of("type: etcd\nprefix: /\n");
        assert!(msg.contains("sink.prefix"), "{msg}");
        // `/etcdsync/` and `/etcdsync-meta/x/` do not overlap: the trailing slash counts.
        parse("type: etcd\nprefix: /etcdsync\nmeta_prefix: /etcdsync-meta/x\n")
            .expect("parse")
            .validate("demo")
            .expect("valid");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (yaml, key) in [
            ("type: etcd\nendpoints: []\n", "sink.endpoints"),
            (
                "type: etcd\nendpoints: [\"127.0.0.1:2379\"]\n",
                "sink.endpoints[0]",
            ),
            (
                "type: etcd\nendpoints: [\"grpc://h:1\"]\n",
                "sink.endpoints[0]",
            ),
            (
                "type: etcd\nendpoints: [\"http://a:1\", \"https://b:1\"]\n",
                "sink.endpoints",
            ),
            ("type: etcd\nusername: u\n", "sink.password"),
            ("type: etcd\npassword: p\n", "sink.username"),
            ("type: etcd\ntls: { ca: /ca.pem }\n", "sink.tls"),
            (
                "type: etcd\nendpoints: [\"https://h:1\"]\ntls: { cert: /c.pem }\n",
                "sink.tls.key",
            ),
            ("type: etcd\nmax_txn_ops: 7\n", "sink.max_txn_ops"),
            (
                "type: etcd\nmax_request_bytes: 100\n",
                "sink.max_request_bytes",
            ),
            (
                "type: etcd\nsnapshot_txns_in_flight: 0\n",
                "sink.snapshot_txns_in_flight",
            ),
            ("type: etcd\nrequest_timeout: 0s\n", "sink.request_timeout"),
        ] {
            let msg = err_of(yaml);
            assert!(msg.contains(key), "{yaml}: {msg}");
        }
        let msg = err_of("type: etcd\non_oversize: drop\n");
        assert!(msg.contains("drop"), "{msg}");
        let msg = err_of("type: etcd\non_invalid_key: ignore\n");
        assert!(msg.contains("ignore"), "{msg}");
        let msg = err_of("type: etcd\nrequest_timeout: soon\n");
        assert!(msg.contains("soon"), "{msg}");
    }

    #[test]
    fn durations_accept_text_and_seconds() {
        let config: EtcdConfig = serde_yaml::from_str(
            "request_timeout: 1m 30s\nconnect_timeout: 2\nheartbeat_interval: 0.5\n",
        )
        .expect("parse");
        assert_eq!(config.request_timeout, Duration::from_secs(90));
        assert_eq!(config.connect_timeout, Duration::from_secs(2));
        assert_eq!(config.heartbeat_interval, Duration::from_millis(500));
        let yaml = serde_yaml::to_string(&config).expect("serialize");
        assert!(yaml.contains("request_timeout: 1m 30s"), "{yaml}");
    }
}
