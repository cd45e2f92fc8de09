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
