//! The prerequisites (issue 4 item 2, issue 6 `check`, issue 12): server flavour and version,
//! binlog settings (incl. MariaDB's `log_bin_compress`), server ids, privileges and binlog
//! retention, plus per-table verdicts (charsets etcdsync cannot convert exactly, foreign keys
//! whose cascades the server does not log), each judged once as a [`CheckResult`] with the
//! exact setting, statement or GRANT that fixes a failure. Start-up refuses to run on any failed
//! required one (all reported at once); `etcdsync check` prints every verdict.

use crate::charset::{unsupported_fix, Charset};
use crate::config::ValidMysql;
use crate::decode::LOG_BIN_COMPRESS_FIX;
use crate::error::{MysqlError, Result};
use etcdsync_core::inspect::CheckResult;
use etcdsync_core::tables::TableSelection;
use etcdsync_core::telemetry;
use etcdsync_core::TableId;
use mysql_async::prelude::*;
use mysql_async::{Conn, Row};
use std::collections::HashMap;
use std::time::Duration;

/// Which server family; MySQL-only code paths (GTID format, `SHOW BINARY LOG STATUS`, binary
/// JSON, the snapshot's read lock) hang off this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    MariaDb,
    MySql,
}

#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub flavour: Flavour,
    pub version: String,
    pub server_id: u32,
}

impl ServerInfo {
    /// Compares the leading `major.minor.patch` of `VERSION()` (`10.11.6-MariaDB-log`, `8.0.36`).
    pub fn version_at_least(&self, major: u32, minor: u32, patch: u32) -> bool {
        version_numbers(&self.version) >= (major, minor, patch)
    }
}

/// `(major, minor, patch)` of a server version string; missing parts are 0.
pub fn version_numbers(version: &str) -> (u32, u32, u32) {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// Reads the flavour from `VERSION()` (`10.11.6-MariaDB-0+deb12u1`, `8.0.36`).
pub fn flavour_of(version: &str) -> Flavour {
    if version.to_ascii_lowercase().contains("mariadb") {
        Flavour::MariaDb
    } else {
        Flavour::MySql
    }
}

/// What the server reported, reduced to what the check needs.
#[derive(Debug, Default)]
pub struct Observed {
    pub version: String,
    pub variables: HashMap<String, String>,
    pub grants: Vec<String>,
    pub user: String,
}

/// One prerequisite's verdict, as `etcdsync check` prints it. Start-up refuses to run on a
/// failed `required` one and only warns about the others (binlog retention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub result: CheckResult,
    pub required: bool,
}

impl Verdict {
    fn required(result: CheckResult) -> Self {
        Self {
            result,
            required: true,
        }
    }

    fn advisory(result: CheckResult) -> Self {
        Self {
            result,
            required: false,
        }
    }
}

/// A failed check as one line of the start-up error: `  - name: detail — fix: …`.
pub fn problem_line(result: &CheckResult) -> String {
    match &result.fix {
        Some(fix) => format!("  - {}: {} — fix: {fix}", result.name, result.detail),
        None => format!("  - {}: {}", result.name, result.detail),
    }
}

