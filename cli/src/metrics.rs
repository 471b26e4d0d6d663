//! The `metrics.listen` HTTP server of `etcdsync run` (hyper 1): `/metrics` (Prometheus text
//! of `telemetry::get()`), `/healthz` (200 while the process runs) and `/readyz` (200 only while
//! streaming with replication lag below `metrics.ready_max_lag`, else 503 and the reason).
//!
//! Limits against clients that hold connections (docs/operations.md, "Security"): request
//! headers must arrive within [`HEADER_READ_TIMEOUT`] (also the wait for a kept-alive
//! connection's next request), a connection on which no byte moves for [`IDLE_TIMEOUT`] is
//! closed, and at most [`MAX_CONNECTIONS`] are open at once. A new connection beyond the cap
//! takes the place of the one that has waited longest for a request, so a client that sends its
//! request at once (a probe of `/healthz`) is answered even while others hold every slot.

use bytes::Bytes;
use etcdsync_core::telemetry::{self, Phase};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Most connections open at once; beyond it a new connection replaces the one that has waited
/// longest for a request (or is closed when every connection is inside a request).
pub const MAX_CONNECTIONS: usize = 16;

/// A request's headers must be complete within this after the connection opens or the previous
/// response; a kept-alive connection without a next request is closed after it too.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection on which no byte is read or written for this long is closed (a client that
/// stops reading its response).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head buffered per connection, bytes.
const MAX_REQUEST_BUFFER: usize = 16 * 1024;

/// At most one "every slot is taken" warning per this interval.
const FULL_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Binds `listen` now (so a bad address fails before the pipeline starts) and serves until
/// `stop` is cancelled.
pub async fn start(
    listen: &str,
    ready_max_lag: Duration,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("at `metrics.listen`: cannot listen on {listen}: {e}"))?;
    let address = listener.local_addr()?;
    if !address.ip().is_loopback() {
        tracing::warn!(
            %address,
            "the metrics server listens on a non-loopback address: other hosts can read /metrics (table names, \
             positions, lag); set metrics.listen to 127.0.0.1:PORT, or restrict access with a firewall"
        );
    }
    tracing::info!(
        %address,
        max_connections = MAX_CONNECTIONS,
        "serving /metrics, /healthz and /readyz"
    );
    let slots = Arc::new(Slots::default());
    let handle = tokio::spawn(serve(listener, ready_max_lag, slots, stop));
    Ok((address, handle))
}

/// The open connections: each waits for a request (since when) or is inside one.
#[derive(Debug, Default)]
struct Slots {
    inner: Mutex<SlotTable>,
}

#[derive(Debug, Default)]
struct SlotTable {
    next_id: u64,
    open: HashMap<u64, Slot>,
    last_full_warning: Option<Instant>,
}

#[derive(Debug)]
struct Slot {
    /// `None` while a request is being answered.
    waiting_since: Option<Instant>,
    /// Cancelled when a newer connection takes this one's place.
    evict: CancellationToken,
}

impl Slots {
    fn table(&self) -> std::sync::MutexGuard<'_, SlotTable> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A slot for a new connection: free, or taken from the connection that has waited
    /// longest for a request. `None` when every connection is inside a request.
    fn admit(&self) -> Option<(u64, CancellationToken)> {
        let mut table = self.table();
        if table.open.len() >= MAX_CONNECTIONS {
            let oldest = table
                .open
                .iter()
                .filter_map(|(id, slot)| slot.waiting_since.map(|since| (since, *id)))
                .min()
                .map(|(_, id)| id);
            let warn = table
                .last_full_warning
                .is_none_or(|at| at.elapsed() >= FULL_WARNING_INTERVAL);
            if warn {
                table.last_full_warning = Some(Instant::now());
                tracing::warn!(
                    max_connections = MAX_CONNECTIONS,
                    "metrics server: every connection slot is taken; closing the connections that wait longest \
                     for a request to make room (a client holding connections open?)"
                );
            }
            let slot = oldest.and_then(|id| table.open.remove(&id))?;
            slot.evict.cancel();
        }
        let id = table.next_id;
        table.next_id += 1;
        let evict = CancellationToken::new();
        table.open.insert(
            id,
            Slot {
                waiting_since: Some(Instant::now()),
                evict: evict.clone(),
            },
        );
        Some((id, evict))
    }

    /// The connection is answering a request (`false`) or waits for the next one (`true`).
    fn set_waiting(&self, id: u64, waiting: bool) {
        if let Some(slot) = self.table().open.get_mut(&id) {
            slot.waiting_since = waiting.then(Instant::now);
        }
    }

