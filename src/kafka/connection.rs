//! How the command-line tools (`publish`, `control`, `generate --brokers`) reach Kafka: the
//! bootstrap servers and librdkafka options such as TLS and SASL, the same keys as serve's
//! `[kafka] librdkafka_options`. Options come from `-X KEY=VALUE` flags and from a Java-style
//! client properties file (`--command-config`, as Kafka's own tools take), so that a password
//! need not stand on the command line.

use std::collections::BTreeMap;
use std::path::Path;

use rdkafka::config::ClientConfig;

use crate::error::{Error, Result};

/// Bootstrap servers and librdkafka options.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// Bootstrap servers.
    pub brokers: String,
    /// librdkafka options (`security.protocol`, `sasl.*`, `ssl.*`, ...).
    pub options: BTreeMap<String, String>,
}

impl Connection {
    /// Servers with no options.
    pub fn plain(brokers: &str) -> Self {
        Connection {
            brokers: brokers.to_owned(),
            options: BTreeMap::new(),
        }
    }

    /// Servers with the options of a properties file (read first) and of `-X KEY=VALUE`
    /// flags (which win).
    pub fn new(brokers: &str, properties: Option<&Path>, flags: &[String]) -> Result<Self> {
        let mut options = match properties {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::Usage(format!(
                        "cannot read --command-config {}: {e}",
                        path.display()
                    ))
                })?;
                parse_properties(&text).map_err(|(line, what)| {
                    Error::Usage(format!("{}:{line}: {what}", path.display()))
                })?
            }
            None => BTreeMap::new(),
        };
        for flag in flags {
            let (k, v) = flag.split_once('=').ok_or_else(|| {
                Error::Usage(format!(
                    "-X takes KEY=VALUE (a librdkafka option), got {flag:?}"
                ))
            })?;
            if k.trim().is_empty() {
                return Err(Error::Usage(format!(
                    "-X takes KEY=VALUE (a librdkafka option), got {flag:?}: the key is empty"
                )));
            }
            options.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        let connection = Connection {
            brokers: brokers.to_owned(),
            options,
        };
        check_options(&connection.options)
            .and_then(|()| check_files(&connection.options))
            .map_err(|what| Error::Usage(format!("-X or --command-config: {what}")))?;
        Ok(connection)
    }

    /// A client configuration with the servers and every option set.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.options {
            config.set(k, v);
        }
        config
    }

    /// A configuration for a producer or an admin client (librdkafka handles of the producer
    /// kind): `defaults` first, then every option that is not a consumer's own over them
    /// (librdkafka would warn that it ignores those).
    pub fn producer_side_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        producer_side_config(&self.brokers, defaults, &self.options)
    }
}

/// A configuration for a librdkafka handle of the producer kind on `brokers`: `defaults`
/// first, then every one of `options` that is not a consumer's own over them.
pub fn producer_side_config(
    brokers: &str,
    defaults: &[(&str, &str)],
    options: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in defaults {
        config.set(*k, *v);
    }
    for (k, v) in options {
        if is_producer_option(k) {
            config.set(k, v);
        }
    }
    config
}

/// Options that only make sense on a consumer are not given to the producer, and vice versa,
/// so one `librdkafka_options` table can serve both without warnings.
pub fn is_producer_option(key: &str) -> bool {
    !(key.starts_with("fetch.")
        || key.starts_with("group.")
        || key.starts_with("session.")
        || key.starts_with("heartbeat.")
        || key.starts_with("auto.")
        || key.starts_with("enable.auto.")
        || key.starts_with("max.poll.")
        || key.starts_with("partition.assignment.")
        || key.starts_with("isolation.")
        || key.starts_with("queued.")
        || key == "check.crcs")
}

/// Options that only make sense on a producer are not given to a consumer: the twin of
/// [`is_producer_option`].
pub fn is_consumer_option(key: &str) -> bool {
    !(key.starts_with("linger.")
        || key.starts_with("batch.")
        || key.starts_with("queue.buffering.")
        || key.starts_with("message.timeout.")
        || key.starts_with("compression.")
        || key.starts_with("acks")
        || key.starts_with("request.required.acks")
        || key.starts_with("enable.idempotence")
        || key.starts_with("transactional.")
        || key.starts_with("retries")
        || key.starts_with("max.in.flight"))
}

/// The SASL mechanisms this build of librdkafka has a provider for. librdkafka takes any
/// `sasl.mechanism` value as it is set and refuses an unknown one only when a client starts,
/// after first asking for credentials the mechanism may not even use.
const SASL_MECHANISMS: [&str; 4] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];

/// The librdkafka options that name a file (`ssl.ca.location` a folder too, or `probe`).
/// librdkafka reports a missing one only when a client starts, as an OpenSSL error that names
/// neither the option nor the path.
const FILE_OPTIONS: [&str; 5] = [
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.keystore.location",
    "ssl.crl.location",
];

/// Checks that the files the TLS options name exist here, as a client about to start needs
/// them (a config file is checked on its own by [`check_options`], wherever it is read). An
/// error names the option and the path.
pub fn check_files(options: &BTreeMap<String, String>) -> std::result::Result<(), String> {
    for key in FILE_OPTIONS {
        let Some(path) = options.get(key).map(|v| v.trim()) else {
            continue;
        };
        if path != "probe" && !std::path::Path::new(path).exists() {
            return Err(format!(
                "{key}={path}: no such file (a relative path is taken from the folder the \
                 process runs in)"
            ));
        }
    }
    Ok(())
}