/// The start-up check: every required prerequisite (the same verdicts `etcdsync check` prints),
/// all failures reported at once; advisory failures are logged as warnings.
pub async fn check(conn: &mut Conn, config: &ValidMysql) -> Result<ServerInfo> {
    let observed = observe(conn).await?;
    let info = observed.server_info();
    let verdicts = assess(&observed, info.flavour, config);
    let mut problems = Vec::new();
    for verdict in &verdicts {
        if verdict.result.ok {
            continue;
        }
        if verdict.required {
            problems.push(problem_line(&verdict.result));
        } else {
            tracing::warn!(
                check = %verdict.result.name,
                fix = verdict.result.fix.as_deref().unwrap_or_default(),
                "{}",
                verdict.result.detail
            );
        }
    }
    for verdict in table_verdicts(conn, config).await? {
        if !verdict.ok {
            problems.push(problem_line(&verdict));
        }
    }
    if !problems.is_empty() {
        return Err(MysqlError::Prerequisite(problems.join("\n")));
    }
    // Another replica's registration may be a connection that is going away, so a clash is
    // re-checked for a few seconds.
    for attempt in 0..6 {
        match replicas(conn, config, &info).await {
            Replicas::Unknown(why) => {
                tracing::debug!(why = %why, "cannot list replicas; skipping the server_id clash check");
                break;
            }
            Replicas::Free => break,
            // This pipeline's own earlier binlog connection, still registered after a restart:
            // the server replaces it when this one starts dumping.
            Replicas::Taken { host } if host == crate::config::replica_host(&config.pipeline) => {
                tracing::debug!(host = %host, "server_id registered by this pipeline's previous connection");
                break;
            }
            Replicas::Taken { host } if attempt == 5 => {
                return Err(MysqlError::Prerequisite(problem_line(&server_id_clash(
                    config,
                    &format!("a replica connected from `{host}` registered with it"),
                ))));
            }
            Replicas::Taken { .. } => {
                telemetry::get().retry("source");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Ok(info)
}

/// Reads what [`assess`] judges: version, binlog settings, user and grants.
pub async fn observe(conn: &mut Conn) -> Result<Observed> {
    let version: Option<String> = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(|e| MysqlError::driver("reading the server version", e))?;
    let rows: Vec<(String, String)> = conn
        .query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', \
             'binlog_row_image', 'binlog_row_metadata', 'server_id', 'binlog_row_value_options', \
             'binlog_transaction_compression', 'gtid_mode', 'expire_logs_days', \
             'binlog_expire_logs_seconds', 'binlog_expire_logs_auto_purge', 'log_bin_compress')",
        )
        .await
        .map_err(|e| MysqlError::driver("reading the server's binlog settings", e))?;
    let user: Option<String> = conn
        .query_first("SELECT CURRENT_USER()")
        .await
        .map_err(|e| MysqlError::driver("reading the current user", e))?;
    let grant_rows: Vec<Row> = conn
        .query("SHOW GRANTS")
        .await
        .map_err(|e| MysqlError::driver("reading the user's privileges (SHOW GRANTS)", e))?;
    let mut grants: Vec<String> = grant_rows
        .into_iter()
        .filter_map(|mut row| row.take::<String, _>(0))
        .collect();
    grants.extend(role_grants(conn).await);
    Ok(Observed {
        version: version.unwrap_or_default(),
        variables: rows
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect(),
        grants,
        user: user.unwrap_or_default(),
    })
}

impl Observed {
    /// The server's own `server_id` (0 when unset or unreadable).
    pub fn server_id(&self) -> u32 {
        self.variables
            .get("server_id")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn server_info(&self) -> ServerInfo {
        ServerInfo {
            flavour: flavour_of(&self.version),
            version: self.version.clone(),
            server_id: self.server_id(),
        }
    }
}

/// The oldest versions etcdsync supports: `binlog_row_metadata=FULL` exists from MariaDB 10.5
/// and MySQL 8.0.1.
const MIN_MARIADB: (u32, u32, u32) = (10, 5, 0);
const MIN_MYSQL: (u32, u32, u32) = (8, 0, 1);

/// Binlogs kept for less than this fail the retention check (unless `snapshot: when_needed`).
pub const MIN_RETENTION_SECONDS: f64 = 86_400.0;

/// Every prerequisite that the observed settings and grants decide, in the order `check`
/// prints them: server version, binlog settings, server ids, privileges, binlog retention.
/// Pure, unit-tested; start-up and `etcdsync check` both use it.
pub fn assess(observed: &Observed, flavour: Flavour, config: &ValidMysql) -> Vec<Verdict> {
    let mut out = Vec::new();
    let var = |name: &str| observed.variables.get(name).map(|v| v.to_ascii_uppercase());

    let (name, min) = match flavour {
        Flavour::MariaDb => ("MariaDB", MIN_MARIADB),
        Flavour::MySql => ("MySQL", MIN_MYSQL),
    };
    let version = version_numbers(&observed.version);
    out.push(Verdict::required(if version >= min {
        CheckResult::pass("server version", format!("{name} {}", observed.version))
    } else {
        CheckResult::fail(
            "server version",
            format!(
                "{name} {} is too old: etcdsync needs MariaDB ≥ 10.5 or MySQL ≥ 8.0.1 (binlog_row_metadata=FULL)",
                observed.version
            ),
            format!("upgrade the server to {name} {}.{}.{} or later", min.0, min.1, min.2),
        )
    }));

    out.push(Verdict::required(match var("log_bin").as_deref() {
        Some("ON") => CheckResult::pass("log_bin", "ON"),
        other => CheckResult::fail(
            "log_bin",
            format!(
                "{}: the binary log is off, so there is nothing to stream",
                other.unwrap_or("not set")
            ),
            "add `log_bin = mysql-bin` under [mysqld] in my.cnf and restart the server (it cannot be turned on at runtime)",
        ),
    }));
    let setting = |name: &str, want: &str, why: &str| -> CheckResult {
        match var(name) {
            Some(v) if v == want => CheckResult::pass(name, v),
            Some(v) => CheckResult::fail(
                name,
                format!("{v}, etcdsync needs {want} ({why})"),
                format!(
                    "SET GLOBAL {name}={want} now (sessions opened before keep the old value), and `{name} = {want}` under [mysqld] in my.cnf"
                ),
            ),
            None => CheckResult::fail(
                name,
                format!("{name} is not supported by this server ({})", observed.version),
                format!(
                    "upgrade to MariaDB ≥ 10.5 or MySQL ≥ 8.0.1 and set {name}={want}"
                ),
            ),
        }
    };
    out.push(Verdict::required(setting(
        "binlog_format",
        "ROW",
        "row events, not statements",
    )));
    out.push(Verdict::required(setting(
        "binlog_row_image",
        "FULL",
        "every column in before and after images",
    )));
    out.push(Verdict::required(setting(
        "binlog_row_metadata",
        "FULL",
        "column names, primary key and enum/set labels in each table map",
    )));
    if flavour == Flavour::MySql {
        out.push(Verdict::required(match var("binlog_row_value_options") {
            Some(v) if !v.is_empty() => CheckResult::fail(
                "binlog_row_value_options",
                format!("{v}: partial JSON updates cannot be applied to a full row"),
                "SET GLOBAL binlog_row_value_options='' now, and `binlog_row_value_options = ''` under [mysqld] in my.cnf",
            ),
            _ => CheckResult::pass("binlog_row_value_options", "'' (full JSON values)"),
        }));
        out.push(Verdict::required(
            match var("binlog_transaction_compression").as_deref() {
                Some("ON") => CheckResult::fail(
                    "binlog_transaction_compression",
                    "ON: etcdsync does not read compressed transaction payloads",
                    "SET GLOBAL binlog_transaction_compression=OFF now, and `binlog_transaction_compression = OFF` under [mysqld] in my.cnf",
                ),
                other => CheckResult::pass(
                    "binlog_transaction_compression",
                    other.unwrap_or("OFF").to_string(),
                ),
            },
        ));
    }

    if flavour == Flavour::MariaDb {
        out.push(Verdict::required(match var("log_bin_compress").as_deref() {
            Some("ON") => CheckResult::fail(
                "log_bin_compress",
                "ON: MariaDB writes compressed binlog events (types 165–171), which etcdsync does not read",
                LOG_BIN_COMPRESS_FIX,
            ),
            other => CheckResult::pass("log_bin_compress", other.unwrap_or("OFF").to_string()),
        }));
    }
    out.push(Verdict::required(server_id_verdict(observed, config)));
    out.extend(privileges(observed, flavour, config));
    out.push(Verdict::advisory(retention(observed, config)));
    out
}

fn server_id_verdict(observed: &Observed, config: &ValidMysql) -> CheckResult {
    let own = observed.server_id();
    if own == 0 {
        return CheckResult::fail(
            "server_id",
            "the server's server_id is 0, and a server without an id refuses replicas",
            "SET GLOBAL server_id=1 now (any id unique in the topology), and `server_id = 1` under [mysqld] in my.cnf",
        );
    }
    if own == config.server_id {
        return server_id_clash(config, &format!("the server's own server_id is {own}"));
    }
    CheckResult::pass(
        "server_id",
        format!(
            "server {own}; etcdsync registers as replica {} ({})",
            config.server_id,
            server_id_origin(config)
        ),
    )
}

fn server_id_origin(config: &ValidMysql) -> &'static str {
    if config.server_id_explicit {
        "source.server_id"
    } else {
        "derived from the pipeline name"
    }
}

/// The grants of the session's active roles (a default role, or `SET ROLE`): `SHOW GRANTS`
/// lists a granted role by name only. Best effort: a server that cannot say gives none.
async fn role_grants(conn: &mut Conn) -> Vec<String> {
    let roles: Option<Option<String>> = conn
        .query_first("SELECT CURRENT_ROLE()")
        .await
        .unwrap_or_else(|e| {
            tracing::debug!(error = %e, "CURRENT_ROLE() is not available");
            None
        });
    let Some(roles) = roles.flatten().filter(|r| !r.is_empty() && r != "NONE") else {
        return Vec::new();
    };
    // MariaDB names one role (`r1`); MySQL lists them as `r1`@`%`,`r2`@`%`.
    let statement = if roles.contains('@') {
        format!("SHOW GRANTS FOR CURRENT_USER() USING {roles}")
    } else {
        format!("SHOW GRANTS FOR {}", crate::statement::quote_ident(&roles))
    };
    match conn.query::<Row, _>(statement).await {
        Ok(rows) => rows
            .into_iter()
            .filter_map(|mut row| row.take::<String, _>(0))
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, roles = %roles, "cannot read the grants of the active roles");
            Vec::new()
        }
    }
}

