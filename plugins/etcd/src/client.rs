//! The etcd connection (TLS, username/password), requests with retry and capped exponential
//! backoff (DESIGN §4: unavailable, leader change, NOSPACE, timeouts), and the classification of
//! etcd errors into retry / stop / fix-the-config.

use crate::config::Settings;
use crate::error::EtcdError;
use crate::events;
use etcd_client::{
    Client, Compare, ConnectOptions, GetOptions, GetResponse, KvClient, Txn, TxnOp, TxnResponse,
};
use etcdsync_core::ErrorKind;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The keys under a prefix, a page at a time, in key order.
#[derive(Debug)]
pub struct Pages {
    from: Option<Vec<u8>>,
    options: GetOptions,
}

impl Pages {
    /// Pages of `limit` keys under `prefix`; `keys_only` leaves the values out.
    ///
    /// No revision filter: etcd reads the whole remaining range for every page of a request
    /// that filters by revision (it drops the limit), so callers filter what a page returns.
    pub fn of_prefix(prefix: &str, limit: i64, keys_only: bool) -> Self {
        let options = GetOptions::new()
            .with_range(etcdsync_core::encode::key::prefix_range_end(prefix))
            .with_limit(limit);
        Self {
            from: Some(prefix.as_bytes().to_vec()),
            options: if keys_only {
                options.with_keys_only()
            } else {
                options
            },
        }
    }

    /// The next page; `None` after the last.
    pub async fn next(
        &mut self,
        client: &EtcdClient,
        op: &str,
        shutdown: Option<&CancellationToken>,
        max_attempts: Option<u32>,
    ) -> Result<Option<GetResponse>, EtcdError> {
        let Some(from) = self.from.take() else {
            return Ok(None);
        };
        let response = client
            .get(op, from, Some(self.options.clone()), shutdown, max_attempts)
            .await?;
        if response.more() {
            self.from = response.kvs().last().map(|kv| {
                let mut next = kv.key().to_vec();
                next.push(0);
                next
            });
        }
        Ok(Some(response))
    }
}

/// Largest response accepted (pages of keys, a row's value); etcd-client's default is 4 MiB.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// First pause before retrying a failed request; it doubles up to `retry_max_backoff`.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// A connected etcd client; cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct EtcdClient {
    client: Client,
    max_backoff: Duration,
    user: Option<String>,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl EtcdClient {
    /// Connects (and authenticates, when a user is configured).
    pub async fn connect(settings: &Settings) -> Result<Self, EtcdError> {
        let options = connect_options(settings, true)?;
        let user = settings.credentials.as_ref().map(|(user, _)| user.clone());
        let client = Client::connect(&settings.endpoints, Some(options))
            .await
            .map_err(|e| {
                classify(
                    &format!("connect to {}", settings.endpoints.join(",")),
                    e,
                    user.as_deref(),
                )
            })?;
        Ok(Self {
            client,
            max_backoff: settings.retry_max_backoff,
            user,
        })
    }

    /// Runs `request` until it succeeds, retrying transient failures with backoff. Gives up with
    /// [`EtcdError::Shutdown`] when `shutdown` is cancelled, and after `max_attempts` if given.
    pub async fn retry<T, F, Fut>(
        &self,
        op: &str,
        shutdown: Option<&CancellationToken>,
        max_attempts: Option<u32>,
        mut request: F,
    ) -> Result<T, EtcdError>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut backoff = INITIAL_BACKOFF;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let kv = self
                .client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES);
            let error = match request(kv).await {
                Ok(value) => {
                    if attempt > 1 {
                        tracing::info!(op, attempt, "etcd request succeeded after retrying");
                    }
                    return Ok(value);
                }
                Err(error) => classify(op, error, self.user.as_deref()),
            };
            if error.kind() != ErrorKind::Transient
                || max_attempts.is_some_and(|max| attempt >= max)
            {
                return Err(error);
            }
            if shutdown.is_some_and(CancellationToken::is_cancelled) {
                return Err(EtcdError::Shutdown);
            }
            events::retry(op, attempt, &error, error.kind(), backoff);
            if error.to_string().contains("auth token") && self.user.is_some() {
                let _ = self.client.refresh_token().await;
            }
            match shutdown {
                Some(token) => tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = token.cancelled() => return Err(EtcdError::Shutdown),
                },
                None => tokio::time::sleep(backoff).await,
            }
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }

    /// Applies `compares ? ops : nothing` with retry; fails with [`EtcdError::CompareFailed`]
    /// when a compare does not hold.
    pub async fn txn(
        &self,
        op: &str,
        compares: &[Compare],
        ops: Vec<TxnOp>,
        shutdown: &CancellationToken,
    ) -> Result<TxnResponse, EtcdError> {
        self.txn_with(op, compares, || ops.clone(), shutdown).await
    }

    /// [`Self::txn`] with the operations built anew for each attempt (from a batch the caller
    /// keeps anyway), so a large transaction is not held twice.
    pub async fn txn_with(
        &self,
        op: &str,
        compares: &[Compare],
        build: impl Fn() -> Vec<TxnOp>,
        shutdown: &CancellationToken,
    ) -> Result<TxnResponse, EtcdError> {
        let response = self
            .txn_or_else(op, compares, build, Vec::new(), shutdown)
            .await?;
        if !response.succeeded() {
            return Err(EtcdError::CompareFailed(op.to_string()));
        }
        Ok(response)
    }

    /// `compares ? build() : otherwise` with retry; the caller reads whether it succeeded.
    pub async fn txn_or_else(
        &self,
        op: &str,
        compares: &[Compare],
        build: impl Fn() -> Vec<TxnOp>,
        otherwise: Vec<TxnOp>,
        shutdown: &CancellationToken,
    ) -> Result<TxnResponse, EtcdError> {
        self.retry(op, Some(shutdown), None, |mut kv| {
            let mut txn = Txn::new();
            if !compares.is_empty() {
                txn = txn.when(compares.to_vec());
            }
            let mut txn = txn.and_then(build());
            if !otherwise.is_empty() {
                txn = txn.or_else(otherwise.clone());
            }
            async move { kv.txn(txn).await }
        })
        .await
    }

    /// A get with retry.
    pub async fn get(
        &self,
        op: &str,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
        shutdown: Option<&CancellationToken>,
        max_attempts: Option<u32>,
    ) -> Result<GetResponse, EtcdError> {
        let key = key.into();
        self.retry(op, shutdown, max_attempts, |mut kv| {
            let key = key.clone();
            let options = options.clone();
            async move { kv.get(key, options).await }
        })
        .await
    }

    /// The underlying etcd-client, for what this wrapper does not cover.
    pub fn inner(&self) -> &Client {
        &self.client
    }
}

