//! The registry over real HTTP on a real Postgres, as Confluent clients see it.

use orderflow_tests::registry::TestRegistry;
use serde_json::json;

const V1: &str = r#"{"type":"record","name":"Thing","namespace":"t","fields":[{"name":"a","type":"string"}]}"#;
const V2: &str = r#"{"type":"record","name":"Thing","namespace":"t","fields":[{"name":"a","type":"string"},{"name":"b","type":["null","long"],"default":null}]}"#;
/// V1 with other whitespace and key order: the same schema.
const V1_REFORMATTED: &str = r#"{ "namespace": "t", "name": "Thing", "type": "record",
    "fields": [ { "type": "string", "name": "a" } ] }"#;

#[tokio::test]
async fn registering_a_schema_twice_returns_the_same_id_and_one_version() {
    let registry = TestRegistry::spawn().await;
    let api = registry.client();
    let first = api.register("things-value", V1).await;
    assert_eq!(api.register("things-value", V1).await, first);
    assert_eq!(api.register("things-value", V1_REFORMATTED).await, first, "same canonical form, same id");
    let versions = api.get("/subjects/things-value/versions").await;
    assert_eq!(versions.body, json!([1]));
    assert_eq!(versions.content_type, "application/vnd.schemaregistry.v1+json");
}

#[tokio::test]
async fn one_schema_has_one_global_id_across_subjects() {
    let registry = TestRegistry::spawn().await;
    let api = registry.client();
    let a = api.register("a-value", V1).await;
    let b = api.register("b-value", V1).await;
    assert_eq!(a, b);
    let usages = api.get(&format!("/schemas/ids/{a}/versions")).await;
    assert_eq!(usages.body, json!([{"subject":"a-value","version":1},{"subject":"b-value","version":1}]));
}

#[tokio::test]
async fn ids_and_versions_survive_a_registry_restart() {
    let registry = TestRegistry::spawn().await;
    let api = registry.client();
    let id1 = api.register("s", V1).await;
    let id2 = api.register("s", V2).await;
    let db_url = registry.db_url.clone();
    registry.stop().await;

    let restarted = TestRegistry::spawn_on(&db_url).await;
    let api = restarted.client();
    assert_eq!(api.register("s", V1).await, id1);
    assert_eq!(api.register("s", V2).await, id2);
    let latest = api.get("/subjects/s/versions/latest").await;
    assert_eq!(latest.body["version"], 2);
    assert_eq!(latest.body["id"], id2);
    let by_id = api.get(&format!("/schemas/ids/{id1}")).await;
    let stored: serde_json::Value = serde_json::from_str(by_id.body["schema"].as_str().unwrap()).unwrap();
    assert_eq!((stored["name"].as_str(), stored["namespace"].as_str()), (Some("Thing"), Some("t")));
}