/// The privilege checks, from `SHOW GRANTS` (global privileges; SELECT may be per database,
/// which `etcdsync check` verifies per table).
fn privileges(observed: &Observed, flavour: Flavour, config: &ValidMysql) -> Vec<Verdict> {
    let mut out = Vec::new();
    let privileges = global_privileges(&observed.grants);
    let has = |p: &str| privileges.iter().any(|g| g == "ALL PRIVILEGES" || g == p);
    let user = &observed.user;
    let quoted = quote_user(user);
    let privilege = |what: &str, ok: bool, why: &str| -> Verdict {
        let name = format!("privilege {what}");
        Verdict::required(if ok {
            CheckResult::pass(name, format!("granted to {user}: needed {why}"))
        } else {
            CheckResult::fail(
                name,
                format!("{user} lacks {what}, needed {why}"),
                format!("GRANT {what} ON *.* TO {quoted};"),
            )
        })
    };
    out.push(privilege(
        "REPLICATION SLAVE",
        has("REPLICATION SLAVE") || has("REPLICATION REPLICA"),
        "to read the binlog",
    ));
    let (monitor, have_monitor) = match flavour {
        Flavour::MariaDb => (
            "BINLOG MONITOR",
            has("BINLOG MONITOR") || has("REPLICATION CLIENT"),
        ),
        Flavour::MySql => ("REPLICATION CLIENT", has("REPLICATION CLIENT")),
    };
    out.push(privilege(
        monitor,
        have_monitor,
        "to read binlog positions (SHOW MASTER STATUS, SHOW BINARY LOGS)",
    ));
    let needs_lock = flavour == Flavour::MySql || config.snapshot_workers > 1;
    if needs_lock && config.snapshot != crate::config::SnapshotMode::Never {
        let mut verdict = privilege(
            "RELOAD",
            has("RELOAD"),
            "for the snapshot's brief FLUSH TABLES WITH READ LOCK",
        );
        if flavour == Flavour::MariaDb {
            if let Some(fix) = verdict.result.fix.as_mut() {
                fix.push_str(" Or set source.snapshot_workers: 1 to snapshot without a lock.");
            }
        }
        out.push(verdict);
    } else {
        out.push(Verdict::required(CheckResult::pass(
            "privilege RELOAD",
            if config.snapshot == crate::config::SnapshotMode::Never {
                "not needed (snapshot: never)"
            } else {
                "not needed (MariaDB with snapshot_workers: 1 snapshots without a lock)"
            },
        )));
    }
    let any_select = has("SELECT")
        || observed
            .grants
            .iter()
            .any(|g| g.to_ascii_uppercase().contains("SELECT") || g.contains("ALL PRIVILEGES"));
    out.push(Verdict::required(if any_select {
        CheckResult::pass(
            "privilege SELECT",
            format!("{user} has SELECT (per table: see the table checks)"),
        )
    } else {
        CheckResult::fail(
            "privilege SELECT",
            format!("{user} has no SELECT privilege, so the snapshot cannot read any table"),
            format!("GRANT SELECT ON <database>.* TO {quoted}; for each synced database"),
        )
    }));
    out
}