/// The connection options of `settings`: timeouts, keep-alive, TLS for https endpoints, and the
/// user when `with_user` (the check connects without it first, to tell reachability from auth).
pub(crate) fn connect_options(
    settings: &Settings,
    with_user: bool,
) -> Result<ConnectOptions, EtcdError> {
    let mut options = ConnectOptions::new()
        .with_timeout(settings.request_timeout)
        .with_connect_timeout(settings.connect_timeout)
        .with_keep_alive(Duration::from_secs(10), settings.request_timeout)
        .with_require_leader(true);
    if let (true, Some((user, password))) = (with_user, &settings.credentials) {
        if let Some(plain) = settings.endpoints.iter().find(|e| e.starts_with("http://")) {
            warn_credentials_in_clear(plain);
        }
        options = options
            .with_user(user.clone(), password.expose())
            .with_auto_token_refresh(true);
    }
    if settings.endpoints.iter().all(|e| e.starts_with("https://")) {
        options = options.with_tls(tls_options(settings)?);
    }
    Ok(options)
}

/// etcd credentials to an `http://` endpoint cross the network unencrypted: said once.
fn warn_credentials_in_clear(endpoint: &str) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(endpoint, "sink.username and sink.password go to an http:// endpoint unencrypted; use https:// endpoints (with sink.tls) so the password and the data are protected");
    }
}

/// TLS options: the CA (or system roots), the optional client identity, the server name.
fn tls_options(settings: &Settings) -> Result<etcd_client::TlsOptions, EtcdError> {
    let mut tls = etcd_client::TlsOptions::new();
    let config = settings.tls.clone().unwrap_or_default();
    let read = |field: &'static str, path: &str| {
        std::fs::read(path).map_err(|source| EtcdError::TlsFile {
            field,
            path: path.to_string(),
            source,
        })
    };
    match &config.ca {
        Some(path) => {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read("ca", path)?))
        }
        None => tls = tls.with_native_roots(),
    }
    if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
        tls = tls.identity(etcd_client::Identity::from_pem(
            read("cert", cert)?,
            read("key", key)?,
        ));
    }
    if let Some(domain) = &config.domain {
        tls = tls.domain_name(domain.clone());
    }
    Ok(tls)
}

