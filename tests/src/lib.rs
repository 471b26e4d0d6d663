//! Cross-plugin integration tests against real servers.

pub mod common;
pub mod mysql;
pub mod pg;

/// Logs of in-process pipelines to the test's output when `RUST_LOG` is set (once per process).
pub fn logs_from_env() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}
