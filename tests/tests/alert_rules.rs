//! The alert rules as Prometheus itself reads them: `promtool check rules` accepts the file,
//! `promtool test rules` runs every alert's firing and not-firing cases, and every alert names
//! a runbook section that exists in docs/runbook.md.

use std::{path::PathBuf, process::Command};

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../helm/orderflow/files/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .expect("promtool is not installed (scripts/test.sh installs Debian's prometheus package)");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_rules() {
    let text = promtool(&["check", "rules", "orderflow-rules.yaml"]);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn every_alert_fires_and_stays_quiet_where_its_unit_tests_say() {
    let text = promtool(&["test", "rules", "orderflow-rules.test.yaml"]);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn every_alert_is_unit_tested_and_has_a_runbook_section() {
    let rules = std::fs::read_to_string(rules_dir().join("orderflow-rules.yaml")).unwrap();
    let tests = std::fs::read_to_string(rules_dir().join("orderflow-rules.test.yaml")).unwrap();
    let runbook = std::fs::read_to_string(rules_dir().join("../../../../docs/runbook.md")).unwrap();
    let anchors: Vec<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|title| {
            title
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
                .collect::<String>()
                .replace(' ', "-")
        })
        .collect();
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert!(alerts.len() >= 11, "{alerts:?}");
    for alert in alerts {
        let tested = format!("alertname: {alert}\n");
        assert!(tests.contains(&tested), "{alert} has no promtool unit test");
        let section = rules
            .split("- alert: ")
            .find(|block| block.starts_with(alert))
            .and_then(|block| block.lines().find_map(|l| l.trim().strip_prefix("runbook_url: ")))
            .unwrap_or_else(|| panic!("{alert} has no runbook_url"));
        let anchor = section.trim_matches('"').rsplit('#').next().unwrap();
        assert!(anchors.iter().any(|a| a == anchor), "{alert}: no section #{anchor} in docs/runbook.md ({anchors:?})");
    }
}
