use super::*;
use crate::config::MysqlConfig;

fn config_yaml(extra: &str) -> ValidMysql {
    let yaml = format!("url: mysql://u:p@h:3306/\ntables: {{ include: [\"a.*\"] }}\n{extra}");
    serde_yaml::from_str::<MysqlConfig>(&yaml)
        .expect("yaml")
        .validate_config("t")
        .expect("valid")
}

fn config(workers: usize) -> ValidMysql {
    config_yaml(&format!("snapshot_workers: {workers}\n"))
}

/// Every failed verdict as start-up prints it.
fn problems(observed: &Observed, flavour: Flavour, config: &ValidMysql) -> Vec<String> {
    assess(observed, flavour, config)
        .iter()
        .filter(|v| !v.result.ok)
        .map(|v| problem_line(&v.result))
        .collect()
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
            ("expire_logs_days", "0.000000"),
            ("binlog_expire_logs_seconds", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        grants: vec!["GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `sync`@`%`".into()],
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
    let names: Vec<String> = assess(&good(), Flavour::MariaDb, &config(1))
        .into_iter()
        .map(|v| v.result.name)
        .collect();
    assert_eq!(
        names,
        [
            "server version",
            "log_bin",
            "binlog_format",
            "binlog_row_image",
            "binlog_row_metadata",
            "log_bin_compress",
            "server_id",
            "privilege REPLICATION SLAVE",
            "privilege BINLOG MONITOR",
            "privilege RELOAD",
            "privilege SELECT",
            "binlog retention"
        ]
    );
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
        "snapshot_workers: 1",
    ] {
        assert!(found.contains(needle), "{needle} missing in:\n{found}");
    }
    assert!(!found.contains("no SELECT"), "{found}");
    let mut minimal = good();
    minimal
        .variables
        .insert("binlog_row_metadata".into(), "MINIMAL".into());
    let found = problems(&minimal, Flavour::MariaDb, &config(1)).join("\n");
    assert!(
        found.contains("binlog_row_metadata: MINIMAL, etcdsync needs FULL")
            && found.contains("fix: SET GLOBAL binlog_row_metadata=FULL"),
        "{found}"
    );
    let mut none = good();
    none.grants = vec!["GRANT USAGE ON *.* TO `sync`@`%`".into()];
    let found = problems(&none, Flavour::MariaDb, &config(1)).join("\n");
    assert!(found.contains("GRANT SELECT ON <database>.*"), "{found}");
}

#[test]
fn versions_and_server_ids() {
    let mut old = good();
    old.version = "10.4.32-MariaDB".into();
    let found = problems(&old, Flavour::MariaDb, &config(1)).join("\n");
    assert!(
        found.contains("server version") && found.contains("MariaDB 10.5.0 or later"),
        "{found}"
    );
    let mut zero = good();
    zero.variables.insert("server_id".into(), "0".into());
    let found = problems(&zero, Flavour::MariaDb, &config(1)).join("\n");
    assert!(found.contains("SET GLOBAL server_id=1"), "{found}");
    let mut same = good();
    same.variables.insert("server_id".into(), "77".into());
    let found = problems(&same, Flavour::MariaDb, &config_yaml("server_id: 77\n")).join("\n");
    assert!(
        found.contains("source.server_id (77) is already in use: the server's own server_id is 77")
            && found.contains("set source.server_id to a number no other server"),
        "{found}"
    );
}

#[test]
fn connected_replicas_decide_the_server_id_verdict() {
    let config = config_yaml("server_id: 77\n");
    let base = || CheckResult::pass("server_id", "server 1; etcdsync registers as replica 77");
    assert!(replicas_verdict(&config, base(), &Replicas::Free).ok);
    let unknown = replicas_verdict(&config, base(), &Replicas::Unknown("denied".into()));
    assert!(
        unknown.ok && unknown.detail.contains("not checked"),
        "{unknown:?}"
    );
    let ours = replicas_verdict(
        &config,
        base(),
        &Replicas::Taken {
            host: crate::config::replica_host("t"),
        },
    );
    assert!(ours.ok && ours.detail.contains("this pipeline"), "{ours:?}");
    let other = replicas_verdict(
        &config,
        base(),
        &Replicas::Taken {
            host: "10.0.0.9".into(),
        },
    );
    assert!(!other.ok, "{other:?}");
    assert!(other
        .detail
        .contains("source.server_id (77) is already in use"));
    let failed = CheckResult::fail("server_id", "0", "set it");
    assert_eq!(
        replicas_verdict(&config, failed.clone(), &Replicas::Free),
        failed
    );
}