    fn release(&self, id: u64) {
        self.table().open.remove(&id);
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.table().open.len()
    }

    /// Connections admitted so far.
    #[cfg(test)]
    fn admitted(&self) -> u64 {
        self.table().next_id
    }
}

/// Gives a connection's slot back when its task ends.
struct SlotGuard {
    slots: Arc<Slots>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.release(self.id);
    }
}

/// A stream that records when a byte last moved either way, for the idle timeout.
struct Watched {
    stream: TcpStream,
    base: Instant,
    /// Milliseconds after `base` of the last read or write.
    last: Arc<AtomicU64>,
}

impl Watched {
    fn new(stream: TcpStream) -> (Self, Activity) {
        let base = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let activity = Activity {
            base,
            last: Arc::clone(&last),
        };
        (Self { stream, base, last }, activity)
    }

    fn touch(&self) {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }
}

/// When a [`Watched`] stream last moved a byte.
struct Activity {
    base: Instant,
    last: Arc<AtomicU64>,
}

impl Activity {
    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

async fn serve(
    listener: TcpListener,
    ready_max_lag: Duration,
    slots: Arc<Slots>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(error = %error, "metrics server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some((id, evicted)) = slots.admit() else {
            tracing::debug!(
                "metrics server: every connection is inside a request; closing a new one"
            );
            continue;
        };
        let guard = SlotGuard {
            slots: Arc::clone(&slots),
            id,
        };
        tokio::spawn(connection(
            stream,
            guard,
            evicted,
            ready_max_lag,
            stop.clone(),
        ));
    }
}

/// Serves one connection until it ends, times out, goes idle, is evicted or the server stops.
async fn connection(
    stream: TcpStream,
    guard: SlotGuard,
    evicted: CancellationToken,
    ready_max_lag: Duration,
    stop: CancellationToken,
) {
    let (stream, activity) = Watched::new(stream);
    let slots = Arc::clone(&guard.slots);
    let id = guard.id;
    let service = service_fn(move |request| {
        let slots = Arc::clone(&slots);
        async move {
            slots.set_waiting(id, false);
            let response = respond(&request, ready_max_lag);
            slots.set_waiting(id, true);
            Ok::<_, Infallible>(response)
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BUFFER)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    loop {
        let idle_at = tokio::time::Instant::from_std(activity.last() + IDLE_TIMEOUT);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(error = %error, "metrics server: connection ended");
                }
                break;
            }
            _ = evicted.cancelled() => {
                tracing::debug!("metrics server: connection closed to make room for a new one");
                break;
            }
            _ = stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                break;
            }
            _ = tokio::time::sleep_until(idle_at) => {
                if activity.last().elapsed() >= IDLE_TIMEOUT {
                    tracing::debug!("metrics server: idle connection closed");
                    break;
                }
            }
        }
    }
    drop(guard);
}

