//! Fault injection for integration tests (feature `test-hooks`): delay one streaming
//! transaction so the one after it reaches etcd first. Without the feature nothing is delayed.

#[cfg(feature = "test-hooks")]
mod hooks {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;

    /// Per checkpoint key: streaming transactions sent so far, which one to delay, and by how much.
    type Delays = HashMap<String, (u64, u64, Duration)>;

    fn delays() -> std::sync::MutexGuard<'static, Delays> {
        static DELAYS: OnceLock<Mutex<Delays>> = OnceLock::new();
        DELAYS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Delays the `nth` streaming transaction (from 1) written under `checkpoint_key` by `delay`
    /// before it is first sent.
    pub fn delay_stream_txn(checkpoint_key: &str, nth: u64, delay: Duration) {
        delays().insert(checkpoint_key.to_string(), (0, nth, delay));
    }

    pub(crate) fn stream_txn_delay(checkpoint_key: &str) -> Option<Duration> {
        let mut delays = delays();
        let (sent, nth, delay) = delays.get_mut(checkpoint_key)?;
        *sent += 1;
        (*sent == *nth).then_some(*delay)
    }
}

#[cfg(feature = "test-hooks")]
pub use hooks::delay_stream_txn;

/// Waits as a test asked before the first send of a streaming transaction.
#[cfg(feature = "test-hooks")]
pub(crate) async fn before_stream_txn(checkpoint_key: &str) {
    if let Some(delay) = hooks::stream_txn_delay(checkpoint_key) {
        tokio::time::sleep(delay).await;
    }
}

#[cfg(not(feature = "test-hooks"))]
pub(crate) async fn before_stream_txn(_checkpoint_key: &str) {}
