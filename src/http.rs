//! The operations listener: `/metrics` (Prometheus text format), `/healthz` and `/readyz`.
//!
//! A deliberately small HTTP/1.1 server: one GET per connection, no keep-alive, no body. It
//! never touches the scoring path; a slow scraper only costs its own task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::metrics::PipelineStats;

/// Binds the operations listener.
pub async fn bind(listen: &str) -> Result<TcpListener> {
    let addr: SocketAddr = listen.parse().map_err(|e| {
        Error::Usage(format!(
            "[metrics] listen = {listen:?} is not an address like 0.0.0.0:9898: {e}"
        ))
    })?;
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Usage(format!("[metrics] listen = {listen:?}: cannot bind: {e}")))
}

/// Serves connections on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    stats: Arc<PipelineStats>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (metrics, stats) = (metrics.clone(), stats.clone());
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &metrics, &stats.health)).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn answer(
    mut stream: TcpStream,
    metrics: &PrometheusHandle,
    health: &crate::health::Health,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    // Read until the end of the request head (or the buffer is full).
    while len < buf.len() {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (200, "text/plain; version=0.0.4", metrics.render()),
        ("GET", "/healthz") => {
            let (s, b) = health.healthz();
            (s, "application/json", b)
        }
        ("GET", "/readyz") => {
            let (s, b) = health.readyz();
            (s, "application/json", b)
        }
        ("GET", _) => (
            404,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".to_owned(),
        ),
        _ => (405, "text/plain", "only GET\n".to_owned()),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
