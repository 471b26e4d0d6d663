//! `PgxConfig`: the `source:` section for PostgreSQL (`type: pgx`, alias `postgres`), its
//! defaults derived from the pipeline name, and `validate`, which checks everything that can be
//! checked without I/O and names the key and the fix (STYLE §3).

use etcdsync_core::secret::{redact_url, Secret};
use etcdsync_core::tables::TableSelection;
use etcdsync_core::{Error, Result, TableId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// `source:` with `type: pgx`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgxConfig {
    /// libpq URL: `postgres://user:password@host:5432/dbname?sslmode=require`. The password may
    /// come from the environment: `postgres://etcdsync:${PGPASSWORD}@db/app`.
    pub url: Secret,
    /// Tables to sync: `include`/`exclude` globs of `schema.table`, and `exclude_columns`.
    pub tables: TableSelection,
    /// `initial` (default): copy the selected tables first, then stream; `never`: stream only.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Parallel COPY connections during the snapshot (default 2).
    #[serde(default = "default_snapshot_workers")]
    pub snapshot_workers: usize,
    /// Logical replication slot; default `etcdsync_{name}` (`-` becomes `_`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// Publication; default `etcdsync_{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publication: Option<String>,
    /// `true` (default): create the publication if missing and keep its table list equal to
    /// the selected tables. `false`: use an existing publication as it is.
    #[serde(default = "default_true")]
    pub manage_publication: bool,
    /// Key columns for tables without a primary key (`{"public.events": [id, ts]}`); such a
    /// table needs `REPLICA IDENTITY FULL` so deletes carry the key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub key_columns: BTreeMap<String, Vec<String>>,
    /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full`; overrides the URL's
    /// `sslmode` (libpq default: `prefer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslmode: Option<SslMode>,
    /// PEM file of CA certificates for `verify-ca`/`verify-full` (default: the Mozilla roots);
    /// overrides the URL's `sslrootcert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<PathBuf>,
    /// How often an idle stream records its position (DESIGN §5), e.g. `10s` (default).
    #[serde(default = "default_heartbeat", with = "etcdsync_core::duration")]
    pub heartbeat_interval: Duration,
    /// How often to look for new tables that match `tables` (created later, or selected by a
    /// changed config); each is copied and then streamed. Needs `manage_publication`. Default `10s`.
    #[serde(default = "default_refresh", with = "etcdsync_core::duration")]
    pub table_refresh_interval: Duration,
}

fn default_refresh() -> Duration {
    Duration::from_secs(10)
}

fn default_snapshot_workers() -> usize {
    2
}

fn default_true() -> bool {
    true
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    #[default]
    Initial,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// Session settings of DESIGN §3 for every connection, replication included: pgoutput renders
/// values with the walsender's settings, COPY with the worker's.
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO,MDY -c TimeZone=UTC -c IntervalStyle=iso_8601 \
     -c extra_float_digits=3 -c bytea_output=hex -c client_encoding=UTF8";

/// A validated configuration: what `build` works from.
#[derive(Debug, Clone)]
pub struct Valid {
    /// Connection settings for tokio-postgres (without TLS parameters).
    pub pg: tokio_postgres::Config,
    /// The URL with its password hidden, for messages.
    pub display_url: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub tables: TableSelection,
    pub snapshot: SnapshotMode,
    pub snapshot_workers: usize,
    pub slot: String,
    pub publication: String,
    pub manage_publication: bool,
    pub key_columns: BTreeMap<TableId, Vec<String>>,
    pub heartbeat_interval: Duration,
    pub table_refresh_interval: Duration,
    pub application_name: String,
}

impl Valid {
    /// The publication that holds tables found while running until their copy is done.
    pub fn pending_publication(&self) -> String {
        format!("{}{PENDING_SUFFIX}", self.publication)
    }

    /// The temporary slot whose exported snapshot copies tables found while running.
    pub fn copy_slot(&self) -> String {
        format!("{}{COPY_SUFFIX}", self.slot)
    }

    /// Publications the stream subscribes to.
    pub fn publications(&self) -> Vec<String> {
        if self.manage_publication {
            vec![self.publication.clone(), self.pending_publication()]
        } else {
            vec![self.publication.clone()]
        }
    }
}

const PENDING_SUFFIX: &str = "_new";
const COPY_SUFFIX: &str = "_copy";

/// `etcdsync_{name}` with `-` → `_`, so the default is a valid slot name.
pub fn default_object_name(pipeline: &str) -> String {
    format!("etcdsync_{}", pipeline.replace('-', "_"))
}

/// Slot and publication names: lowercase letters, digits and `_`, at most 63 bytes (what
/// PostgreSQL allows for slots, and what needs no quoting in `START_REPLICATION`).
fn check_object_name(key: &str, name: &str, max: usize) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "at `source.{key}`: `{name}` must be 1–{max} characters of a-z, 0-9 or `_` (PostgreSQL slot naming rules, \
             leaving room for the `_copy`/`_new` helpers); pick another name or leave it out to use the default"
        )))
    }
}