/// Checks librdkafka `options` before any client starts: librdkafka checks every name and
/// value, and manymodel the SASL mechanism. An error names the option and says what is wrong.
pub fn check_options(options: &BTreeMap<String, String>) -> std::result::Result<(), String> {
    check_sasl_mechanism(options)?;
    let mut config = ClientConfig::new();
    for (k, v) in options {
        config.set(k, v);
    }
    config.create_native_config().map(drop).map_err(|e| {
        let what = match e {
            rdkafka::error::KafkaError::ClientConfig(_, why, key, value) => {
                format!("{key}={value}: {why}")
            }
            other => other.to_string(),
        };
        format!("{what} (librdkafka's CONFIGURATION.md lists the options)")
    })
}

/// Refuses a `sasl.mechanism` this build of librdkafka has no provider for, with the ones it has.
fn check_sasl_mechanism(options: &BTreeMap<String, String>) -> std::result::Result<(), String> {
    for key in ["sasl.mechanism", "sasl.mechanisms"] {
        let Some(value) = options.get(key) else {
            continue;
        };
        let value = value.trim();
        let why = match SASL_MECHANISMS
            .iter()
            .find(|m| m.eq_ignore_ascii_case(value))
        {
            Some(m) if *m == value => continue,
            Some(m) => format!("mechanism names are case-sensitive: did you mean {m}?"),
            None if value.eq_ignore_ascii_case("GSSAPI") => {
                "Kerberos needs Cyrus SASL, which this build of librdkafka leaves out".into()
            }
            None => "not a SASL mechanism librdkafka knows".into(),
        };
        return Err(format!(
            "{key}={value}: {why}; use one of {} (as the broker's sasl.enabled.mechanisms spells it)",
            SASL_MECHANISMS.join(", ")
        ));
    }
    Ok(())
}

/// `key=value` lines (`key: value` too); blank lines and `#` or `!` comments are skipped.
/// An error gives the 1-based line and what is wrong with it.
pub fn parse_properties(
    text: &str,
) -> std::result::Result<BTreeMap<String, String>, (usize, String)> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let Some((k, v)) = line
            .split_once(['=', ':'])
            .filter(|(k, _)| !k.trim().is_empty())
        else {
            return Err((i + 1, format!("expected key=value, got {line:?}")));
        };
        out.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer or an admin client gets its defaults, the user's options over them, and
    /// none of a consumer's own options.
    #[test]
    fn a_producer_side_config_leaves_out_the_consumers_options() {
        let connection = Connection::new(
            "127.0.0.1:9092",
            None,
            &[
                "linger.ms=1".to_owned(),
                "fetch.wait.max.ms=2".to_owned(),
                "security.protocol=PLAINTEXT".to_owned(),
            ],
        )
        .unwrap();
        let config = connection.producer_side_config(&[("linger.ms", "5"), ("acks", "all")]);
        assert_eq!(config.get("linger.ms"), Some("1"), "the user's option wins");
        assert_eq!(config.get("acks"), Some("all"), "a default stays");
        assert_eq!(config.get("security.protocol"), Some("PLAINTEXT"));
        assert_eq!(config.get("fetch.wait.max.ms"), None, "a consumer's own");
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    }

    #[test]
    fn properties_and_flags_make_one_table_with_flags_winning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.properties");
        std::fs::write(
            &path,
            "# SASL_SSL\nsecurity.protocol=SASL_SSL\nsasl.mechanism = SCRAM-SHA-512\n\nsasl.username: alice\n",
        )
        .unwrap();
        let c = Connection::new("b:9093", Some(&path), &["sasl.username=bob".into()]).unwrap();
        assert_eq!(c.options["security.protocol"], "SASL_SSL");
        assert_eq!(c.options["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(c.options["sasl.username"], "bob");
    }

    #[test]
    fn a_bad_line_names_its_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.properties");
        std::fs::write(&path, "a=1\nnonsense\n").unwrap();
        let e = Connection::new("b", Some(&path), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.properties:2"), "{e}");
        let e = Connection::new("b", None, &["novalue".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("KEY=VALUE"), "{e}");
        std::fs::write(&path, "linger.ms=1\n = 5\n").unwrap();
        let e = Connection::new("b", Some(&path), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.properties:2"), "an empty key: {e}");
    }

    #[test]
    fn librdkafka_refuses_an_unknown_option_or_a_bad_value_before_any_client_starts() {
        for (flag, says) in [
            ("no.such.option=1", "No such configuration property"),
            ("linger.ms=soon", "linger.ms=soon: Invalid value"),
            (
                "sasl.mechanism=SCRAM-SHA-999",
                "sasl.mechanism=SCRAM-SHA-999: not a SASL mechanism",
            ),
            (
                "sasl.mechanisms=scram-sha-256",
                "case-sensitive: did you mean SCRAM-SHA-256?",
            ),
            (
                "ssl.ca.location=/no/such/ca.pem",
                "ssl.ca.location=/no/such/ca.pem: no such file",
            ),
            ("ssl.key.location=missing.key", "missing.key: no such file"),
            ("sasl.mechanism=GSSAPI", "Kerberos needs Cyrus SASL"),
        ] {
            let e = Connection::new("b", None, &[flag.into()])
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{flag}: {e}");
        }
        let ok = Connection::new("b", None, &["linger.ms=1".into()]).unwrap();
        assert_eq!(ok.options["linger.ms"], "1");
        for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] {
            let flag = format!("sasl.mechanism={mechanism}");
            assert!(
                Connection::new("b", None, std::slice::from_ref(&flag)).is_ok(),
                "{flag}"
            );
        }
    }
}
