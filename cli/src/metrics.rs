//! The `metrics.listen` HTTP server of `etcdsync run` (hyper 1): `/metrics` (Prometheus text
//! of `telemetry::get()`), `/healthz` (200 while the process runs) and `/readyz` (200 only while
//! streaming with replication lag below `metrics.ready_max_lag`, else 503 and the reason).

use bytes::Bytes;
use etcdsync_core::telemetry::{self, Phase};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

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
    tracing::info!(%address, "serving /metrics, /healthz and /readyz");
    let handle = tokio::spawn(serve(listener, ready_max_lag, stop));
    Ok((address, handle))
}

async fn serve(listener: TcpListener, ready_max_lag: Duration, stop: CancellationToken) {
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
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| async move {
                Ok::<_, Infallible>(respond(&request, ready_max_lag))
            });
            let connection = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(error = %error, "metrics server: connection error");
                    }
                }
                _ = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
        });
    }
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
}