/// Text of an error and its causes, without gRPC metadata.
fn describe(error: &etcd_client::Error) -> String {
    let mut text = match error {
        etcd_client::Error::GRpcStatus(status) => {
            format!("{:?}: {}", status.code(), status.message())
        }
        other => other.to_string(),
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Decides whether an etcd error is worth retrying, and what the user should do about it.
pub fn classify(op: &str, error: etcd_client::Error, user: Option<&str>) -> EtcdError {
    let detail = describe(&error);
    let (kind, hint) = classify_text(&error, &detail.to_lowercase(), user);
    EtcdError::Request {
        op: op.to_string(),
        kind,
        detail,
        hint,
        source: error,
    }
}

fn classify_text(
    error: &etcd_client::Error,
    text: &str,
    user: Option<&str>,
) -> (ErrorKind, String) {
    use etcd_client::Error as E;
    use tonic::Code;
    let config = |hint: &str| (ErrorKind::Config, format!("; {hint}"));
    if text.contains("request is too large") || text.contains("larger than max") {
        return config("lower sink.max_request_bytes to at most etcd's --max-request-bytes");
    }
    if text.contains("too many operations in txn") {
        return config("lower sink.max_txn_ops to at most etcd's --max-txn-ops");
    }
    if text.contains("authentication failed") || text.contains("invalid user id or password") {
        return config("check sink.username and sink.password");
    }
    if text.contains("authentication is not enabled") {
        return config("etcd has authentication disabled: remove sink.username and sink.password, or enable auth in etcd");
    }
    if text.contains("user name is empty") || text.contains("user name not found") {
        return config("etcd requires authentication: set sink.username and sink.password");
    }
    if text.contains("permission denied") {
        let who = user
            .map(|u| format!("user `{u}`"))
            .unwrap_or_else(|| "the etcd user".into());
        return config(&format!(
            "grant {who} a role with readwrite permission on both sink.prefix and sink.meta_prefix \
             (etcdctl role grant-permission ROLE --prefix=true readwrite PREFIX/)"
        ));
    }
    if text.contains("certificate") || text.contains("handshake") || text.contains("unknownissuer")
    {
        return config("check sink.tls (ca, cert, key, domain) against etcd's certificates");
    }
    let transient = (ErrorKind::Transient, String::new());
    match error {
        E::GRpcStatus(status) => match status.code() {
            Code::ResourceExhausted if text.contains("space exceeded") => (
                ErrorKind::Transient,
                "; etcd's NOSPACE alarm is raised: compact and defragment etcd (or raise --quota-backend-bytes), \
                 then `etcdctl alarm disarm`; the sink retries until then"
                    .into(),
            ),
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
            | Code::Unauthenticated => transient,
            Code::InvalidArgument if text.contains("leader") || text.contains("timed out") => transient,
            _ => (ErrorKind::Fatal, String::new()),
        },
        E::TransportError(_) | E::IoError(_) => transient,
        E::InvalidArgs(_) | E::InvalidUri(_) | E::EndpointError(_) => config("check sink.endpoints"),
        _ => (ErrorKind::Fatal, String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    fn kind_and_message(error: etcd_client::Error) -> (ErrorKind, String) {
        let error = classify("apply a data transaction", error, Some("app"));
        (error.kind(), error.to_string())
    }

    #[test]
    fn transient_etcd_errors_are_retried() {
        for status in [
            Status::unavailable("etcdserver: leader changed"),
            Status::unavailable("etcdserver: request timed out"),
            Status::unavailable(
                "error trying to connect: tcp connect error: Connection refused (os error 111)",
            ),
            Status::deadline_exceeded("context deadline exceeded"),
            Status::resource_exhausted("etcdserver: too many requests"),
            Status::unknown("h2 protocol error: error reading a body from connection"),
            Status::unauthenticated("etcdserver: invalid auth token"),
        ] {
            let (kind, message) = kind_and_message(etcd_client::Error::GRpcStatus(status));
            assert_eq!(kind, ErrorKind::Transient, "{message}");
        }
        let (kind, message) = kind_and_message(etcd_client::Error::GRpcStatus(
            Status::resource_exhausted("etcdserver: mvcc: database space exceeded"),
        ));
        assert_eq!(kind, ErrorKind::Transient);
        assert!(
            message.contains("NOSPACE") && message.contains("alarm disarm"),
            "{message}"
        );
    }

    #[test]
    fn configuration_problems_name_the_key_to_fix() {
        for (status, key) in [
            (
                Status::invalid_argument("etcdserver: request is too large"),
                "sink.max_request_bytes",
            ),
            (
                Status::resource_exhausted(
                    "grpc: received message larger than max (2000000 vs. 1000000)",
                ),
                "sink.max_request_bytes",
            ),
            (
                Status::invalid_argument("etcdserver: too many operations in txn request"),
                "sink.max_txn_ops",
            ),
            (
                Status::permission_denied("etcdserver: permission denied"),
                "sink.meta_prefix",
            ),
            (
                Status::invalid_argument(
                    "etcdserver: authentication failed, invalid user ID or password",
                ),
                "sink.password",
            ),
            (
                Status::failed_precondition("etcdserver: authentication is not enabled"),
                "sink.username",
            ),
            (
                Status::unavailable("invalid peer certificate: UnknownIssuer"),
                "sink.tls",
            ),
        ] {
            let (kind, message) = kind_and_message(etcd_client::Error::GRpcStatus(status));
            assert_eq!(kind, ErrorKind::Config, "{message}");
            assert!(message.contains(key), "{message}");
        }
        let (kind, message) = kind_and_message(etcd_client::Error::GRpcStatus(
            Status::permission_denied("etcdserver: permission denied"),
        ));
        assert!(
            kind == ErrorKind::Config && message.contains("user `app`"),
            "{message}"
        );
        let (kind, _) = kind_and_message(etcd_client::Error::InvalidArgs("empty endpoints".into()));
        assert_eq!(kind, ErrorKind::Config);
    }

    #[test]
    fn other_errors_stop_the_sink() {
        let (kind, message) = kind_and_message(etcd_client::Error::GRpcStatus(
            Status::invalid_argument("etcdserver: duplicate key given in txn request"),
        ));
        assert_eq!(kind, ErrorKind::Fatal, "{message}");
        assert!(
            message.starts_with("etcd apply a data transaction failed"),
            "{message}"
        );
    }
}
