//! `manymodel demo`, README's first command: with no services it streams every event through
//! a MockCluster, hot-reloads a second version half-way and reports what it saw; and it shows
//! the accuracy loop: the stores that change behaviour are flagged from their actuals, refitted
//! by `retrain`, and the delta it publishes is swapped in and brings their error back to the
//! noise floor.
//!
//! 20 stores, so one of them changes; 10,000 events, so that store has about 350 actuals after
//! its drift for its refit (37 model inputs) and about 100 after the swap to judge it by.

mod common;

use common::run_ok;

/// The number after `label` on the report line that starts with it.
fn figure(report: &str, label: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure for {label:?} in:\n{report}"))
}

/// The report line that starts with `label`.
fn line<'a>(report: &'a str, label: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no line {label:?} in:\n{report}"))
}

/// One row of the accuracy loop's table (a store's id, then these).
#[derive(Debug)]
struct StoreRow {
    noise: f64,
    before: f64,
    after: f64,
    retrain: String,
}

/// The rows under the header of the accuracy loop's table.
fn table(report: &str) -> Vec<StoreRow> {
    report
        .lines()
        .skip_while(|l| !l.contains("RMSE before retrain"))
        .skip(1)
        .map_while(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            let number = |i: usize| cells.get(i).and_then(|c| c.parse::<f64>().ok());
            cells.first().filter(|c| c.starts_with('S'))?;
            Some(StoreRow {
                noise: number(1)?,
                before: number(2)?,
                after: number(3)?,
                retrain: cells.get(4)?.to_string(),
            })
        })
        .collect()
}

#[test]
fn the_demo_scores_every_event_across_a_hot_reload_and_shuts_down_cleanly() {
    let report = run_ok(&["demo", "--stores", "20", "--events", "10000"]);
    assert_eq!(figure(&report, "events produced:"), 10000, "{report}");
    assert_eq!(figure(&report, "predictions read back:"), 10000, "{report}");
    assert_eq!(figure(&report, "dead letters:"), 0, "{report}");
    let versions = line(&report, "predictions by version:");
    assert!(
        versions.contains("demo-v1: ") && versions.contains("demo-v2: "),
        "both versions scored events: {report}"
    );
    assert!(report.contains("clean shutdown:         yes"), "{report}");
    assert!(
        report.contains("error against the generator's truth"),
        "{report}"
    );

    // The accuracy loop.
    assert!(
        line(&report, "accuracy loop").contains("1 of 20 stores change behaviour"),
        "{report}"
    );
    let detected = line(&report, "drift detected on");
    assert!(
        detected.contains("exactly the shifted ones: yes"),
        "{report}"
    );
    let retrain = line(&report, "retrain:");
    assert!(
        retrain.contains("1 kept") && retrain.contains("published and swapped in"),
        "{report}"
    );
    let delta = retrain
        .split_whitespace()
        .skip_while(|w| *w != "delta")
        .nth(1)
        .unwrap_or_else(|| panic!("no delta version in {retrain:?}"));
    assert!(
        delta.starts_with("demo-v2.r"),
        "a delta of demo-v2: {delta}"
    );
    assert!(
        versions.contains(&format!("{delta}: ")),
        "the delta scored the last events: {report}"
    );
    let rows = table(&report);
    assert_eq!(rows.len(), 1, "one row per shifted store: {report}");
    for row in &rows {
        assert_eq!(row.retrain, "kept", "{row:?}\n{report}");
        assert!(
            row.before > 3.0 * row.noise,
            "the old model was far off before the retrain: {row:?}\n{report}"
        );
        assert!(
            row.after <= 1.5 * row.noise,
            "the refit is back near the noise floor: {row:?}\n{report}"
        );
    }
}