/// Splits `sslmode` and `sslrootcert` out of the URL's query (tokio-postgres knows only some
/// modes), returning the remaining URL.
fn split_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None, None);
    };
    let (mut mode, mut root) = (None, None);
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some(("sslmode", v)) => {
                mode = Some(v.to_string());
                false
            }
            Some(("sslrootcert", v)) => {
                root = Some(v.to_string());
                false
            }
            _ => true,
        })
        .collect();
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, mode, root)
}

/// `postgres://user@host:port/dbname` from parsed settings (no password, no parameters).
fn display_of(pg: &tokio_postgres::Config) -> String {
    let ports = pg.get_ports();
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            match ports.get(i).or(ports.first()) {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        pg.get_user().unwrap_or(""),
        hosts.join(","),
        pg.get_dbname().unwrap_or("")
    )
}

impl PgxConfig {
    /// Checks the configuration without I/O.
    pub fn validated(&self, pipeline_name: &str) -> Result<Valid> {
        let raw = self.url.expose();
        let display_url = redact_url(raw);
        if !(raw.starts_with("postgres://") || raw.starts_with("postgresql://")) {
            return Err(Error::config(format!(
                "at `source.url`: `{display_url}` is not a libpq URL; write postgres://user:password@host:5432/dbname"
            )));
        }
        let (url, url_mode, url_root) = split_tls_params(raw);
        let mut pg: tokio_postgres::Config = url.parse().map_err(|e| {
            // The parser names an unknown option by its text: after a raw `&` in a `password=`
            // value that is the rest of the password.
            let cause = if raw.contains("password=") {
                String::new()
            } else {
                format!(": {e}")
            };
            Error::config(format!("at `source.url`: cannot parse `{display_url}`{cause}; write postgres://user:password@host:5432/dbname (percent-encode special characters of the password)"))
        })?;
        if pg.get_user().is_none() {
            return Err(Error::config(format!(
                "at `source.url`: `{display_url}` names no user; write postgres://USER:password@host/dbname"
            )));
        }
        if pg.get_dbname().is_none() {
            return Err(Error::config(format!(
                "at `source.url`: `{display_url}` names no database; write postgres://user:password@host/DBNAME"
            )));
        }
        if pg.get_hosts().is_empty() {
            return Err(Error::config(format!(
                "at `source.url`: `{display_url}` names no host; write postgres://user:password@HOST:5432/dbname"
            )));
        }
        // tokio-postgres ends the user info at the first `@`: a raw `@` in the password leaves the
        // rest of it in the host or (after a raw `/`) the database name, where messages show it.
        let at_in_host = pg.get_hosts().iter().any(
            |host| matches!(host, tokio_postgres::config::Host::Tcp(name) if name.contains('@')),
        );
        if at_in_host || pg.get_dbname().is_some_and(|db| db.contains('@')) {
            return Err(Error::config(format!(
                "at `source.url`: `{display_url}` has `@` in its user or password; percent-encode it as %40"
            )));
        }
        // From here on the URL is shown from its parsed parts: nothing of the password text.
        let display_url = display_of(&pg);
        if pg.get_hosts().len() > 1 {
            return Err(Error::config(format!(
                "at `source.url`: `{}` names {} hosts; etcdsync streams from one server and reads rows from \
                 the same one (a second host could be a standby that has not replayed what the stream \
                 delivered): name one host, e.g. a DNS name or virtual IP that follows the primary",
                display_url,
                pg.get_hosts().len()
            )));
        }
        let sslmode = match (self.sslmode, url_mode) {
            (Some(mode), _) => mode,
            (None, Some(text)) => SslMode::parse(&text).ok_or_else(|| {
                Error::config(format!(
                    "at `source.url`: sslmode `{text}` is not one of disable, prefer, require, verify-ca, verify-full"
                ))
            })?,
            (None, None) => SslMode::Prefer,
        };
        if sslmode == SslMode::VerifyCa && self.sslrootcert.is_none() && url_root.is_none() {
            return Err(Error::config(
                "at `source.sslmode`: verify-ca without `sslrootcert` would accept a certificate any public CA \
                 issued, for any name; set `source.sslrootcert` to the CA that signed your server's certificate, \
                 or use `sslmode: verify-full` (which checks the host name)",
            ));
        }
        if sslmode == SslMode::VerifyFull {
            let ip_host = pg.get_hosts().iter().find_map(|host| match host {
                tokio_postgres::config::Host::Tcp(name)
                    if name.parse::<std::net::IpAddr>().is_ok() =>
                {
                    Some(name.clone())
                }
                _ => None,
            });
            if let Some(ip) = ip_host {
                return Err(Error::config(format!(
                    "at `source.url`: sslmode verify-full needs a host name, but the host is the IP address {ip}; \
                     the replication session verifies certificates by DNS name only. Use the name in the server's certificate \
                     (e.g. postgres://…@db.example.com/…), or `sslmode: verify-ca`"
                )));
            }
        }
        let options = match pg.get_options() {
            Some(user) if !user.is_empty() => format!("{user} {SESSION_OPTIONS}"),
            _ => SESSION_OPTIONS.to_string(),
        };
        pg.options(options);
        let application_name = format!("etcdsync-{pipeline_name}");
        pg.application_name(&application_name);
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(10));
        }

        self.tables.validate("source.tables")?;
        if !(1..=64).contains(&self.snapshot_workers) {
            return Err(Error::config(format!(
                "at `source.snapshot_workers`: {} must be between 1 and 64",
                self.snapshot_workers
            )));
        }
        let slot = self
            .slot
            .clone()
            .unwrap_or_else(|| default_object_name(pipeline_name));
        check_object_name("slot", &slot, 63 - COPY_SUFFIX.len())?;
        let publication = self
            .publication
            .clone()
            .unwrap_or_else(|| default_object_name(pipeline_name));
        check_object_name("publication", &publication, 63 - PENDING_SUFFIX.len())?;
        let mut key_columns = BTreeMap::new();
        for (table, columns) in &self.key_columns {
            let Some((schema, name)) = table
                .split_once('.')
                .filter(|(s, t)| !s.is_empty() && !t.is_empty())
            else {
                return Err(Error::config(format!(
                    "at `source.key_columns`: `{table}` is not `schema.table`; write e.g. `public.events: [id]`"
                )));
            };
            if table.contains(['*', '?']) {
                return Err(Error::config(format!(
                    "at `source.key_columns`: `{table}` must name one table, not a glob"
                )));
            }
            if columns.is_empty() {
                return Err(Error::config(format!(
                    "at `source.key_columns.{table}`: list at least one column"
                )));
            }
            let id = TableId::new(schema, name);
            if let Some(col) = columns.iter().find(|c| self.tables.column_excluded(&id, c)) {
                return Err(Error::config(format!(
                    "at `source.key_columns.{table}`: key column `{col}` is also in `source.tables.exclude_columns`; a key column cannot be excluded"
                )));
            }
            key_columns.insert(id, columns.clone());
        }
        if self.table_refresh_interval < Duration::from_millis(100) {
            return Err(Error::config(
                "at `source.table_refresh_interval`: must be at least 100ms, e.g. `10s`"
                    .to_string(),
            ));
        }
        if self.heartbeat_interval < Duration::from_millis(100) {
            return Err(Error::config(
                "at `source.heartbeat_interval`: must be at least 100ms, e.g. `10s`".to_string(),
            ));
        }
        Ok(Valid {
            pg,
            display_url,
            sslmode,
            sslrootcert: self.sslrootcert.clone().or(url_root.map(PathBuf::from)),
            tables: self.tables.clone(),
            snapshot: self.snapshot,
            snapshot_workers: self.snapshot_workers,
            slot,
            publication,
            manage_publication: self.manage_publication,
            key_columns,
            heartbeat_interval: self.heartbeat_interval,
            table_refresh_interval: self.table_refresh_interval,
            application_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> PgxConfig {
        serde_yaml::from_str(yaml).expect("yaml")
    }

    const BASE: &str =
        "url: postgres://u:pw@localhost:5433/app\ntables: { include: [\"public.*\"] }\n";

    #[test]
    fn a_raw_at_in_the_password_is_refused_without_showing_it() {
        let error = parse(
            "url: postgres://u:Ab@Secret9@localhost/app\ntables: { include: [\"public.*\"] }\n",
        )
        .validated("demo")
        .expect_err("a raw @");
        let text = error.to_string();
        assert!(text.contains("%40") && !text.contains("Secret9"), "{text}");
        // A raw `/` after the `@` would put the rest in the database name.
        let error = parse(
            "url: postgres://u:Ab@Sec/ret9@localhost/app\ntables: { include: [\"public.*\"] }\n",
        )
        .validated("demo")
        .expect_err("a raw @ then /");
        let text = error.to_string();
        assert!(text.contains("%40") && !text.contains("ret9"), "{text}");
        // A raw `&` in a `password=` value: the parser names the rest as an unknown option.
        let error = parse(
            "url: postgres://u@localhost/app?password=Ab&Secret9\ntables: { include: [\"public.*\"] }\n",
        )
        .validated("demo")
        .expect_err("a raw &");
        let text = error.to_string();
        assert!(!text.contains("Secret9"), "{text}");
    }

    #[test]
    fn a_url_with_several_hosts_is_refused_with_the_fix() {
        let error = parse(
            "url: postgres://u:Secret9@db1:5432,db2:5433/app\ntables: { include: [\"public.*\"] }\n",
        )
        .validated("demo")
        .expect_err("two hosts");
        let text = error.to_string();
        assert!(
            text.contains("names 2 hosts")
                && text.contains("name one host")
                && !text.contains("Secret9"),
            "{text}"
        );
        // A raw `@` in the password splits it into "hosts": refused for the `@`, never shown.
        let error =
            parse("url: postgres://u:Pa@ss,wd@db/app\ntables: { include: [\"public.*\"] }\n")
                .validated("demo")
                .expect_err("a raw @ before a comma");
        let text = error.to_string();
        assert!(text.contains("%40") && !text.contains("ss,wd"), "{text}");
    }

    #[test]
    fn debug_never_shows_the_password() {
        let valid = parse("url: postgres://u:Hunter2/Pw?x@localhost:5433/app?password=Other3Pw\ntables: { include: [\"public.*\"] }\n")
            .validated("demo")
            .expect("valid");
        let shown = format!("{valid:?} {}", valid.display_url);
        assert!(
            !shown.contains("Hunter2") && !shown.contains("Other3Pw"),
            "{shown}"
        );
    }

    #[test]
    fn defaults_derive_from_the_pipeline_name() {
        let valid = parse(BASE).validated("demo-1").expect("valid");
        assert_eq!(valid.slot, "etcdsync_demo_1");
        assert_eq!(valid.publication, "etcdsync_demo_1");
        assert_eq!(valid.snapshot, SnapshotMode::Initial);
        assert_eq!(valid.snapshot_workers, 2);
        assert_eq!(valid.sslmode, SslMode::Prefer);
        assert_eq!(valid.pg.get_ports(), &[5433]);
        assert_eq!(valid.pg.get_dbname(), Some("app"));
        assert!(valid
            .pg
            .get_options()
            .is_some_and(|o| o.contains("IntervalStyle=iso_8601")));
        assert_eq!(valid.display_url, "postgres://u@localhost:5433/app");
    }

    #[test]
    fn sslmode_from_url_or_key() {
        let cfg = parse("url: postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem&connect_timeout=3\ntables: { include: [a.b] }\n");
        let valid = cfg.validated("x").expect("valid");
        assert_eq!(valid.sslmode, SslMode::VerifyFull);
        assert_eq!(valid.sslrootcert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(
            valid.pg.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        let cfg = parse("url: postgres://u@h/db?sslmode=require\ntables: { include: [a.b] }\nsslmode: disable\n");
        assert_eq!(cfg.validated("x").expect("valid").sslmode, SslMode::Disable);
        let cfg = parse("url: postgres://u@h/db?sslmode=bogus\ntables: { include: [a.b] }\n");
        assert!(cfg
            .validated("x")
            .expect_err("bad")
            .to_string()
            .contains("sslmode `bogus`"));
        let cfg = parse(
            "url: postgres://u@127.0.0.1/db\ntables: { include: [a.b] }\nsslmode: verify-full\n",
        );
        let err = cfg
            .validated("x")
            .expect_err("verify-full with an IP")
            .to_string();
        assert!(
            err.contains("IP address 127.0.0.1") && err.contains("verify-ca"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let err = parse("url: mysql://u@h/db\ntables: { include: [a.b] }\n")
            .validated("x")
            .expect_err("url");
        assert!(err.to_string().contains("source.url"), "{err}");
        let err = parse("url: postgres://u@h\ntables: { include: [a.b] }\n")
            .validated("x")
            .expect_err("db");
        assert!(err.to_string().contains("names no database"), "{err}");
        let err = parse(&format!("{BASE}slot: Bad-Slot\n"))
            .validated("x")
            .expect_err("slot");
        assert!(err.to_string().contains("source.slot"), "{err}");
        let err = parse(&format!("{BASE}snapshot_workers: 0\n"))
            .validated("x")
            .expect_err("workers");
        assert!(err.to_string().contains("source.snapshot_workers"), "{err}");
        let err = parse(&format!("{BASE}key_columns: {{ events: [id] }}\n"))
            .validated("x")
            .expect_err("key");
        assert!(err.to_string().contains("source.key_columns"), "{err}");
        let yaml = "url: postgres://u@h/db\ntables: { include: [\"public.*\"], exclude_columns: { public.e: [id] } }\nkey_columns: { public.e: [id] }\n";
        let err = parse(yaml).validated("x").expect_err("excluded key");
        assert!(err.to_string().contains("cannot be excluded"), "{err}");
        let err = parse("url: postgres://u@h/db\ntables: { include: [] }\n")
            .validated("x")
            .expect_err("tables");
        assert!(err.to_string().contains("source.tables.include"), "{err}");
    }

    #[test]
    fn unknown_keys_and_durations() {
        assert!(serde_yaml::from_str::<PgxConfig>(&format!("{BASE}bogus: 1\n")).is_err());
        let cfg = parse(&format!("{BASE}heartbeat_interval: 1s\nsnapshot: never\n"));
        assert_eq!(cfg.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(cfg.snapshot, SnapshotMode::Never);
        assert_eq!(
            parse(&format!("{BASE}heartbeat_interval: 0.5\n")).heartbeat_interval,
            Duration::from_millis(500)
        );
        assert_eq!(
            parse(&format!("{BASE}heartbeat_interval: 2\n")).heartbeat_interval,
            Duration::from_secs(2)
        );
        assert!(
            serde_yaml::from_str::<PgxConfig>(&format!("{BASE}heartbeat_interval: soon\n"))
                .is_err()
        );
    }

    #[test]
    fn secrets_stay_hidden() {
        let cfg = parse(BASE);
        assert!(!format!("{cfg:?}").contains("pw"));
        assert!(!serde_yaml::to_string(&cfg).expect("yaml").contains("pw"));
    }
}
