//! Every file in config/ loads, so the shipped examples never rot.

use std::path::Path;

use manymodel::config::ServeConfig;
use manymodel::import::manifest::Manifest;
use manymodel::retrain::RetrainConfig;
use manymodel::spec::TrainSpec;

#[test]
fn every_file_in_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).expect("config/ exists") {
        let path = entry.expect("entry").path();
        // A user's own copy (README: `config/*.local.toml`, ignored by git) is not shipped.
        if path.to_string_lossy().ends_with(".local.toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        if text.contains("[challenger]") {
            RetrainConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        } else if text.contains("[kafka]") {
            ServeConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        } else if text.contains("[partitions]") {
            Manifest::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        } else {
            TrainSpec::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        loaded += 1;
    }
    assert!(
        loaded >= 2,
        "config/ holds the serve config and the training spec"
    );
}

#[test]
fn the_generated_spec_is_the_shipped_one() {
    let shipped =
        TrainSpec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/train.toml")).unwrap();
    let generated = TrainSpec::parse(manymodel::generate::TRAIN_TOML).unwrap();
    assert_eq!(shipped, generated);
}

#[test]
fn a_misspelt_serve_option_is_refused() {
    let err = ServeConfig::parse(
        "[kafka]\nbrokers=\"b\"\ngroup_id=\"g\"\ninput_topic=\"i\"\noutput_topic=\"o\"\ndlq_topic=\"d\"\ncomit_interval_ms=1\n[model]\nbundle=\"b.avro\"\n",
    )
    .unwrap_err();
    assert!(err.contains("comit_interval_ms"), "{err}");
}

/// `[pipeline] actors` sets the number of partition actors; left out, it is one per core but
/// one (at least one); zero is refused when the file is read.
#[test]
fn the_number_of_actors_is_set_or_follows_the_cores() {
    let base = "[kafka]\nbrokers=\"b\"\ngroup_id=\"g\"\ninput_topic=\"i\"\noutput_topic=\"o\"\ndlq_topic=\"d\"\n[model]\nbundle=\"b.avro\"\n";
    let set = ServeConfig::parse(&format!("{base}[pipeline]\nactors = 3\n")).unwrap();
    assert_eq!(set.pipeline.actors(), 3);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let default = ServeConfig::parse(base).unwrap();
    assert_eq!(default.pipeline.actors(), cores.saturating_sub(1).max(1));
    let err = ServeConfig::parse(&format!("{base}[pipeline]\nactors = 0\n")).unwrap_err();
    assert!(err.contains("actors"), "{err}");
}

/// `[kafka.librdkafka_options]` is checked when the file is read: a name or value librdkafka
/// refuses, and the options manymodel sets itself (which would silently undo its delivery
/// guarantees), are refused with the option named, and `serve` exits 2 naming the file.
#[test]
fn librdkafka_options_are_checked_when_the_file_is_read() {
    let base = "[kafka]\nbrokers=\"b\"\ngroup_id=\"g\"\ninput_topic=\"i\"\noutput_topic=\"o\"\ndlq_topic=\"d\"\n[model]\nbundle=\"b.avro\"\n[kafka.librdkafka_options]\n";
    let with = |options: &str| ServeConfig::parse(&format!("{base}{options}\n"));
    assert!(with("\"linger.ms\" = \"5\"\n\"security.protocol\" = \"SASL_SSL\"").is_ok());
    for (options, names) in [
        (
            r#""security.protocol" = "SASL_SSLX""#,
            &["security.protocol", "SASL_SSLX"][..],
        ),
        (r#""no.such.option" = "1""#, &["no.such.option"]),
        (r#""group.id" = "other""#, &["group.id", "[kafka] group_id"]),
        (r#""enable.auto.commit" = "true""#, &["enable.auto.commit"]),
        (r#""enable.idempotence" = "false""#, &["enable.idempotence"]),
        (r#""transactional.id" = "t""#, &["[kafka] transactional_id"]),
    ] {
        let err = with(options).unwrap_err();
        assert!(err.contains("[kafka.librdkafka_options]"), "{err}");
        for name in names {
            assert!(err.contains(name), "{options}: {err}");
        }
    }

    let (code, stderr) = serve_with(
        "bad.toml",
        &format!("{base}\"security.protocol\" = \"SASL_SSLX\"\n"),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("bad.toml") && stderr.contains("security.protocol"),
        "{stderr}"
    );
}

/// A `[model] bundle` that is not there stops `serve` at once (exit 2) with an error naming the
/// config file, the setting and the path.
#[test]
fn a_missing_local_bundle_is_named_with_its_setting() {
    let (code, stderr) = serve_with(
        "serve.toml",
        "[kafka]\nbrokers=\"127.0.0.1:1\"\ngroup_id=\"g\"\ninput_topic=\"i\"\noutput_topic=\"o\"\ndlq_topic=\"d\"\n[model]\nbundle=\"nosuch.avro\"\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    for part in ["serve.toml", "[model] bundle", "nosuch.avro"] {
        assert!(stderr.contains(part), "{part}: {stderr}");
    }
}

/// A TLS file that is not there stops `serve` at once (exit 2), before any client starts, with
/// an error naming the option and the path (librdkafka's own is an OpenSSL string naming
/// neither); a SASL mechanism in the wrong case is refused with the right spelling.
#[test]
fn a_missing_tls_file_and_a_misspelt_sasl_mechanism_are_named() {
    let kafka = "[kafka]\nbrokers=\"127.0.0.1:1\"\ngroup_id=\"g\"\ninput_topic=\"i\"\noutput_topic=\"o\"\ndlq_topic=\"d\"\n";
    // Checked before the bundle, which is not there either.
    let model = "[model]\nbundle=\"nosuch.avro\"\n";
    for (name, options, says) in [
        (
            "tls.toml",
            "\"security.protocol\"=\"SSL\"\n\"ssl.ca.location\"=\"/no/such/ca.pem\"",
            "ssl.ca.location=/no/such/ca.pem: no such file",
        ),
        (
            "sasl.toml",
            "\"security.protocol\"=\"SASL_SSL\"\n\"sasl.mechanism\"=\"scram-sha-512\"",
            "did you mean SCRAM-SHA-512?",
        ),
    ] {
        let text = format!("{kafka}[kafka.librdkafka_options]\n{options}\n{model}");
        let (code, stderr) = serve_with(name, &text);
        assert_eq!(code, Some(2), "{stderr}");
        for part in [name, says] {
            assert!(stderr.contains(part), "{part}: {stderr}");
        }
    }
}

/// Runs `manymodel serve` on a config file `name` holding `text`, in a folder of its own, to
/// its end: its exit code and what it wrote to stderr.
fn serve_with(name: &str, text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_manymodel"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