/// How long the server keeps binlogs, in seconds; `None` when it never purges them itself.
pub fn retention_seconds(variables: &HashMap<String, String>) -> Option<f64> {
    let number = |name: &str| {
        variables
            .get(name)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| *v > 0.0)
    };
    if variables
        .get("binlog_expire_logs_auto_purge")
        .is_some_and(|v| v.eq_ignore_ascii_case("OFF"))
    {
        return None;
    }
    number("binlog_expire_logs_seconds")
        .or_else(|| number("expire_logs_days").map(|d| d * 86_400.0))
}

/// `3 days`, `6 hours`, `90 s`.
fn human_seconds(seconds: f64) -> String {
    let plural = |n: f64, unit: &str| {
        let n = (n * 10.0).round() / 10.0;
        if (n - 1.0).abs() < f64::EPSILON {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    if seconds >= 86_400.0 {
        plural(seconds / 86_400.0, "day")
    } else if seconds >= 3_600.0 {
        plural(seconds / 3_600.0, "hour")
    } else {
        format!("{seconds} s")
    }
}

/// Binlog retention: never purging is fine for etcdsync (disk is the operator's concern);
/// under a day fails unless `snapshot: when_needed` recovers by re-snapshotting, because an
/// outage longer than the retention loses the checkpoint's binlog and stops the pipeline.
fn retention(observed: &Observed, config: &ValidMysql) -> CheckResult {
    const NAME: &str = "binlog retention";
    let when_needed = config.snapshot == crate::config::SnapshotMode::WhenNeeded;
    let Some(seconds) = retention_seconds(&observed.variables) else {
        return CheckResult::pass(
            NAME,
            "binlogs are never purged automatically (expire_logs_days / binlog_expire_logs_seconds = 0); \
             purge by hand only files before the position `etcdsync status` reports",
        );
    };
    let kept = human_seconds(seconds);
    if seconds >= MIN_RETENTION_SECONDS || when_needed {
        let after = if when_needed {
            "re-snapshots (snapshot: when_needed)"
        } else {
            "stops until re-snapshotted (set source.snapshot: when_needed to do that automatically)"
        };
        return CheckResult::pass(
            NAME,
            format!("binlogs kept {kept}; after a longer outage etcdsync {after}"),
        );
    }
    CheckResult::fail(
        NAME,
        format!(
            "binlogs are kept only {kept}: an outage of etcdsync or etcd longer than that purges the checkpoint's binlog and stops the pipeline"
        ),
        "keep them at least a day: SET GLOBAL binlog_expire_logs_seconds=604800 and `binlog_expire_logs_seconds = 604800` under [mysqld] in my.cnf \
         (MariaDB < 10.6: expire_logs_days = 7), or set source.snapshot: when_needed to re-snapshot automatically",
    )
}

/// Privileges granted `ON *.*`, upper-case.
fn global_privileges(grants: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for grant in grants {
        let upper = grant.to_ascii_uppercase();
        let Some(rest) = upper.strip_prefix("GRANT ") else {
            continue;
        };
        let Some((privs, on)) = rest.split_once(" ON ") else {
            continue;
        };
        if !on.trim_start().starts_with("*.*") {
            continue;
        }
        out.extend(privs.split(',').map(|p| p.trim().to_string()));
    }
    out
}

/// `user@host` → `'user'@'host'`.
pub fn quote_user(user: &str) -> String {
    match user.rsplit_once('@') {
        Some((u, h)) => format!("'{u}'@'{h}'"),
        None => format!("'{user}'"),
    }
}

fn server_id_clash(config: &ValidMysql, what: &str) -> CheckResult {
    let origin = if config.server_id_explicit {
        "source.server_id"
    } else {
        "the server id derived from the pipeline name"
    };
    CheckResult::fail(
        "server_id",
        format!("{origin} ({}) is already in use: {what}", config.server_id),
        "set source.server_id to a number no other server or replica uses",
    )
}

/// The statement that lists connected replicas: `SHOW REPLICAS` since MySQL 8.0.22 (the old
/// name is gone in 8.4), `SHOW SLAVE HOSTS` on MariaDB.
pub fn replicas_statement(server: &ServerInfo) -> &'static str {
    match server.flavour {
        Flavour::MySql if server.version_at_least(8, 0, 22) => "SHOW REPLICAS",
        _ => "SHOW SLAVE HOSTS",
    }
}

/// Whether a connected replica uses our server id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replicas {
    /// The replicas cannot be listed (the statement needs REPLICATION MASTER ADMIN on MariaDB,
    /// REPLICATION SLAVE on MySQL), with the reason.
    Unknown(String),
    Free,
    /// A replica registered with our id, from `host` (`etcdsync:{pipeline}` for etcdsync).
    Taken {
        host: String,
    },
}

