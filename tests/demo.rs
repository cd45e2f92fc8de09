//! `manymodel demo`, README's first command: with no services it streams every event through
//! a MockCluster, hot-reloads a second version half-way and reports what it saw.

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

#[test]
fn the_demo_scores_every_event_across_a_hot_reload_and_shuts_down_cleanly() {
    let report = run_ok(&["demo", "--stores", "20", "--events", "4000"]);
    assert_eq!(figure(&report, "events produced:"), 4000, "{report}");
    assert_eq!(figure(&report, "predictions read back:"), 4000, "{report}");
    assert_eq!(figure(&report, "dead letters:"), 0, "{report}");
    let versions = report
        .lines()
        .find(|l| l.trim_start().starts_with("predictions by version:"))
        .unwrap_or("");
    assert!(
        versions.contains("demo-v1") && versions.contains("demo-v2"),
        "both versions scored events: {report}"
    );
    assert!(report.contains("clean shutdown:         yes"), "{report}");
    assert!(
        report.contains("error against the generator's truth"),
        "{report}"
    );
}
