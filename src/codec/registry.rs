//! A minimal client of a Confluent-compatible schema registry: `GET /schemas/ids/{id}` for
//! writer schemas and `POST /subjects/{subject}/versions` to register the prediction schema.
//!
//! Plain HTTP/1.1 over a Tokio socket, one request per connection: the registry is asked once
//! per schema id (the decoder caches what it answers), never per record, so a client library
//! would buy nothing. It never decides what a failure means for a record; [`Fetch`] says what
//! happened and [`crate::codec`] decides.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one request may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest response read.
const MAX_RESPONSE: usize = 4 << 20;

/// A schema registry.
#[derive(Debug, Clone)]
pub struct Registry {
    /// `host:port`.
    authority: String,
    /// The URL's path, without a trailing slash ("" for the root).
    prefix: String,
    /// The URL as configured, for messages.
    url: String,
}

/// What the registry said about a schema id.
#[derive(Debug)]
pub enum Fetch {
    /// The schema's text.
    Found(String),
    /// The registry answered that it has no such Avro schema (a permanent answer).
    NotFound(String),
    /// The registry could not be asked or answered with a server error (try again later).
    Unavailable(String),
}

impl Registry {
    /// A client for `url`, which must be `http://host[:port][/path]`.
    pub fn new(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("registry_url {url:?} must start with http:// (put a TLS-terminating proxy in front of an https registry)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("registry_url {url:?} has no host"));
        }
        let authority = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Registry {
            authority,
            prefix: path.trim_end_matches('/').to_owned(),
            url: url.to_owned(),
        })
    }

    /// The URL as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The writer schema registered under `id`.
    pub async fn schema_by_id(&self, id: u32) -> Fetch {
        let path = format!("{}/schemas/ids/{id}", self.prefix);
        match self.request("GET", &path, None).await {
            Err(e) => Fetch::Unavailable(e),
            Ok((200, body)) => {
                let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&body);
                let Ok(v) = parsed else {
                    return Fetch::Unavailable(format!("{}{path} did not answer JSON", self.url));
                };
                let kind = v
                    .get("schemaType")
                    .and_then(|t| t.as_str())
                    .unwrap_or("AVRO");
                match v.get("schema").and_then(|s| s.as_str()) {
                    Some(_) if kind != "AVRO" => {
                        Fetch::NotFound(format!("schema id {id} is a {kind} schema, not Avro"))
                    }
                    Some(s) => Fetch::Found(s.to_owned()),
                    None => Fetch::Unavailable(format!(
                        "{}{path} answered without a \"schema\"",
                        self.url
                    )),
                }
            }
            Ok((404, _)) => Fetch::NotFound(format!(
                "the schema registry {} has no schema id {id}",
                self.url
            )),
            Ok((status, body)) => Fetch::Unavailable(format!(
                "{}{path} answered {status}: {}",
                self.url,
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
        }
    }

    /// Registers `schema` under `subject` (or finds it registered) and returns its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, String> {
        let path = format!("{}/subjects/{subject}/versions", self.prefix);
        let body = serde_json::json!({ "schema": schema }).to_string();
        let (status, answer) = self.request("POST", &path, Some(&body)).await?;
        let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        match (status, v.get("id").and_then(|i| i.as_u64())) {
            (200, Some(id)) => {
                u32::try_from(id).map_err(|_| format!("schema id {id} is not a 32-bit id"))
            }
            _ => Err(format!(
                "registering the prediction schema under {subject} at {}: {status} {}",
                self.url,
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            )),
        }
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Vec<u8>), String> {
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(&self.authority)
                .await
                .map_err(|e| format!("cannot reach the schema registry {}: {e}", self.url))?;
            let body = body.unwrap_or("");
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/vnd.schemaregistry.v1+json, application/json\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                self.authority,
                body.len()
            );
            stream
                .write_all(format!("{head}{body}").as_bytes())
                .await
                .map_err(|e| format!("writing to the schema registry {}: {e}", self.url))?;
            let mut answer = Vec::new();
            (&mut stream)
                .take(MAX_RESPONSE as u64)
                .read_to_end(&mut answer)
                .await
                .map_err(|e| format!("reading from the schema registry {}: {e}", self.url))?;
            parse_response(&answer)
                .ok_or_else(|| format!("the schema registry {} answered garbage", self.url))
        };
        tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| {
            format!(
                "the schema registry {} did not answer within {TIMEOUT:?}",
                self.url
            )
        })?
    }
}

/// Status and body of an HTTP/1.1 response (plain or chunked); `retrain` reads `/partitions`
/// answers with it too.
pub(crate) fn parse_response(bytes: &[u8]) -> Option<(u16, Vec<u8>)> {
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..split]).ok()?;
    let body = &bytes[split + 4..];
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    if !chunked {
        return Some((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some((status, out));
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain), Some((200, b"{}".to_vec())));
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((404, b"abc".to_vec())));
        assert!(Registry::new("https://x").is_err());
        assert_eq!(Registry::new("http://h/p/").unwrap().authority, "h:80");
    }
}