/// One look at the connected replicas.
pub async fn replicas(conn: &mut Conn, config: &ValidMysql, server: &ServerInfo) -> Replicas {
    let statement = replicas_statement(server);
    let rows: Vec<Row> = match conn.query(statement).await {
        Ok(rows) => rows,
        // ER_SPECIFIC_ACCESS_DENIED_ERROR
        Err(e) if crate::error::server_code(&e) == Some(1227) => {
            return Replicas::Unknown(format!("{statement} is not permitted to this user"))
        }
        Err(e) => return Replicas::Unknown(format!("{statement}: {e}")),
    };
    rows.into_iter()
        .find_map(|mut row| {
            let id: Option<u32> = row.take(0);
            let host: Option<String> = row.take(1);
            (id == Some(config.server_id)).then(|| host.unwrap_or_default())
        })
        .map_or(Replicas::Free, |host| Replicas::Taken { host })
}

/// The server-id verdict once the replicas are known: a replica registered as this pipeline
/// is this pipeline running (fine for `check`); any other is a clash.
pub fn replicas_verdict(
    config: &ValidMysql,
    base: CheckResult,
    replicas: &Replicas,
) -> CheckResult {
    if !base.ok {
        return base;
    }
    match replicas {
        Replicas::Free => CheckResult::pass(
            base.name,
            format!("{}; no other replica uses it", base.detail),
        ),
        Replicas::Unknown(why) => CheckResult::pass(
            base.name,
            format!(
                "{}; other replicas not checked: {why} (optional: on MariaDB GRANT REPLICATION MASTER ADMIN lets etcdsync see them)",
                base.detail
            ),
        ),
        Replicas::Taken { host } if *host == crate::config::replica_host(&config.pipeline) => {
            CheckResult::pass(
                base.name,
                format!(
                    "{}; in use by this pipeline's running binlog connection (registered as `{host}`)",
                    base.detail
                ),
            )
        }
        Replicas::Taken { host } => server_id_clash(
            config,
            &format!("a replica connected from `{host}` registered with it"),
        ),
    }
}

mod tables;
pub use tables::{cascade_verdicts, charset_verdicts, table_verdicts, ColumnCharset, ForeignKey};

#[cfg(test)]
mod tests;