#[test]
fn binlog_retention() {
    let verdict = |vars: &[(&str, &str)], extra: &str| {
        let mut observed = good();
        for (k, v) in vars {
            observed.variables.insert(k.to_string(), v.to_string());
        }
        let all = assess(&observed, Flavour::MariaDb, &config_yaml(extra));
        let retention = all.last().expect("retention").clone();
        assert!(!retention.required, "advisory only");
        retention.result
    };
    let never = verdict(&[], "");
    assert!(
        never.ok && never.detail.contains("never purged"),
        "{never:?}"
    );
    let week = verdict(&[("expire_logs_days", "7.000000")], "");
    assert!(week.ok && week.detail.contains("7 days"), "{week:?}");
    let seconds = verdict(&[("binlog_expire_logs_seconds", "172800")], "");
    assert!(
        seconds.ok && seconds.detail.contains("2 days"),
        "{seconds:?}"
    );
    let short = verdict(&[("binlog_expire_logs_seconds", "3600")], "");
    assert!(!short.ok && short.detail.contains("1 hour"), "{short:?}");
    assert!(short
        .fix
        .as_deref()
        .is_some_and(|f| f.contains("binlog_expire_logs_seconds=604800")
            && f.contains("snapshot: when_needed")));
    let recovers = verdict(
        &[("binlog_expire_logs_seconds", "3600")],
        "snapshot: when_needed\n",
    );
    assert!(recovers.ok, "{recovers:?}");
    let off = verdict(
        &[
            ("binlog_expire_logs_seconds", "3600"),
            ("binlog_expire_logs_auto_purge", "OFF"),
        ],
        "",
    );
    assert!(off.ok && off.detail.contains("never"), "{off:?}");
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
    assert!(!found.contains("snapshot_workers"), "{found}");
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

#[test]
fn compressed_binlog_is_refused_on_mariadb() {
    let mut compressed = good();
    compressed
        .variables
        .insert("log_bin_compress".into(), "ON".into());
    let found = problems(&compressed, Flavour::MariaDb, &config(1)).join("\n");
    assert!(
        found.contains("log_bin_compress: ON")
            && found.contains("SET GLOBAL log_bin_compress=OFF")
            && found.contains("log_bin_compress = OFF` under [mysqld]"),
        "{found}"
    );
    let names: Vec<String> = assess(&good(), Flavour::MySql, &config(1))
        .into_iter()
        .map(|v| v.result.name)
        .collect();
    assert!(
        !names.iter().any(|n| n == "log_bin_compress"),
        "MariaDB only"
    );
}

fn column(table: &str, column: &str, charset: &str) -> ColumnCharset {
    let (schema, table) = table.split_once('.').expect("db.table");
    ColumnCharset {
        table: TableId::new(schema, table),
        column: column.into(),
        charset: charset.into(),
        collation: format!("{charset}_general_ci"),
    }
}

#[test]
fn unsupported_charsets_of_kept_columns_are_refused() {
    let selection: TableSelection =
        serde_yaml::from_str("{ include: [\"a.*\"], exclude_columns: { \"a.t\": [skipped] } }")
            .expect("selection");
    let columns = [
        column("a.t", "name", "utf8mb4"),
        column("a.t", "ru", "cp1251"),
        column("a.t", "zh", "gbk"),
        column("a.t", "u", "ucs2"),
        column("a.t", "tw", "big5"),
        column("a.t", "skipped", "dec8"),
        column("b.other", "x", "swe7"),
    ];
    let verdicts = charset_verdicts(&columns, &selection);
    assert_eq!(verdicts.len(), 1, "{verdicts:#?}");
    let v = &verdicts[0];
    assert!(!v.ok);
    assert_eq!(v.name, "charset of a.t.tw");
    assert!(v.detail.contains("big5 (big5_general_ci)"), "{}", v.detail);
    let fix = v.fix.as_deref().unwrap_or_default();
    assert!(
        fix.contains("ALTER TABLE `a`.`t` CONVERT TO CHARACTER SET utf8mb4")
            && fix.contains("MODIFY `tw`"),
        "{fix}"
    );
    let fine = charset_verdicts(&columns[..4], &selection);
    assert!(fine.len() == 1 && fine[0].ok, "{fine:#?}");
}

fn key(child: &str, name: &str, update: &str, delete: &str) -> ForeignKey {
    let (schema, table) = child.split_once('.').expect("db.table");
    ForeignKey {
        child: TableId::new(schema, table),
        name: name.into(),
        parent: TableId::new(schema, "parent"),
        update_rule: update.into(),
        delete_rule: delete.into(),
    }
}

#[test]
fn unlogged_cascades_are_refused_unless_allowed() {
    let selection = config(1).tables;
    let keys = [
        key("a.child", "fk_cascade", "RESTRICT", "CASCADE"),
        key("a.child", "fk_plain", "RESTRICT", "NO ACTION"),
        key("a.other", "fk_null", "SET NULL", "RESTRICT"),
        key("b.unselected", "fk_x", "CASCADE", "CASCADE"),
    ];
    let verdicts = cascade_verdicts(&keys, &selection, false);
    let names: Vec<&str> = verdicts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "foreign key a.child.fk_cascade",
            "foreign key a.other.fk_null"
        ]
    );
    assert!(verdicts.iter().all(|v| !v.ok));
    assert!(
        verdicts[0].detail.contains("schema `a`, table `child`")
            && verdicts[0].detail.contains("ON DELETE CASCADE"),
        "{}",
        verdicts[0].detail
    );
    assert!(verdicts[1].detail.contains("ON UPDATE SET NULL"));
    let fix = verdicts[0].fix.as_deref().unwrap_or_default();
    assert!(
        fix.contains("DROP FOREIGN KEY `fk_cascade`")
            && fix.contains("allow_unlogged_cascades: true"),
        "{fix}"
    );
    let allowed = cascade_verdicts(&keys, &selection, true);
    assert_eq!(allowed.len(), 2);
    assert!(allowed.iter().all(|v| v.ok && v.detail.contains("lossy")));
    let none = cascade_verdicts(&keys[1..2], &selection, false);
    assert!(none.len() == 1 && none[0].ok && none[0].name == "foreign keys");
}
