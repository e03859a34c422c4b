//! The service manifest (`ops/services.toml`, read through `scripts/manifest.py`, which checks
//! its rules) against the code: each consumer crate's group and topics, each binary's flags, and
//! the test harness's stack. compose and the chart are checked by `tests/deploy/test_services.py`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
    time::Duration,
};

use orderflow_tests::{binary, stack::TestStack};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Service {
    name: String,
    binary: String,
    database_env: Option<String>,
    #[serde(default)]
    reads: Vec<String>,
    listen: Vec<Listener>,
    #[serde(default)]
    needs: Vec<String>,
    group: Option<String>,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Listener {
    env: String,
    url_env: Option<String>,
}

fn manifest() -> Vec<Service> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new("python3").arg(root.join("scripts/manifest.py")).arg("json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `(group, topics)` of every consumer, as the manifest names them.
fn manifest_groups(services: &[Service]) -> BTreeSet<(String, Vec<String>)> {
    services.iter().filter_map(|s| Some((s.group.clone()?, s.topics.clone()))).collect()
}

#[test]
fn every_consumer_crate_names_the_manifests_group_and_topics() {
    let crates: [(&str, &[&str]); 5] = [
        (orderflow_payment::GROUP, &orderflow_payment::TOPICS),
        (orderflow_order_service::GROUP, &orderflow_order_service::TOPICS),
        (orderflow_inventory::GROUP, &orderflow_inventory::TOPICS),
        (orderflow_notifications::GROUP, &orderflow_notifications::TOPICS),
        (orderflow_analytics::GROUP, &orderflow_analytics::TOPICS),
    ];
    let code: BTreeSet<(String, Vec<String>)> =
        crates.iter().map(|(g, t)| (g.to_string(), t.iter().map(|t| t.to_string()).collect())).collect();
    assert_eq!(code, manifest_groups(&manifest()));
}

/// Every variable the manifest sets for a service is a flag of its binary (`[env: NAME…]` in
/// `--help`), so a renamed flag cannot leave the stack, compose and the chart setting nothing.
#[test]
fn every_binary_takes_the_settings_the_manifest_passes_it() {
    let services = manifest();
    let url_env = |name: &str| {
        let need = services.iter().find(|s| s.name == name).unwrap();
        need.listen[0].url_env.clone().unwrap()
    };
    for service in &services {
        let help = Command::new(binary(&service.binary)).arg("--help").output().unwrap();
        assert!(help.status.success(), "{} --help: {}", service.binary, String::from_utf8_lossy(&help.stderr));
        let help = String::from_utf8(help.stdout).unwrap();
        let mut names: Vec<String> = service.listen.iter().map(|l| l.env.clone()).collect();
        names.extend(service.database_env.clone());
        names
            .extend(service.reads.iter().map(|database| format!("ORDERFLOW_{}_DATABASE_URL", database.to_uppercase())));
        names.extend(service.env.keys().cloned());
        names.extend(service.needs.iter().map(|n| url_env(n)));
        for name in names {
            let flag = [format!("[env: {name}]"), format!("[env: {name}=")];
            assert!(
                flag.iter().any(|f| help.contains(f)),
                "{}: `{}` has no flag read from {name}",
                service.name,
                service.binary
            );
        }
    }
    // The lag exporter reports every group from its start, before any commits.
    let help = Command::new(binary("lag-exporter")).arg("--help").output().unwrap();
    let groups: Vec<String> = services.iter().filter_map(|s| s.group.clone()).collect();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains(&format!("[default: {}]", groups.join(","))), "lag-exporter's default groups:\n{help}");
}

/// The harness's whole stack runs the manifest's consumer groups and relays, no more, no fewer.
#[tokio::test]
async fn the_harness_stack_runs_the_manifests_groups_and_relays() {
    let services = manifest();
    let mut stack = TestStack::spawn().await;
    stack.start_notifications(Duration::from_secs(5)).await;
    stack.start_analytics().await;
    let groups: BTreeSet<String> = stack.metrics.iter().map(|(group, _)| group.clone()).collect();
    let expected: BTreeSet<String> = manifest_groups(&services).into_iter().map(|(g, _)| g).collect();
    assert_eq!(groups, expected);
    let relays: BTreeSet<String> = stack.relays.iter().map(|r| r.outbox.clone()).collect();
    let expected: BTreeSet<String> = services
        .iter()
        .filter(|s| s.binary == "outbox-relay")
        .map(|s| s.env.get("ORDERFLOW_OUTBOX_NAME").cloned().unwrap())
        .collect();
    assert_eq!(relays, expected);
}
