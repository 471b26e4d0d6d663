//! `type: mysql` options and their validation without I/O (STYLE §3). `validate` yields the
//! checked connection options that `build` uses; errors name the key path and the fix.

use etcdsync_core::secret::{redact_url, Secret};
use etcdsync_core::tables::TableSelection;
use etcdsync_core::{Error, Result};
use mysql_async::{Opts, OptsBuilder, SslOpts};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The `source:` section for MySQL 8 / MariaDB ≥ 10.5.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlConfig {
    /// `mysql://user:password@host:3306/`; optional `?ssl-mode=DISABLED|REQUIRED|VERIFY_CA|VERIFY_IDENTITY`
    /// and `&ssl-ca=/path/ca.pem`. The user needs REPLICATION SLAVE, REPLICATION CLIENT
    /// (MariaDB: BINLOG MONITOR) and SELECT on the synced tables.
    pub url: Secret,
    /// Which `database.table`s to sync, and columns to leave out.
    pub tables: TableSelection,
    /// `initial` (default): snapshot when there is no checkpoint; `never`: start streaming at
    /// the current binlog position; `when_needed`: like `initial`, and re-snapshot when the
    /// checkpoint's binlog has been purged.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// The replica server id this source registers with. Must differ from the server's and
    /// from every other replica's. Default: derived from the pipeline name.
    #[serde(default)]
    pub server_id: Option<u32>,
    /// Connections reading tables during the snapshot. More than 1 takes a brief global read
    /// lock (FLUSH TABLES WITH READ LOCK, needs RELOAD) so all of them see the same point.
    #[serde(default = "default_snapshot_workers")]
    pub snapshot_workers: usize,
    /// What a `DROP TABLE` of a synced table does to its keys: `delete` (default) or `keep`.
    #[serde(default)]
    pub on_drop: OnDrop,
    /// Run even when a selected table is the child of an `ON DELETE/UPDATE CASCADE`,
    /// `SET NULL` or `SET DEFAULT` foreign key. LOSSY: the server logs no row events for the
    /// child rows such a constraint changes, so etcd keeps their old values (until a
    /// re-snapshot). Default `false`: start-up and `etcdsync check` refuse, naming the constraint.
    #[serde(default)]
    pub allow_unlogged_cascades: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    #[default]
    Initial,
    Never,
    WhenNeeded,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDrop {
    #[default]
    Delete,
    Keep,
}

fn default_snapshot_workers() -> usize {
    1
}

/// The configuration after validation: connection options parsed, server id resolved. Its
/// `Debug` leaves the driver options out (they hold the password).
#[derive(Clone)]
pub struct ValidMysql {
    /// The pipeline name; the binlog connection registers as replica host `etcdsync:{name}`,
    /// so `SHOW SLAVE HOSTS` (and `etcdsync check`) can tell this pipeline from another replica.
    pub pipeline: String,
    pub opts: Opts,
    /// The URL with the password replaced, for messages.
    pub redacted_url: String,
    pub tables: TableSelection,
    pub snapshot: SnapshotMode,
    pub server_id: u32,
    /// True when `server_id` was given, false when derived from the pipeline name.
    pub server_id_explicit: bool,
    pub snapshot_workers: usize,
    pub on_drop: OnDrop,
    /// `allow_unlogged_cascades` (lossy opt-in).
    pub allow_unlogged_cascades: bool,
}

impl MysqlConfig {
    pub fn validate_config(&self, pipeline_name: &str) -> Result<ValidMysql> {
        let opts = parse_url(self.url.expose())?;
        // Shown from the parsed options: nothing of the password text.
        let redacted_url = format!(
            "mysql://{}@{}:{}/{}",
            opts.user().unwrap_or(""),
            opts.ip_or_hostname(),
            opts.tcp_port(),
            opts.db_name().unwrap_or("")
        );
        self.tables.validate("source.tables")?;
        if self.server_id == Some(0) {
            return Err(Error::config(
                "at `source.server_id`: 0 is not a valid replica server id; use 1..4294967295, distinct from the server's own server_id and from other replicas",
            ));
        }
        if self.snapshot_workers == 0 || self.snapshot_workers > 64 {
            return Err(Error::config(format!(
                "at `source.snapshot_workers`: {} is out of range; use 1 to 64",
                self.snapshot_workers
            )));
        }
        Ok(ValidMysql {
            pipeline: pipeline_name.to_string(),
            opts,
            redacted_url,
            tables: self.tables.clone(),
            snapshot: self.snapshot,
            server_id: self
                .server_id
                .unwrap_or_else(|| default_server_id(pipeline_name)),
            server_id_explicit: self.server_id.is_some(),
            snapshot_workers: self.snapshot_workers,
            on_drop: self.on_drop,
            allow_unlogged_cascades: self.allow_unlogged_cascades,
        })
    }
}

impl std::fmt::Debug for ValidMysql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidMysql")
            .field("pipeline", &self.pipeline)
            .field("url", &self.redacted_url)
            .field("tables", &self.tables)
            .field("snapshot", &self.snapshot)
            .field("server_id", &self.server_id)
            .field("snapshot_workers", &self.snapshot_workers)
            .field("on_drop", &self.on_drop)
            .finish_non_exhaustive()
    }
}

