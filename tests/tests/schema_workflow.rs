//! The schema pull-request workflow: `check` accepts compatible versions and rejects breaking
//! ones naming the field and rule, on disk and against a live registry; `register` is idempotent.

use std::path::{Path, PathBuf};

use orderflow_schemas::{Catalog, CompatibilityLevel, registry_client::RegistryClient, workflow};
use orderflow_tests::registry::TestRegistry;

fn repo_schemas() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/avro")
}

/// A copy of the repo's schema directory to edit.
fn scratch_copy() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("orderflow-schemas-{}", uuid::Uuid::new_v4().simple()));
    for topic in std::fs::read_dir(repo_schemas()).unwrap() {
        let topic = topic.unwrap().path();
        let target = dir.join(topic.file_name().unwrap());
        std::fs::create_dir_all(&target).unwrap();
        for file in std::fs::read_dir(&topic).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, target.join(file.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// OrderPlaced v2 plus one more field.
fn order_placed_v3(extra_field: &str) -> String {
    let v2 = std::fs::read_to_string(repo_schemas().join("orders/OrderPlaced.v2.avsc")).unwrap();
    let mut schema: serde_json::Value = serde_json::from_str(&v2).unwrap();
    schema["fields"].as_array_mut().unwrap().push(serde_json::from_str(extra_field).unwrap());
    serde_json::to_string_pretty(&schema).unwrap()
}

#[tokio::test]
async fn the_repository_schemas_pass_the_check() {
    let catalog = Catalog::load_dir(&repo_schemas()).unwrap();
    let report = workflow::check(&catalog, CompatibilityLevel::BackwardTransitive, None).await.unwrap();
    assert!(report.passed(), "{:?}", report.failures);
}

#[tokio::test]
async fn a_compatible_v3_passes_and_a_breaking_v3_is_rejected_with_field_and_rule() {
    let dir = scratch_copy();
    let v3 = dir.join("orders/OrderPlaced.v3.avsc");
    std::fs::write(&v3, order_placed_v3(r#"{"name":"channel","type":"string","default":"web"}"#)).unwrap();
    let report =
        workflow::check(&Catalog::load_dir(&dir).unwrap(), CompatibilityLevel::BackwardTransitive, None).await.unwrap();
    assert!(report.passed(), "{:?}", report.failures);

    std::fs::write(&v3, order_placed_v3(r#"{"name":"channel","type":"string"}"#)).unwrap();
    let report =
        workflow::check(&Catalog::load_dir(&dir).unwrap(), CompatibilityLevel::BackwardTransitive, None).await.unwrap();
    assert_eq!(report.failures.len(), 2, "breaks against v1 and v2: {:?}", report.failures);
    let failure = &report.failures[0];
    assert!(failure.contains("OrderPlaced.v3.avsc"), "{failure}");
    assert!(failure.contains("OrderPlaced.channel"), "{failure}");
    assert!(failure.contains("READER_FIELD_MISSING_DEFAULT_VALUE"), "{failure}");
    assert!(failure.contains("cannot read v1 data"), "{failure}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn register_is_idempotent_and_check_compares_new_versions_with_the_registry() {
    let registry = TestRegistry::spawn().await;
    registry.client().set_level(None, "BACKWARD_TRANSITIVE").await;
    let client = RegistryClient::new(registry.access());
    let dir = scratch_copy();
    let catalog = Catalog::load_dir(&dir).unwrap();

    let first = workflow::register(&catalog, &client).await.unwrap();
    let second = workflow::register(&catalog, &client).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(first.len(), catalog.iter().count());

    let report = workflow::check(&catalog, CompatibilityLevel::BackwardTransitive, Some(&client)).await.unwrap();
    assert!(report.passed(), "{:?}", report.failures);
    assert!(report.notes.iter().all(|n| n.contains("is registered as")), "{:?}", report.notes);

    // A new compatible version is checked against the registry and passes.
    let v3 = dir.join("orders/OrderPlaced.v3.avsc");
    std::fs::write(&v3, order_placed_v3(r#"{"name":"channel","type":"string","default":"web"}"#)).unwrap();
    let report =
        workflow::check(&Catalog::load_dir(&dir).unwrap(), CompatibilityLevel::BackwardTransitive, Some(&client))
            .await
            .unwrap();
    assert!(report.passed(), "{:?}", report.failures);
    assert!(
        report.notes.iter().any(|n| n.contains("OrderPlaced.v3.avsc is compatible with what")),
        "{:?}",
        report.notes
    );

    // Editing a registered version in place is caught: registered versions are immutable.
    std::fs::remove_file(&v3).unwrap();
    let v1 = dir.join("orders/OrderCancelled.v1.avsc");
    let edited = std::fs::read_to_string(&v1).unwrap().replace("\"refund_required\"", "\"refund_needed\"");
    std::fs::write(&v1, edited).unwrap();
    let report =
        workflow::check(&Catalog::load_dir(&dir).unwrap(), CompatibilityLevel::BackwardTransitive, Some(&client))
            .await
            .unwrap();
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert!(
        report.failures[0].contains("immutable") && report.failures[0].contains("OrderCancelled.v2.avsc"),
        "{}",
        report.failures[0]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_version_the_registry_refuses_is_reported_with_the_registry_reason() {
    let registry = TestRegistry::spawn().await;
    let client = RegistryClient::new(registry.access());
    let dir = scratch_copy();
    workflow::register(&Catalog::load_dir(&dir).unwrap(), &client).await.unwrap();
    // Someone registered a stricter v3 directly; the PR's v3 differs from it and breaks it.
    let subject = "orders-io.orderflow.events.OrderPlaced";
    client.register(subject, &order_placed_v3(r#"{"name":"channel","type":"string","default":"web"}"#)).await.unwrap();
    std::fs::write(
        dir.join("orders/OrderPlaced.v3.avsc"),
        order_placed_v3(r#"{"name":"channel","type":"int","default":0}"#),
    )
    .unwrap();
    std::fs::write(
        dir.join("orders/OrderPlaced.v4.avsc"),
        order_placed_v3(r#"{"name":"channel","type":"int","default":0}"#),
    )
    .unwrap();
    let report =
        workflow::check(&Catalog::load_dir(&dir).unwrap(), CompatibilityLevel::Backward, Some(&client)).await.unwrap();
    assert!(
        report.failures.iter().any(|f| f.contains("OrderPlaced.v3.avsc") && f.contains("immutable")),
        "{:?}",
        report.failures
    );
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.contains("OrderPlaced.v4.avsc against the registry") && f.contains("TYPE_MISMATCH")),
        "{:?}",
        report.failures
    );
    std::fs::remove_dir_all(dir).unwrap();
}
