//! The start-up check (issue 4 item 2): binlog settings, server flavour and version, privileges
//! and a free replica server id. Every problem found is reported at once, each with the exact
//! setting or GRANT that fixes it.

use crate::config::ValidMysql;
use crate::error::{MysqlError, Result};
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

pub async fn check(conn: &mut Conn, config: &ValidMysql) -> Result<ServerInfo> {
    let observed = observe(conn).await?;
    let flavour = flavour_of(&observed.version);
    let mut problems = problems(&observed, flavour, config);
    let server_id = observed
        .variables
        .get("server_id")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if server_id == config.server_id {
        problems.push(server_id_clash(
            config,
            &format!("the server's own server_id is {server_id}"),
        ));
    }
    if !problems.is_empty() {
        return Err(MysqlError::Prerequisite(
            problems
                .iter()
                .map(|p| format!("  - {p}"))
                .collect::<Vec<_>>()
                .join("\n"),
        ));
    }
    let info = ServerInfo {
        flavour,
        version: observed.version,
        server_id,
    };
    check_replica_ids(conn, config, &info).await?;
    Ok(info)
}

async fn observe(conn: &mut Conn) -> Result<Observed> {
    let version: Option<String> = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(|e| MysqlError::driver("reading the server version", e))?;
    let rows: Vec<(String, String)> = conn
        .query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', \
             'binlog_row_image', 'binlog_row_metadata', 'server_id', 'binlog_row_value_options', \
             'gtid_mode')",
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
    let grants = grant_rows
        .into_iter()
        .filter_map(|mut row| row.take::<String, _>(0))
        .collect();
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

/// Every missing setting and privilege, each with its fix. Pure, unit-tested.
pub fn problems(observed: &Observed, flavour: Flavour, config: &ValidMysql) -> Vec<String> {
    let mut problems = Vec::new();
    let var = |name: &str| observed.variables.get(name).map(|v| v.to_ascii_uppercase());
    if var("log_bin").as_deref() != Some("ON") {
        problems.push(
            "log_bin is OFF: the binary log must be on; it cannot be enabled at runtime — add \
             `log_bin = mysql-bin` under [mysqld] in my.cnf and restart the server"
                .to_string(),
        );
    }
    let mut setting = |name: &str, want: &str, since: &str| {
        match var(name) {
        Some(v) if v == want => {}
        Some(v) => problems.push(format!(
            "{name} is {v}: set {name}={want} (`SET GLOBAL {name}={want}` now, and `{name} = {want}` under [mysqld] in my.cnf)"
        )),
        None => problems.push(format!(
            "{name} is not supported by this server ({}): etcdsync needs {since}",
            observed.version
        )),
    }
    };
    setting("binlog_format", "ROW", "MySQL ≥ 5.7 or MariaDB ≥ 10.5");
    setting("binlog_row_image", "FULL", "MySQL ≥ 5.7 or MariaDB ≥ 10.5");
    setting(
        "binlog_row_metadata",
        "FULL",
        "MySQL ≥ 8.0.1 or MariaDB ≥ 10.5 (binlog_row_metadata=FULL)",
    );
    if flavour == Flavour::MySql {
        if let Some(v) = var("binlog_row_value_options") {
            if !v.is_empty() {
                problems.push(format!(
                    "binlog_row_value_options is {v}: partial JSON updates cannot be applied to a full row; set binlog_row_value_options='' (SET GLOBAL and my.cnf)"
                ));
            }
        }
        if var("binlog_transaction_compression").as_deref() == Some("ON") {
            problems.push(
                "binlog_transaction_compression is ON: etcdsync does not read compressed transaction payloads; \
                 set binlog_transaction_compression=OFF (SET GLOBAL and my.cnf)"
                    .to_string(),
            );
        }
    }

    let privileges = global_privileges(&observed.grants);
    let has = |p: &str| privileges.iter().any(|g| g == "ALL PRIVILEGES" || g == p);
    let grant = |what: &str| {
        format!(
            "the user {} lacks {what}: GRANT {what} ON *.* TO {};",
            observed.user,
            quote_user(&observed.user)
        )
    };
    if !has("REPLICATION SLAVE") && !has("REPLICATION REPLICA") {
        problems.push(grant("REPLICATION SLAVE"));
    }
    let monitor = match flavour {
        Flavour::MariaDb => has("BINLOG MONITOR") || has("REPLICATION CLIENT"),
        Flavour::MySql => has("REPLICATION CLIENT"),
    };
    if !monitor {
        problems.push(grant(match flavour {
            Flavour::MariaDb => "BINLOG MONITOR",
            Flavour::MySql => "REPLICATION CLIENT",
        }));
    }
    let needs_lock = flavour == Flavour::MySql || config.snapshot_workers > 1;
    if needs_lock && config.snapshot != crate::config::SnapshotMode::Never && !has("RELOAD") {
        problems.push(format!(
            "{} (the snapshot takes a brief FLUSH TABLES WITH READ LOCK{})",
            grant("RELOAD"),
            if flavour == Flavour::MariaDb {
                "; or set source.snapshot_workers: 1 to snapshot without a lock"
            } else {
                ""
            }
        ));
    }
    let any_select = has("SELECT")
        || observed
            .grants
            .iter()
            .any(|g| g.to_ascii_uppercase().contains("SELECT") || g.contains("ALL PRIVILEGES"));
    if !any_select {
        problems.push(format!(
            "the user {} has no SELECT privilege: GRANT SELECT ON <database>.* TO {}; for each synced database",
            observed.user,
            quote_user(&observed.user)
        ));
    }
    problems
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
fn quote_user(user: &str) -> String {
    match user.rsplit_once('@') {
        Some((u, h)) => format!("'{u}'@'{h}'"),
        None => format!("'{user}'"),
    }
}

fn server_id_clash(config: &ValidMysql, what: &str) -> String {
    let origin = if config.server_id_explicit {
        "source.server_id"
    } else {
        "the server id derived from the pipeline name"
    };
    format!(
        "{origin} ({}) is already in use: {what}; set source.server_id to a number no other server or replica uses",
        config.server_id
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

/// Fails when another connected replica uses our server id. Our own previous connection may
/// still be registered for a moment after a restart, so a clash is re-checked for a few seconds.
async fn check_replica_ids(
    conn: &mut Conn,
    config: &ValidMysql,
    server: &ServerInfo,
) -> Result<()> {
    let statement = replicas_statement(server);
    for attempt in 0..6 {
        let rows: Vec<Row> = match conn.query(statement).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!(error = %e, statement, "cannot list replicas; skipping the server_id clash check");
                return Ok(());
            }
        };
        let clash = rows.into_iter().find_map(|mut row| {
            let id: Option<u32> = row.take(0);
            let host: Option<String> = row.take(1);
            (id == Some(config.server_id)).then(|| host.unwrap_or_default())
        });
        match clash {
            None => return Ok(()),
            Some(host) if attempt == 5 => {
                return Err(MysqlError::Prerequisite(format!(
                    "  - {}",
                    server_id_clash(
                        config,
                        &format!("a replica connected from `{host}` registered with it")
                    )
                )))
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MysqlConfig;

    fn config(workers: usize) -> ValidMysql {
        let yaml = format!(
            "url: mysql://u:p@h:3306/\ntables: {{ include: [\"a.*\"] }}\nsnapshot_workers: {workers}\n"
        );
        serde_yaml::from_str::<MysqlConfig>(&yaml)
            .expect("yaml")
            .validate_config("t")
            .expect("valid")
    }

    fn good() -> Observed {
        Observed {
            version: "10.11.6-MariaDB".into(),
            variables: [
                ("log_bin", "ON"),
                ("binlog_format", "ROW"),
                ("binlog_row_image", "FULL"),
                ("binlog_row_metadata", "FULL"),
                ("server_id", "1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            grants: vec![
                "GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `sync`@`%`".into(),
            ],
            user: "sync@%".into(),
        }
    }

    #[test]
    fn a_good_server_passes() {
        assert_eq!(
            problems(&good(), Flavour::MariaDb, &config(1)),
            Vec::<String>::new()
        );
        let mut all = good();
        all.grants = vec!["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost`".into()];
        assert!(problems(&all, Flavour::MariaDb, &config(4)).is_empty());
    }

    #[test]
    fn each_problem_names_its_fix() {
        let mut bad = good();
        bad.variables.insert("log_bin".into(), "OFF".into());
        bad.variables.insert("binlog_format".into(), "MIXED".into());
        bad.variables
            .insert("binlog_row_image".into(), "MINIMAL".into());
        bad.variables.remove("binlog_row_metadata");
        bad.grants = vec!["GRANT SELECT ON `app`.* TO `sync`@`%`".into()];
        let found = problems(&bad, Flavour::MariaDb, &config(2)).join("\n");
        for needle in [
            "log_bin = mysql-bin",
            "SET GLOBAL binlog_format=ROW",
            "SET GLOBAL binlog_row_image=FULL",
            "binlog_row_metadata is not supported",
            "GRANT REPLICATION SLAVE ON *.* TO 'sync'@'%'",
            "GRANT BINLOG MONITOR ON *.*",
            "GRANT RELOAD ON *.*",
        ] {
            assert!(found.contains(needle), "{needle} missing in:\n{found}");
        }
        assert!(!found.contains("no SELECT"), "{found}");
    }

    #[test]
    fn mysql_only_settings() {
        let mut mysql = good();
        mysql.version = "8.0.36".into();
        mysql.grants = vec![
            "GRANT SELECT, RELOAD, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO `s`@`%`".into(),
        ];
        assert!(problems(&mysql, Flavour::MySql, &config(1)).is_empty());
        mysql
            .variables
            .insert("binlog_transaction_compression".into(), "ON".into());
        mysql
            .variables
            .insert("binlog_row_value_options".into(), "PARTIAL_JSON".into());
        let found = problems(&mysql, Flavour::MySql, &config(1)).join("\n");
        assert!(
            found.contains("binlog_transaction_compression=OFF"),
            "{found}"
        );
        assert!(found.contains("binlog_row_value_options=''"), "{found}");
        // MySQL always snapshots under a brief global read lock.
        mysql.grants =
            vec!["GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO `s`@`%`".into()];
        let found = problems(&mysql, Flavour::MySql, &config(1)).join("\n");
        assert!(found.contains("GRANT RELOAD ON *.*"), "{found}");
    }

    #[test]
    fn versions_pick_statements() {
        let info = |flavour, version: &str| ServerInfo {
            flavour,
            version: version.into(),
            server_id: 1,
        };
        assert_eq!(
            version_numbers("10.11.6-MariaDB-0+deb12u1-log"),
            (10, 11, 6)
        );
        assert_eq!(version_numbers("8.4.0"), (8, 4, 0));
        assert_eq!(version_numbers("9"), (9, 0, 0));
        assert!(info(Flavour::MySql, "8.0.22").version_at_least(8, 0, 22));
        assert!(!info(Flavour::MySql, "8.0.21").version_at_least(8, 0, 22));
        assert_eq!(
            replicas_statement(&info(Flavour::MySql, "8.4.3")),
            "SHOW REPLICAS"
        );
        assert_eq!(
            replicas_statement(&info(Flavour::MySql, "5.7.44")),
            "SHOW SLAVE HOSTS"
        );
        assert_eq!(
            replicas_statement(&info(Flavour::MariaDb, "10.11.6-MariaDB")),
            "SHOW SLAVE HOSTS"
        );
    }

    #[test]
    fn flavours() {
        assert_eq!(
            flavour_of("10.11.6-MariaDB-0+deb12u1-log"),
            Flavour::MariaDb
        );
        assert_eq!(flavour_of("8.0.36"), Flavour::MySql);
    }
}