/// The host name the binlog connection reports when it registers as a replica (shown by
/// `SHOW SLAVE HOSTS` / `SHOW REPLICAS`); at most 255 bytes.
pub fn replica_host(pipeline_name: &str) -> String {
    let mut host = format!("etcdsync:{pipeline_name}");
    while host.len() > 255 {
        host.pop();
    }
    host
}

/// A server id derived from the pipeline name (FNV-1a), in 0x4000_0000..0x8000_0000 so it is
/// unlikely to meet the small ids people give real servers.
pub fn default_server_id(pipeline_name: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in pipeline_name.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    0x4000_0000 | (hash & 0x3fff_ffff)
}

/// Parses the URL, translating `ssl-mode`/`ssl-ca` into mysql_async's TLS options.
pub fn parse_url(url: &str) -> Result<Opts> {
    let redacted = redact_url(url);
    let bad = |why: String| {
        Error::config(format!(
            "at `source.url`: `{redacted}` {why}; write it as mysql://user:password@host:3306/ (optionally ?ssl-mode=REQUIRED)"
        ))
    };
    if !url.starts_with("mysql://") {
        return Err(bad("does not start with mysql://".into()));
    }
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut ssl_mode: Option<String> = None;
    let mut ssl_ca: Option<String> = None;
    let mut passthrough = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "ssl-mode" | "ssl_mode" | "sslmode" => ssl_mode = Some(value.to_ascii_uppercase()),
            "ssl-ca" | "ssl_ca" => ssl_ca = Some(value.to_string()),
            _ => passthrough.push(pair),
        }
    }
    let rebuilt = if passthrough.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", passthrough.join("&"))
    };
    // The url crate ends the user info at the first `/`, `?` or `#`: such characters in the
    // password would be read as host, path or query (and shown in messages).
    if let Some(userinfo) = url
        .strip_prefix("mysql://")
        .and_then(|rest| rest.rsplit_once('@'))
        .map(|(userinfo, _)| userinfo)
    {
        if userinfo.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "has `/`, `?`, `#` or `@` in its user or password; percent-encode them (%2F, %3F, %23, %40)"
                    .into(),
            ));
        }
    }
    // Not the parser's text: it can quote the part of the URL it stopped at.
    let opts = Opts::from_url(&rebuilt).map_err(|_| bad("is not a valid URL".into()))?;
    let ssl = match ssl_mode.as_deref() {
        None | Some("DISABLED") => None,
        Some("REQUIRED") => Some(
            SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
        // The chain is verified, the name is not. mysql_async's own name skipping misses rustls
        // 0.23's name error: `connect::connect` completes it (see there); this flag marks the mode.
        Some("VERIFY_CA") => Some(SslOpts::default().with_danger_skip_domain_validation(true)),
        Some("VERIFY_IDENTITY") => Some(SslOpts::default()),
        Some(other) => {
            return Err(bad(format!(
                "has ssl-mode={other}; use DISABLED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY (PREFERRED is not supported: choose explicitly)"
            )))
        }
    };
    let ssl = match (ssl, ssl_ca) {
        // The CA given is the only one trusted: a certificate a public CA issued does not pass.
        (Some(ssl), Some(ca)) => Some(
            ssl.with_root_certs(vec![PathBuf::from(ca).into()])
                .with_disable_built_in_roots(true),
        ),
        (None, Some(_)) => {
            return Err(bad(
                "has ssl-ca but no ssl-mode; add ssl-mode=VERIFY_CA or VERIFY_IDENTITY".into(),
            ))
        }
        (Some(_), None) if ssl_mode.as_deref() == Some("VERIFY_CA") => {
            return Err(bad(
                "has ssl-mode=VERIFY_CA without ssl-ca, which would accept a certificate any public CA issued, for any name; add ssl-ca=<the CA that signed the server's certificate>, or use VERIFY_IDENTITY".into(),
            ))
        }
        (ssl, None) => ssl,
    };
    let builder = OptsBuilder::from_opts(opts);
    let builder = match ssl {
        Some(ssl) => {
            // mysql_async builds its rustls configuration with the process's default provider;
            // with more than one compiled in (ring here, aws-lc-rs through other crates) rustls
            // cannot pick one and panics. Ours is ring; installing it is idempotent.
            let _ = rustls::crypto::ring::default_provider().install_default();
            builder.ssl_opts(ssl)
        }
        None => builder,
    };
    Ok(Opts::from(builder))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> MysqlConfig {
        serde_yaml::from_str(yaml).expect("yaml")
    }

    const BASE: &str = "url: mysql://u:pw@db:3306/\ntables: { include: [\"app.*\"] }\n";

    #[test]
    fn special_characters_in_the_password_are_refused_without_showing_it() {
        for url in [
            "mysql://u:/Secret9@db:3306/",
            "mysql://u:12?Secret9@db:3306/",
            "mysql://u:Ab@Secret9@db:3306/",
        ] {
            let error = parse_url(url).expect_err(url).to_string();
            assert!(
                error.contains("percent-encode") && !error.contains("Secret9"),
                "{error}"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        let valid =
            config("url: mysql://u:Hunter2Pw%2F@db:3306/\ntables: { include: [\"app.*\"] }\n")
                .validate_config("demo")
                .expect("valid");
        let shown = format!("{valid:?} {}", valid.redacted_url);
        assert!(!shown.contains("Hunter2Pw"), "{shown}");
    }

    #[test]
    fn defaults_and_derived_server_id() {
        let valid = config(BASE).validate_config("demo").expect("valid");
        assert_eq!(valid.snapshot, SnapshotMode::Initial);
        assert_eq!(valid.on_drop, OnDrop::Delete);
        assert_eq!(valid.snapshot_workers, 1);
        assert!(!valid.allow_unlogged_cascades, "lossy only by opt-in");
        assert_eq!(valid.server_id, default_server_id("demo"));
        assert!(!valid.server_id_explicit);
        assert_ne!(default_server_id("demo"), default_server_id("demo2"));
        assert!(default_server_id("x") >= 0x4000_0000);
        assert_eq!(valid.redacted_url, "mysql://u@db:3306/");
        assert_eq!(valid.opts.tcp_port(), 3306);
        assert_eq!(valid.opts.pass(), Some("pw"));
    }

    #[test]
    fn options_parse() {
        let c = config(&format!(
            "{BASE}snapshot: when_needed\nserver_id: 77\nsnapshot_workers: 4\non_drop: keep\nallow_unlogged_cascades: true\n"
        ));
        let valid = c.validate_config("demo").expect("valid");
        assert!(valid.allow_unlogged_cascades);
        assert_eq!(valid.snapshot, SnapshotMode::WhenNeeded);
        assert_eq!(valid.server_id, 77);
        assert_eq!(valid.on_drop, OnDrop::Keep);
        assert!(serde_yaml::from_str::<MysqlConfig>(&format!("{BASE}colour: red\n")).is_err());
    }

    #[test]
    fn errors_name_key_and_fix_without_password() {
        let err = config(&BASE.replace("mysql://", "postgres://"))
            .validate_config("d")
            .expect_err("scheme")
            .to_string();
        assert!(err.contains("source.url") && !err.contains("pw"), "{err}");
        let err = config(&format!("{BASE}server_id: 0\n"))
            .validate_config("d")
            .expect_err("zero")
            .to_string();
        assert!(err.contains("source.server_id"), "{err}");
        let err = config(&format!("{BASE}snapshot_workers: 0\n"))
            .validate_config("d")
            .expect_err("workers")
            .to_string();
        assert!(err.contains("source.snapshot_workers"), "{err}");
        let err = config(&BASE.replace("app.*", "app"))
            .validate_config("d")
            .expect_err("tables")
            .to_string();
        assert!(err.contains("source.tables.include"), "{err}");
        let err = config(&BASE.replace("3306/", "3306/?ssl-mode=PREFERRED"))
            .validate_config("d")
            .expect_err("ssl")
            .to_string();
        assert!(err.contains("ssl-mode") && !err.contains("pw@"), "{err}");
    }

    #[test]
    fn ssl_mode_maps_to_tls_options() {
        let opts = parse_url("mysql://u:p@h:3306/?ssl-mode=REQUIRED").expect("url");
        let ssl = opts.ssl_opts().expect("tls on");
        assert!(ssl.accept_invalid_certs());
        let opts = parse_url("mysql://u:p@h:3306/?ssl-mode=VERIFY_IDENTITY").expect("url");
        assert!(!opts.ssl_opts().expect("tls on").skip_domain_validation());
        assert!(parse_url("mysql://u:p@h:3306/")
            .expect("url")
            .ssl_opts()
            .is_none());
        let opts =
            parse_url("mysql://u:p@h:3306/?ssl-mode=VERIFY_CA&ssl-ca=/etc/ca.pem").expect("url");
        let ssl = opts.ssl_opts().expect("tls on");
        assert!(ssl.disable_built_in_roots(), "only the given CA is trusted");
        assert!(ssl.skip_domain_validation() && !ssl.accept_invalid_certs());
        let opts = parse_url("mysql://u:p@h:3306/?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/ca.pem")
            .expect("url");
        let ssl = opts.ssl_opts().expect("tls on");
        assert!(ssl.disable_built_in_roots() && !ssl.skip_domain_validation());
        assert_eq!(ssl.root_certs().len(), 1);
        let error = parse_url("mysql://u:p@h:3306/?ssl-mode=VERIFY_CA").expect_err("no ssl-ca");
        assert!(error.to_string().contains("ssl-ca"), "{error}");
        let error = parse_url("mysql://u:p@h:3306/?ssl-mode=PREFERRED").expect_err("preferred");
        assert!(error.to_string().contains("PREFERRED"), "{error}");
    }
}
