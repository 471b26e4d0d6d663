//! Secrets against real PostgreSQL, MariaDB and etcd (issue 6): no password, however hostile
//! (`/ ? @ #`, `%`, percent-encoded, numeric), ever appears in the logs or output of `run`,
//! `check`, `status`, `verify` or config errors, and etcd credentials over plain `http://` are
//! warned about without being shown.
#![cfg(feature = "integration-tests")]

mod common;

use common::*;
use etcdsync_tests::pg::{env, unique};
use serde_json::Value as Json;
use std::time::Duration;

// ---- logs -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_appear_in_logs() {
    let pipe = Pipe::new("sec").await;
    pipe.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one');")
        .await;
    // PostgreSQL here trusts local connections, so any password is accepted and carried
    // through every connection the source makes.
    let pg_password = format!("PgPw-{}", unique("s3cret"));
    let etcd_password = format!("EtcdPw-{}", unique("s3cret"));
    let url = pipe.db.url.replacen(
        "://etcdsync:etcdsync@",
        "://etcdsync:${OPS_PG_PASSWORD}@",
        1,
    );
    assert!(url.contains("${OPS_PG_PASSWORD}"));
    let envs = [
        ("OPS_PG_PASSWORD", pg_password.as_str()),
        ("OPS_ETCD_PASSWORD", etcd_password.as_str()),
        ("RUST_LOG", "debug"),
    ];
    let leaked = |what: &str, text: &str| {
        for secret in [&pg_password, &etcd_password] {
            assert!(
                !text.contains(secret.as_str()),
                "{what} shows a password:\n{text}"
            );
        }
        // The percent-encoded forms too.
        assert!(!text.contains("s3cret"), "{what} shows a password:\n{text}");
    };

    // 1. A whole run at debug level with JSON logs: snapshot, a change, SIGTERM.
    let config = pipe.config(
        "json.yaml",
        Parts {
            url: Some(&url),
            top: "log:\n  format: json\n  level: debug\n",
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &envs);
    pipe.wait_synced("t", "snapshot").await;
    pipe.sql("INSERT INTO t VALUES (2, 'two')").await;
    pipe.wait_synced("t", "stream").await;
    run.signal("TERM");
    assert!(
        run.wait(WAIT).await.is_some_and(|s| s.success()),
        "{}",
        run.stderr()
    );
    let stderr = run.stderr();
    assert!(
        stderr.lines().count() > 10,
        "debug logs expected:\n{stderr}"
    );
    assert!(
        stderr
            .lines()
            .all(|l| serde_json::from_str::<Json>(l).is_ok()),
        "not JSON lines:\n{stderr}"
    );
    leaked("a JSON debug run", &stderr);

    // 2. Text logs at debug level against etcd with TLS and authentication, with a wrong
    // password: the failure is reported without the password.
    let tls_sink = format!(
        "  username: etcdsync\n  password: \"${{OPS_ETCD_PASSWORD}}\"\n  tls: {{ ca: \"{}\" }}\n  connect_timeout: 3s\n  request_timeout: 3s\n",
        env("ETCDSYNC_TEST_ETCD_TLS_CA")
    );
    let tls_endpoint = env("ETCDSYNC_TEST_ETCD_TLS");
    let config = pipe.config(
        "text.yaml",
        Parts {
            url: Some(&url),
            endpoint: Some(&tls_endpoint),
            sink_extra: &tls_sink,
            top: "log:\n  format: text\n  level: debug\nshutdown_timeout: 5s\n",
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &envs);
    if run.wait(Duration::from_secs(8)).await.is_none() {
        run.signal("TERM");
        run.wait(WAIT).await.expect("stopped");
    }
    let stderr = run.stderr();
    assert!(!stderr.is_empty());
    leaked("a text debug run with a refused etcd password", &stderr);

    // 3. `check` and `status` with both passwords.
    let output = etcdsync(&["check", "-c", path(&config)], &envs).await;
    leaked("check", &text(&output));
    let output = etcdsync(&["status", "-c", path(&config)], &envs).await;
    leaked("status", &text(&output));
}

/// Passwords with `/ ? @ #` and `%` — raw as `${VAR}` inserts them, and percent-encoded — and a
/// numeric etcd password, through `run` (trace-level JSON logs, connection retries), `check`,
/// `status`, `verify`, config errors and a MySQL source: never shown anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_passwords_are_never_shown() {
    let pipe = Pipe::new("sec2").await;
    pipe.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one');")
        .await;
    // One marker inside every password: found nowhere else.
    let tag = format!(
        "Zq{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() % 1_000_000_000_000)
    );
    let raw_pg = format!("Pg/Pw?{tag}");
    let numeric_etcd: String = format!("9{}", &tag[2..]);
    let shown_nowhere = |what: &str, text: &str| {
        assert!(!text.contains(&tag), "{what} shows a password:\n{text}");
        assert!(
            !text.contains(&tag[2..]),
            "{what} shows the numeric password:\n{text}"
        );
    };
    let raw_url = pipe
        .db
        .url
        .replacen("://etcdsync:etcdsync@", "://etcdsync:${SEC_PG}@", 1);
    let envs = [
        ("SEC_PG", raw_pg.as_str()),
        ("SEC_ETCD", numeric_etcd.as_str()),
        ("RUST_LOG", "trace"),
    ];

    // A whole run at trace level with JSON logs, then check, status and verify.
    let config = pipe.config(
        "trace.yaml",
        Parts {
            url: Some(&raw_url),
            top: "log:\n  format: json\n  level: trace\n",
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &envs);
    pipe.wait_synced("t", "snapshot with a raw hostile password")
        .await;
    run.signal("TERM");
    assert!(
        run.wait(WAIT).await.is_some_and(|s| s.success()),
        "{}",
        run.stderr()
    );
    shown_nowhere("a trace-level JSON run", &run.stderr());
    for command in ["check", "status", "verify"] {
        let output = etcdsync(&[command, "-c", path(&config)], &envs).await;
        shown_nowhere(command, &text(&output));
    }

    // Connection retries against a closed port: a percent-encoded password, one given as a
    // `password=` parameter, and one with a raw `#` and `%`.
    let encoded = format!("Enc%23Pw%2F{tag}%3F%40%25");
    for (file, closed) in [
        (
            "retry.yaml",
            format!("postgres://etcdsync:{encoded}@127.0.0.1:1/nowhere"),
        ),
        (
            "retry-param.yaml",
            format!("postgres://etcdsync@127.0.0.1:1/nowhere?sslmode=disable&password=Pa{tag}"),
        ),
        (
            "retry-raw.yaml",
            format!("postgres://etcdsync:A#b%{tag}@127.0.0.1:1/nowhere"),
        ),
    ] {
        let config = pipe.config(
            file,
            Parts {
                url: Some(&closed),
                top: "log:\n  format: text\n  level: trace\nshutdown_timeout: 5s\n",
                ..Parts::default()
            },
        );
        let mut run = Run::start(&config, &envs);
        tokio::time::sleep(Duration::from_secs(4)).await;
        run.signal("TERM");
        let _ = run.wait(WAIT).await;
        let stderr = run.stderr();
        assert!(
            stderr.contains("127.0.0.1:1"),
            "retries expected:\n{stderr}"
        );
        shown_nowhere("connection retries", &stderr);
        let output = etcdsync(&["check", "-c", path(&config)], &envs).await;
        shown_nowhere("check of an unreachable server", &text(&output));
    }

    // Passwords the URL parser would split, refused without being shown: a raw `@` (then `/`),
    // a raw `&` inside a `password=` value; and a literal numeric etcd password next to a config
    // error.
    let numeric_literal =
        format!("  username: etcdsync\n  password: {numeric_etcd}\n  max_txn_ops: -5\n");
    for (file, url, sink_extra) in [
        (
            "raw-at.yaml",
            format!("postgres://etcdsync:Ab@Se/{tag}@127.0.0.1:1/x"),
            "",
        ),
        (
            "raw-amp.yaml",
            format!("postgres://etcdsync@127.0.0.1:1/x?password=Ab&{tag}"),
            "",
        ),
        (
            "numeric.yaml",
            "postgres://etcdsync@127.0.0.1:1/x".to_string(),
            numeric_literal.as_str(),
        ),
    ] {
        let config = pipe.config(
            file,
            Parts {
                url: Some(&url),
                sink_extra,
                ..Parts::default()
            },
        );
        for command in ["check", "run"] {
            let output = etcdsync(&[command, "-c", path(&config)], &envs).await;
            assert!(!output.status.success(), "{file}: {}", text(&output));
            shown_nowhere(&format!("{command} of {file}"), &text(&output));
        }
    }

    // Config errors: a URL that does not parse, and a bad key next to a numeric etcd password.
    let unparsable = format!("postgres://etcdsync:Bad%zz{tag}@127.0.0.1:1/x?port=notaport");
    let config = pipe.config(
        "bad.yaml",
        Parts {
            url: Some(&unparsable),
            sink_extra: "  username: etcdsync\n  password: ${SEC_ETCD}\n  max_txn_ops: -5\n",
            ..Parts::default()
        },
    );
    for command in ["check", "run"] {
        let output = etcdsync(&[command, "-c", path(&config)], &envs).await;
        assert!(!output.status.success(), "{}", text(&output));
        shown_nowhere(&format!("{command} with config errors"), &text(&output));
    }

    // A numeric etcd password refused by the TLS etcd.
    let tls_sink = format!(
        "  username: etcdsync\n  password: ${{SEC_ETCD}}\n  tls: {{ ca: \"{}\" }}\n  connect_timeout: 3s\n  request_timeout: 3s\n",
        env("ETCDSYNC_TEST_ETCD_TLS_CA")
    );
    let tls_endpoint = env("ETCDSYNC_TEST_ETCD_TLS");
    let config = pipe.config(
        "etcdpw.yaml",
        Parts {
            endpoint: Some(&tls_endpoint),
            sink_extra: &tls_sink,
            top: "log:\n  format: json\n  level: trace\nshutdown_timeout: 5s\n",
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &envs);
    if run.wait(Duration::from_secs(8)).await.is_none() {
        run.signal("TERM");
        run.wait(WAIT).await.expect("stopped");
    }
    shown_nowhere("a run with a refused numeric etcd password", &run.stderr());
    let output = etcdsync(&["check", "-c", path(&config)], &envs).await;
    shown_nowhere("check with a refused etcd password", &text(&output));

    // A MySQL source whose user has a hostile password (percent-encoded in the URL).
    let admin = mysql_async::Opts::from_url(&env("ETCDSYNC_TEST_MYSQL_ADMIN")).expect("admin url");
    let mut conn = mysql_async::Conn::new(admin).await.expect("mysql admin");
    let user = format!("sec{}", &tag[2..8]);
    let my_password = format!("My/Pw?{tag}@#");
    use mysql_async::prelude::Queryable as _;
    conn.query_drop(format!(
        "CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{my_password}'; \
         GRANT SELECT, RELOAD, REPLICATION CLIENT, REPLICATION SLAVE ON *.* TO '{user}'@'%'"
    ))
    .await
    .expect("mysql user");
    let my_url = env("ETCDSYNC_TEST_MYSQL").replacen(
        "://etcdsync:etcdsync@",
        &format!("://{user}:My%2FPw%3F{tag}%40%23@"),
        1,
    );
    let yaml = format!(
        "name: {name}\nsource:\n  type: mysql\n  url: \"{my_url}/\"\n  tables: {{ include: [\"nosuchdb.*\"] }}\nsink:\n  type: etcd\n  endpoints: [\"{etcd}\"]\n  prefix: {data}-my\n  meta_prefix: {meta}-my\nlog:\n  format: json\n  level: trace\nshutdown_timeout: 5s\n",
        name = pipe.name,
        etcd = env("ETCDSYNC_TEST_ETCD"),
        data = pipe.data,
        meta = pipe.meta,
    );
    let config = pipe.dir.join("mysql.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let output = etcdsync(&["check", "-c", path(&config)], &envs).await;
    shown_nowhere("check of a MySQL source", &text(&output));
    let mut run = Run::start(&config, &envs);
    tokio::time::sleep(Duration::from_secs(4)).await;
    run.signal("TERM");
    let _ = run.wait(WAIT).await;
    shown_nowhere("a trace-level MySQL run", &run.stderr());
    conn.query_drop(format!("DROP USER IF EXISTS '{user}'@'%'"))
        .await
        .expect("drop user");
}

/// etcd credentials over `http://` are sent in clear: the run says so (once), without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_credentials_over_plain_http_warn() {
    let pipe = Pipe::new("plainpw").await;
    pipe.sql("CREATE TABLE t (id int PRIMARY KEY)").await;
    let config = pipe.config(
        "plain.yaml",
        Parts {
            sink_extra: "  username: someone\n  password: PlainPw-4471\n  connect_timeout: 2s\n  request_timeout: 2s\n",
            top: "shutdown_timeout: 5s\n",
            ..Parts::default()
        },
    );
    let mut run = Run::start(&config, &[]);
    if run.wait(Duration::from_secs(10)).await.is_none() {
        run.signal("TERM");
        run.wait(WAIT).await.expect("stopped");
    }
    let stderr = run.stderr();
    assert_eq!(
        stderr
            .matches("go to an http:// endpoint unencrypted")
            .count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("PlainPw-4471"), "{stderr}");
}