fn respond(request: &Request<Incoming>, ready_max_lag: Duration) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, telemetry::get().render());
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match readiness(ready_max_lag) {
            Ok(detail) => text(StatusCode::OK, format!("ready: {detail}\n")),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// Ready while streaming with the last applied transaction's lag below `max_lag`.
fn readiness(max_lag: Duration) -> Result<String, String> {
    let telemetry = telemetry::get();
    match telemetry.phase_now() {
        Phase::Streaming => {}
        Phase::Snapshot => return Err("the initial snapshot is running".into()),
        Phase::Starting => return Err("starting (connecting, or waiting to restart)".into()),
    }
    let lag = telemetry.replication_lag.get();
    if lag < max_lag.as_secs_f64() {
        Ok(format!("streaming, replication lag {lag:.3}s"))
    } else {
        Err(format!(
            "replication lag {lag:.3}s is not below metrics.ready_max_lag {}s",
            max_lag.as_secs_f64()
        ))
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// `GET path` on a new connection (`Connection: close`): the status code, within `within`.
    async fn get(address: SocketAddr, path: &str, within: Duration) -> Result<u16, String> {
        let exchange = async {
            let mut stream = TcpStream::connect(address)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| format!("send: {e}"))?;
            let mut response = Vec::new();
            stream
                .read_to_end(&mut response)
                .await
                .map_err(|e| format!("read: {e}"))?;
            let text = String::from_utf8_lossy(&response);
            text.strip_prefix("HTTP/1.1 ")
                .and_then(|rest| rest.get(..3))
                .and_then(|code| code.parse().ok())
                .ok_or_else(|| format!("not an HTTP response: {text:?}"))
        };
        tokio::time::timeout(within, exchange)
            .await
            .map_err(|_| format!("no answer within {within:?}"))?
    }

    /// Waits until the server closed `stream` (EOF or reset); false if it is still open at
    /// `deadline`.
    async fn closed_by(mut stream: TcpStream, deadline: tokio::time::Instant) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                // A response (e.g. 408) before the close.
                Ok(Ok(_)) => continue,
            }
        }
    }

    async fn server() -> (SocketAddr, Arc<Slots>, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let slots = Arc::new(Slots::default());
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            Duration::from_secs(30),
            Arc::clone(&slots),
            stop.clone(),
        ));
        (address, slots, stop)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_that_never_finish_their_headers_are_closed_while_healthz_answers() {
        let (address, slots, stop) = server().await;
        let mut hostile = Vec::new();
        for _ in 0..200 {
            let mut stream = TcpStream::connect(address).await.expect("connect");
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n")
                .await
                .expect("a head without its end");
            hostile.push(stream);
        }
        let deadline = tokio::time::Instant::now() + HEADER_READ_TIMEOUT + Duration::from_secs(15);
        // While they hold every slot (and keep arriving), /healthz is answered.
        for _ in 0..3 {
            assert_eq!(
                get(address, "/healthz", Duration::from_secs(5)).await,
                Ok(200)
            );
            assert!(slots.open() <= MAX_CONNECTIONS, "{} open", slots.open());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut still_open = 0;
        for stream in hostile {
            if !closed_by(stream, deadline).await {
                still_open += 1;
            }
        }
        assert_eq!(
            still_open, 0,
            "connections still open after {HEADER_READ_TIMEOUT:?} + 15s"
        );
        assert_eq!(
            get(address, "/healthz", Duration::from_secs(5)).await,
            Ok(200)
        );
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_connections_never_exceed_the_cap() {
        let (address, slots, stop) = server().await;
        let total = 3 * MAX_CONNECTIONS;
        let mut silent = Vec::new();
        for _ in 0..total {
            silent.push(TcpStream::connect(address).await.expect("connect"));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while slots.admitted() < total as u64 && tokio::time::Instant::now() < deadline {
            assert!(slots.open() <= MAX_CONNECTIONS, "{} open", slots.open());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            slots.admitted(),
            total as u64,
            "not every connection was accepted"
        );
        assert!(slots.open() <= MAX_CONNECTIONS, "{} open", slots.open());
        // The oldest made room for the newer ones.
        let first = silent.remove(0);
        assert!(
            closed_by(first, deadline).await,
            "the oldest connection is still open"
        );
        assert_eq!(
            get(address, "/healthz", Duration::from_secs(5)).await,
            Ok(200)
        );
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_alive_connection_without_a_next_request_is_closed() {
        let (address, _slots, stop) = server().await;
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("send");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer")
            .expect("read");
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        let deadline = tokio::time::Instant::now() + HEADER_READ_TIMEOUT + IDLE_TIMEOUT;
        assert!(
            closed_by(stream, deadline).await,
            "the idle connection stayed open"
        );
        stop.cancel();
    }

    #[test]
    fn ready_only_while_streaming_below_the_lag_limit() {
        let telemetry = telemetry::get();
        let max = Duration::from_secs(30);
        telemetry.set_phase(Phase::Starting);
        assert!(readiness(max).is_err_and(|r| r.contains("starting")));
        telemetry.set_phase(Phase::Snapshot);
        assert!(readiness(max).is_err_and(|r| r.contains("snapshot")));
        telemetry.set_phase(Phase::Streaming);
        telemetry.replication_lag.set(0.5);
        assert!(readiness(max).is_ok_and(|r| r.contains("0.500s")));
        telemetry.replication_lag.set(45.0);
        assert!(readiness(max).is_err_and(|r| r.contains("45.000s") && r.contains("ready_max_lag")));
    }

    /// Log lines written while a subscriber with this writer is the default.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_non_loopback_address_is_warned_about() {
        let logs = |listen: &str| {
            let captured = Captured::default();
            let writer = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish();
            let _default = tracing::subscriber::set_default(subscriber);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let stop = CancellationToken::new();
                start(listen, Duration::from_secs(30), stop.clone())
                    .await
                    .expect("bind");
                stop.cancel();
            });
            let text = captured.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
            String::from_utf8_lossy(&text).into_owned()
        };
        let everywhere = logs("0.0.0.0:0");
        assert!(
            everywhere.contains("WARN") && everywhere.contains("non-loopback"),
            "{everywhere}"
        );
        let local = logs("127.0.0.1:0");
        assert!(!local.contains("non-loopback"), "{local}");
        assert!(local.contains("serving /metrics"), "{local}");
    }
}
