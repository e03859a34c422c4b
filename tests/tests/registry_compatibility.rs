//! Every compatibility level, enforced on registration and answered by the compatibility
//! endpoints, with a passing and a failing case each.

use orderflow_tests::registry::{RegistryHttp, TestRegistry};
use serde_json::json;

fn record(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"R","namespace":"t","fields":[{fields}]}}"#)
}

fn base() -> String {
    record(r#"{"name":"a","type":"string"}"#)
}
/// New optional field: backward, forward and full compatible.
fn optional_added() -> String {
    record(r#"{"name":"a","type":"string"},{"name":"o","type":["null","int"],"default":null}"#)
}
/// New required field: forward compatible only (old readers skip it, new readers need it).
fn required_added() -> String {
    record(r#"{"name":"a","type":"string"},{"name":"r","type":"int"}"#)
}
/// A field dropped that had no default: backward compatible only.
fn field_dropped() -> String {
    record(r#"{"name":"z","type":["null","int"],"default":null}"#)
}

async fn registers(api: &RegistryHttp, subject: &str, schema: &str) -> bool {
    let answer = api.post_schema(&format!("/subjects/{subject}/versions"), schema).await;
    match answer.status {
        200 => true,
        409 => {
            assert_eq!(answer.error_code(), 409);
            false
        }
        other => panic!("unexpected {other}: {}", answer.text),
    }
}

#[tokio::test]
async fn each_level_accepts_what_it_allows_and_refuses_what_it_does_not() {
    let registry = TestRegistry::spawn().await;
    let api = registry.client();
    // (level, candidate, accepted?)
    let cases = [
        ("NONE", record(r#"{"name":"a","type":"int"}"#), true),
        ("BACKWARD", optional_added(), true),
        ("BACKWARD", required_added(), false),
        ("BACKWARD", field_dropped(), true),
        ("FORWARD", required_added(), true),
        ("FORWARD", field_dropped(), false),
        ("FULL", optional_added(), true),
        ("FULL", required_added(), false),
        ("FULL", field_dropped(), false),
        ("BACKWARD_TRANSITIVE", optional_added(), true),
        ("BACKWARD_TRANSITIVE", required_added(), false),
        ("FORWARD_TRANSITIVE", required_added(), true),
        ("FORWARD_TRANSITIVE", field_dropped(), false),
        ("FULL_TRANSITIVE", optional_added(), true),
        ("FULL_TRANSITIVE", required_added(), false),
    ];
    for (i, (level, candidate, accepted)) in cases.iter().enumerate() {
        let subject = format!("case{i}-{}", level.to_lowercase());
        api.set_level(Some(&subject), level).await;
        api.register(&subject, &base()).await;
        let check = api
            .post_schema(&format!("/compatibility/subjects/{subject}/versions/latest?verbose=true"), candidate)
            .await;
        assert_eq!(check.status, 200, "{}", check.text);
        assert_eq!(check.body["is_compatible"], json!(accepted), "{level}: {}", check.text);
        if !accepted {
            assert!(!check.body["messages"].as_array().unwrap().is_empty(), "verbose names the reason");
        }
        assert_eq!(registers(&api, &subject, candidate).await, *accepted, "{level} registering {candidate}");
    }
}

#[tokio::test]
async fn transitive_levels_check_all_versions_and_plain_levels_only_the_latest() {
    let registry = TestRegistry::spawn().await;
    let api = registry.client();
    let v1 = record(r#"{"name":"a","type":"string"}"#);
    let v2 = record(r#"{"name":"a","type":"string"},{"name":"b","type":"string","default":""}"#);
    let v3 = record(r#"{"name":"a","type":"string"},{"name":"b","type":"string"}"#);
    for (subject, level, accepted) in [("plain", "BACKWARD", true), ("transitive", "BACKWARD_TRANSITIVE", false)] {
        api.set_level(Some(subject), level).await;
        api.register(subject, &v1).await;
        api.register(subject, &v2).await;
        let all = api.post_schema(&format!("/compatibility/subjects/{subject}/versions?verbose=true"), &v3).await;
        assert_eq!(all.body["is_compatible"], json!(accepted), "{level}: {}", all.text);
        assert_eq!(registers(&api, subject, &v3).await, accepted, "{level}");
    }
    // Against one named version the level's direction still applies.
    let against_v1 = api.post_schema("/compatibility/subjects/transitive/versions/1?verbose=true", &v3).await;
    assert_eq!(against_v1.body["is_compatible"], json!(false));
    let message = against_v1.body["messages"][0].as_str().unwrap();
    assert!(message.contains("R.b") && message.contains("READER_FIELD_MISSING_DEFAULT_VALUE"), "{message}");
    let against_v2 = api.post_schema("/compatibility/subjects/transitive/versions/2", &v3).await;
    assert_eq!(against_v2.body, json!({"is_compatible": true}), "no messages unless verbose");
}

#[tokio::test]
async fn the_global_level_applies_where_a_subject_has_none() {
    let registry = TestRegistry::spawn().await;
    let api = registry.client();
    api.set_level(None, "NONE").await;
    api.register("s", &base()).await;
    assert!(registers(&api, "s", &record(r#"{"name":"a","type":"int"}"#)).await);
    api.set_level(Some("s"), "BACKWARD").await;
    assert!(!registers(&api, "s", &record(r#"{"name":"a","type":"boolean"}"#)).await);
}

#[tokio::test]
async fn soft_deleted_versions_are_not_checked_against() {
    let registry = TestRegistry::spawn().await;
    let api = registry.client();
    api.set_level(Some("s"), "BACKWARD_TRANSITIVE").await;
    api.register("s", &record(r#"{"name":"a","type":"string"}"#)).await;
    api.register("s", &record(r#"{"name":"a","type":"string"},{"name":"b","type":"string","default":""}"#)).await;
    let strict = record(r#"{"name":"a","type":"string"},{"name":"b","type":"string"}"#);
    assert!(!registers(&api, "s", &strict).await);
    assert_eq!(api.send("DELETE", "/subjects/s/versions/1", None).await.status, 200);
    assert!(registers(&api, "s", &strict).await, "v1 no longer binds once deleted");
}

#[tokio::test]
async fn compatibility_against_a_missing_subject_or_version_is_named() {
    let registry = TestRegistry::spawn().await;
    let api = registry.client();
    let none = api.post_schema("/compatibility/subjects/nope/versions/latest", &base()).await;
    assert_eq!((none.status, none.error_code()), (404, 40401));
    api.register("s", &base()).await;
    let missing = api.post_schema("/compatibility/subjects/s/versions/9", &base()).await;
    assert_eq!((missing.status, missing.error_code()), (404, 40402));
    let fresh = api.post_schema("/compatibility/subjects/fresh/versions", &base()).await;
    assert_eq!(fresh.body["is_compatible"], json!(true), "nothing to be incompatible with");
}
