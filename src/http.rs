//! The operations listener: `/metrics` (Prometheus text format), `/healthz`, `/readyz`, and
//! with `[actuals]` on, `/partitions?sort=drift&limit=N` and `/partitions/{id}`.
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

use crate::accuracy::report::Sort;
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
                        let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &metrics, &stats)).await;
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
    stats: &PipelineStats,
) -> std::io::Result<()> {
    let health = &stats.health;
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
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/partitions") => partitions(stats, query).await,
        ("GET", p) if p.starts_with("/partitions/") => {
            one_partition(stats, &p["/partitions/".len()..]).await
        }
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
            "not found: try /metrics, /healthz, /readyz or /partitions\n".to_owned(),
        ),
        _ => (405, "text/plain", "only GET\n".to_owned()),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
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

/// What an endpoint answers: status, content type, body.
type Answer = (u16, &'static str, String);

fn text(status: u16, body: String) -> Answer {
    (status, "text/plain", body)
}

/// `GET /partitions?sort=drift|rmse|actuals|partition&limit=N` (defaults: drift, 20).
async fn partitions(stats: &PipelineStats, query: &str) -> Answer {
    let (mut sort, mut limit) = (Sort::Drift, 20usize);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sort" => match Sort::parse(value) {
                Some(s) => sort = s,
                None => {
                    return text(
                        400,
                        format!("sort={value:?}: use drift, rmse, actuals or partition\n"),
                    )
                }
            },
            "limit" => match value.parse() {
                Ok(n) => limit = n,
                Err(_) => return text(400, format!("limit={value:?} is not a count\n")),
            },
            _ => {
                return text(
                    400,
                    format!("unknown parameter {key:?}: use sort and limit\n"),
                )
            }
        }
    }
    let Some(handle) = stats.accuracy() else {
        return off();
    };
    match handle.page(sort, limit).await {
        Some(page) => json(&page),
        None => stopped(),
    }
}

/// `GET /partitions/{id}` (the id percent-encoded).
async fn one_partition(stats: &PipelineStats, encoded: &str) -> Answer {
    let Some(id) = percent_decode(encoded) else {
        return text(
            400,
            "the store id is not valid percent-encoded UTF-8\n".into(),
        );
    };
    let Some(handle) = stats.accuracy() else {
        return off();
    };
    match handle.one(&id).await {
        Some(Some(report)) => json(&report),
        Some(None) => text(404, format!("no actuals seen for store {id:?}\n")),
        None => stopped(),
    }
}

fn json<T: serde::Serialize>(value: &T) -> Answer {
    match serde_json::to_string(value) {
        Ok(body) => (200, "application/json", body),
        Err(e) => text(503, format!("cannot encode the answer: {e}\n")),
    }
}

fn off() -> Answer {
    text(
        404,
        "accuracy is off: set [actuals] topic in the serve config\n".into(),
    )
}

fn stopped() -> Answer {
    text(503, "the actuals consumer has stopped\n".into())
}

/// Decodes `%XX` escapes (and `+` stays `+`, as in a path).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn store_ids_are_percent_decoded() {
        assert_eq!(percent_decode("S001").as_deref(), Some("S001"));
        assert_eq!(
            percent_decode("store%2F7%20a").as_deref(),
            Some("store/7 a")
        );
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%FF"), None);
    }
}