#[tokio::test]
async fn concurrent_registration_of_one_schema_yields_one_id_and_one_version() {
    let registry = TestRegistry::spawn().await;
    let api = registry.client();
    let attempts = (0..16).map(|i| {
        let api = api.clone();
        let subject = if i % 2 == 0 { "x-value" } else { "y-value" };
        tokio::spawn(async move { api.register(subject, V1).await })
    });
    let ids: Vec<i64> = futures::future::join_all(attempts).await.into_iter().map(|r| r.unwrap()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(api.get("/subjects/x-value/versions").await.body, json!([1]));
    assert_eq!(api.get("/subjects/y-value/versions").await.body, json!([1]));
}

#[tokio::test]
async fn lookup_finds_a_registered_schema_and_names_what_is_missing() {
    let registry = TestRegistry::spawn().await;
    let api = registry.client();
    let id = api.register("s", V1).await;
    let found = api.post_schema("/subjects/s", V1_REFORMATTED).await;
    assert_eq!(found.status, 200);
    assert_eq!((found.body["id"].as_i64(), found.body["version"].as_i64()), (Some(id), Some(1)));
    assert_eq!(found.body["subject"], "s");
    let missing_schema = api.post_schema("/subjects/s", V2).await;
    assert_eq!((missing_schema.status, missing_schema.error_code()), (404, 40403));
    let missing_subject = api.post_schema("/subjects/nope", V1).await;
    assert_eq!((missing_subject.status, missing_subject.error_code()), (404, 40401));
}

#[tokio::test]
async fn versions_schemas_and_raw_schemas_are_served() {
    let registry = TestRegistry::spawn().await;
    let api = registry.client();
    api.register("s", V1).await;
    let id2 = api.register("s", V2).await;
    assert_eq!(api.get("/subjects").await.body, json!(["s"]));
    let v1 = api.get("/subjects/s/versions/1").await;
    assert_eq!(v1.body["version"], 1);
    let raw = api.get("/subjects/s/versions/2/schema").await;
    assert_eq!(raw.body["fields"][1]["name"], "b");
    let raw_by_id = api.get(&format!("/schemas/ids/{id2}/schema")).await;
    assert_eq!(raw_by_id.body, raw.body);
    assert_eq!(api.get("/mode").await.body, json!({"mode":"READWRITE"}));
}

#[tokio::test]
async fn unknown_subjects_versions_and_ids_get_confluent_error_codes() {
    let registry = TestRegistry::spawn().await;
    let api = registry.client();
    api.register("s", V1).await;
    for (path, status, code) in [
        ("/subjects/nope/versions", 404, 40401),
        ("/subjects/nope/versions/1", 404, 40401),
        ("/subjects/s/versions/7", 404, 40402),
        ("/schemas/ids/99999", 404, 40403),
        ("/subjects/s/versions/0", 422, 42202),
        ("/subjects/s/versions/first", 422, 42202),
        ("/config/s", 404, 40408),
    ] {
        let answer = api.get(path).await;
        assert_eq!((answer.status, answer.error_code()), (status, code), "{path}: {}", answer.text);
        assert!(answer.body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(answer.content_type, "application/vnd.schemaregistry.v1+json");
    }
}

#[tokio::test]
async fn bad_input_is_refused_with_the_right_code_and_nothing_is_stored() {
    let registry = TestRegistry::spawn().await;
    let api = registry.client();
    let cases = [
        ("{not json", 400, 400),
        (r#"{"schema": "{\"type\": \"record\", \"name\": \"X\"}"}"#, 422, 42201),
        (r#"{"schema": "{\"type\": \"nonsense\"}"}"#, 422, 42201),
        (r#"{"schema": ""}"#, 422, 42201),
        (r#"{}"#, 422, 42201),
        (r#"{"schema": "\"string\"", "schemaType": "PROTOBUF"}"#, 422, 42201),
        (r#"{"schema": "\"string\"", "references": [{"name":"x","subject":"y","version":1}]}"#, 422, 42201),
    ];
    for (body, status, code) in cases {
        let answer = api.send("POST", "/subjects/s/versions", Some(body.to_string())).await;
        assert_eq!((answer.status, answer.error_code()), (status, code), "{body}: {}", answer.text);
    }
    assert_eq!(api.get("/subjects").await.body, json!([]), "nothing stored");
    let huge = format!(r#"{{"schema": "{}"}}"#, "x".repeat(5 * 1024 * 1024));
    assert_eq!(api.send("POST", "/subjects/s/versions", Some(huge)).await.status, 413);
}

#[tokio::test]
async fn compatibility_levels_are_set_read_and_validated() {
    let registry = TestRegistry::spawn().await;
    let api = registry.client();
    assert_eq!(api.get("/config").await.body, json!({"compatibilityLevel": "BACKWARD"}));
    api.set_level(None, "FULL_TRANSITIVE").await;
    assert_eq!(api.get("/config").await.body, json!({"compatibilityLevel": "FULL_TRANSITIVE"}));
    api.set_level(Some("s"), "none").await;
    assert_eq!(api.get("/config/s").await.body, json!({"compatibilityLevel": "NONE"}));
    assert_eq!(
        api.get("/config/other?defaultToGlobal=true").await.body,
        json!({"compatibilityLevel": "FULL_TRANSITIVE"})
    );
    let bad = api.send("PUT", "/config", Some(r#"{"compatibility":"SIDEWAYS"}"#.into())).await;
    assert_eq!((bad.status, bad.error_code()), (422, 42203));
    let deleted = api.send("DELETE", "/config/s", None).await;
    assert_eq!(deleted.body, json!({"compatibilityLevel": "NONE"}));
    assert_eq!(api.get("/config/s").await.error_code(), 40408);
}

#[tokio::test]
async fn an_incompatible_schema_is_refused_with_409_and_the_reason() {
    let registry = TestRegistry::spawn().await;
    let api = registry.client();
    api.register("s", V1).await;
    let breaking = r#"{"type":"record","name":"Thing","namespace":"t","fields":[{"name":"a","type":"string"},{"name":"c","type":"int"}]}"#;
    let answer = api.post_schema("/subjects/s/versions", breaking).await;
    assert_eq!((answer.status, answer.error_code()), (409, 409));
    let message = answer.body["message"].as_str().unwrap();
    assert!(message.contains("READER_FIELD_MISSING_DEFAULT_VALUE") && message.contains("Thing.c"), "{message}");
    assert_eq!(api.get("/subjects/s/versions").await.body, json!([1]), "nothing stored");
}

#[tokio::test]
async fn soft_then_permanent_delete_of_versions_and_subjects() {
    let registry = TestRegistry::spawn().await;
    let api = registry.client();
    let id1 = api.register("s", V1).await;
    api.register("s", V2).await;

    let hard_first = api.send("DELETE", "/subjects/s/versions/2?permanent=true", None).await;
    assert_eq!((hard_first.status, hard_first.error_code()), (404, 40407));
    assert_eq!(api.send("DELETE", "/subjects/s/versions/2", None).await.body, json!(2));
    assert_eq!(api.send("DELETE", "/subjects/s/versions/2", None).await.error_code(), 40406);
    assert_eq!(api.get("/subjects/s/versions").await.body, json!([1]));
    assert_eq!(api.get("/subjects/s/versions?deleted=true").await.body, json!([1, 2]));
    assert_eq!(api.send("DELETE", "/subjects/s/versions/2?permanent=true", None).await.body, json!(2));
    assert_eq!(api.get("/subjects/s/versions?deleted=true").await.body, json!([1]));

    assert_eq!(api.send("DELETE", "/subjects/s?permanent=true", None).await.error_code(), 40405);
    assert_eq!(api.send("DELETE", "/subjects/s", None).await.body, json!([1]));
    assert_eq!(api.send("DELETE", "/subjects/s", None).await.error_code(), 40404);
    assert_eq!(api.get("/subjects").await.body, json!([]));
    assert_eq!(api.get("/subjects?deleted=true").await.body, json!(["s"]));
    // Ids stay resolvable after a soft delete: records written with them are still in topics.
    assert_eq!(api.get(&format!("/schemas/ids/{id1}")).await.status, 200);
    assert_eq!(api.send("DELETE", "/subjects/s?permanent=true", None).await.body, json!([1]));
    assert_eq!(api.get("/subjects?deleted=true").await.body, json!([]));
    assert_eq!(api.send("DELETE", "/subjects/s", None).await.error_code(), 40401);
}
