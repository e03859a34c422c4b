//! The registry refuses strangers: every change needs a user of its users file (HTTP basic,
//! bcrypt) or a bearer token with `schemas:write`; reads are open unless closed; refusals are
//! Confluent-shaped 401/403 and change nothing. Checked over HTTP, through the project's own
//! `orderflow-schemas register`, and with Confluent's Python client (`basic.auth.user.info`).

use std::{process::Command, time::Duration};

use orderflow_registry::AccessSettings;
use orderflow_schemas::{EventCodec, RegistryAccess};
use orderflow_tests::{
    TestDatabase, binary,
    intake::TestIssuer,
    python,
    registry::{READER, RegistryHttp, TestRegistry, WRITER, write_users_file},
};
use orderflow_tools::issuer::Grant;
use serde_json::json;

fn schema(field: &str) -> String {
    json!({ "type": "record", "name": "Probe", "namespace": "io.orderflow.test",
            "fields": [{ "name": field, "type": "string", "default": "" }] })
    .to_string()
}

fn body(schema: &str) -> Option<String> {
    Some(json!({ "schema": schema }).to_string())
}

/// Every kind of change, as (method, path, body).
fn changes() -> Vec<(&'static str, &'static str, Option<String>)> {
    vec![
        ("POST", "/subjects/probe-value/versions", body(&schema("b"))),
        ("DELETE", "/subjects/probe-value/versions/1", None),
        ("DELETE", "/subjects/probe-value", None),
        ("PUT", "/config", Some(json!({ "compatibility": "NONE" }).to_string())),
        ("PUT", "/config/probe-value", Some(json!({ "compatibility": "NONE" }).to_string())),
        ("DELETE", "/config/probe-value", None),
        ("PUT", "/mode", Some(json!({ "mode": "READONLY" }).to_string())),
        ("PUT", "/mode/probe-value", Some(json!({ "mode": "READONLY" }).to_string())),
        ("DELETE", "/mode/probe-value", None),
    ]
}

/// What a change could alter, to compare before and after a refusal.
async fn state(registry: &TestRegistry) -> serde_json::Value {
    let c = registry.client();
    json!({
        "subjects": c.get("/subjects?deleted=true").await.body,
        "versions": c.get("/subjects/probe-value/versions?deleted=true").await.body,
        "config": c.get("/config").await.body,
        "subject_config": c.get("/config/probe-value").await.body,
        "mode": c.get("/mode").await.body,
        "subject_mode": c.get("/mode/probe-value").await.body,
    })
}

async fn with_probe() -> TestRegistry {
    let registry = TestRegistry::spawn().await;
    registry.client().register("probe-value", &schema("a")).await;
    registry.client().send("PUT", "/config/probe-value", Some(json!({ "compatibility": "FULL" }).to_string())).await;
    registry.client().send("PUT", "/mode/probe-value", Some(json!({ "mode": "READWRITE" }).to_string())).await;
    registry
}

#[tokio::test]
async fn every_change_without_or_with_wrong_credentials_is_401_in_confluents_shape_and_changes_nothing() {
    let registry = with_probe().await;
    let before = state(&registry).await;
    let strangers = [
        ("no credentials", registry.anonymous_client()),
        ("a wrong password", RegistryHttp::new(RegistryAccess::basic(&registry.url, WRITER, "not-the-password"))),
        ("an unknown user", RegistryHttp::new(RegistryAccess::basic(&registry.url, "mallory", &registry.password))),
        ("a made-up bearer token", RegistryHttp::new(RegistryAccess::bearer(&registry.url, "e30.e30.c2ln"))),
    ];
    for (who, client) in &strangers {
        for (method, path, body) in changes() {
            let answer = client.send(method, path, body).await;
            assert_eq!(answer.status, 401, "{who}: {method} {path}: {}", answer.text);
            assert_eq!(answer.error_code(), 40101, "{who}: {method} {path}");
            assert!(answer.body["message"].as_str().unwrap().starts_with("Unauthorized"), "{}", answer.text);
            assert_eq!(answer.content_type, "application/vnd.schemaregistry.v1+json");
        }
    }
    assert_eq!(state(&registry).await, before, "a refused request changed the registry");

    // The challenge names the scheme accepted.
    let raw = orderflow_tests::http().delete(format!("{}/subjects/probe-value", registry.url)).send().await.unwrap();
    assert_eq!(raw.headers()["www-authenticate"], "Basic realm=\"orderflow-registry\"");
    // A malformed header is refused too, not read as anonymous.
    for header in ["Basic !!!", "Basic bm9jb2xvbg==", "Digest x", "Basic"] {
        let answer = orderflow_tests::http()
            .get(format!("{}/subjects", registry.url))
            .header("Authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 401, "{header}");
    }
}

#[tokio::test]
async fn a_reader_reads_and_is_refused_changes_with_403_while_the_writer_makes_every_change() {
    let registry = with_probe().await;
    let reader = RegistryHttp::new(RegistryAccess::basic(&registry.url, READER, &registry.password));
    assert_eq!(reader.get("/subjects").await.status, 200);
    assert_eq!(reader.post_schema("/subjects/probe-value", &schema("a")).await.status, 200, "a lookup reads");
    let before = state(&registry).await;
    for (method, path, body) in changes() {
        let answer = reader.send(method, path, body).await;
        assert_eq!(answer.status, 403, "{method} {path}: {}", answer.text);
        assert_eq!(answer.error_code(), 40301);
        assert!(answer.text.contains(READER), "names the caller: {}", answer.text);
    }
    assert_eq!(state(&registry).await, before);

    let writer = registry.client();
    for (method, path, body) in changes() {
        let answer = writer.send(method, path, body).await;
        assert_eq!(answer.status, 200, "{method} {path}: {}", answer.text);
        if path == "/mode" {
            writer.send("PUT", "/mode", Some(json!({ "mode": "READWRITE" }).to_string())).await;
        }
    }
}

#[tokio::test]
async fn a_schema_the_subject_holds_is_answered_to_a_reader_but_a_new_one_needs_write_credentials() {
    let registry = TestRegistry::spawn_with_catalog().await;
    // A producer without credentials, as every service runs: its schemas were registered by the
    // schema workflow, so registering on first use only looks them up.
    let producer = EventCodec::new(registry.anonymous(), Duration::from_secs(5)).unwrap();
    let placed = orderflow_schemas::Catalog::embedded();
    let newest = placed.chains().find(|c| c[0].event == "OrderPlaced").unwrap().last().unwrap();
    let id = producer.schema_id(newest).await.expect("a registered schema needs no credentials");
    let subjects = registry.client().get("/subjects").await.body;

    let anonymous = registry.anonymous_client();
    let answer = anonymous.post_schema(&format!("/subjects/{}/versions", newest.subject()), &newest.text).await;
    assert_eq!((answer.status, answer.body["id"].as_u64()), (200, Some(u64::from(id))), "{}", answer.text);
    let answer = anonymous.post_schema("/subjects/brand-new-value/versions", &schema("x")).await;
    assert_eq!((answer.status, answer.error_code()), (401, 40101), "{}", answer.text);
    let answer = anonymous.post_schema(&format!("/subjects/{}/versions", newest.subject()), &schema("x")).await;
    assert_eq!(answer.status, 401, "a new version of a known subject needs credentials too: {}", answer.text);
    assert_eq!(registry.client().get("/subjects").await.body, subjects, "nothing registered");
}

#[tokio::test]
async fn closed_reads_need_a_user_and_health_and_metrics_stay_open() {
    let db = TestDatabase::create().await;
    let registry =
        TestRegistry::spawn_with(&db.url, |access| AccessSettings { anonymous_reads: false, ..access }).await;
    registry.client().register("probe-value", &schema("a")).await;
    let anonymous = registry.anonymous_client();
    for path in ["/subjects", "/schemas/ids/1", "/config", "/mode", "/subjects/probe-value/versions/latest"] {
        let answer = anonymous.get(path).await;
        assert_eq!((answer.status, answer.error_code()), (401, 40101), "{path}: {}", answer.text);
    }
    assert_eq!(anonymous.post_schema("/subjects/probe-value", &schema("a")).await.status, 401, "lookup");
    assert_eq!(
        anonymous.post_schema("/subjects/probe-value/versions", &schema("a")).await.status,
        401,
        "no lookup through register either"
    );
    for path in ["/healthz", "/metrics"] {
        assert_eq!(
            orderflow_tests::http().get(format!("{}{path}", registry.url)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    let reader = RegistryHttp::new(RegistryAccess::basic(&registry.url, READER, &registry.password));
    assert_eq!(reader.get("/subjects").await.body, json!(["probe-value"]));
}

#[tokio::test]
async fn tokens_with_schemas_write_change_the_registry_and_others_are_refused_by_reason() {
    let issuer = TestIssuer::new();
    let db = TestDatabase::create().await;
    let jwt = issuer.settings_for(orderflow_registry::access::AUDIENCE);
    let registry = TestRegistry::spawn_with(&db.url, |access| AccessSettings { jwt: Some(jwt), ..access }).await;
    let grant = |scope: &str| Grant {
        audience: orderflow_registry::access::AUDIENCE.into(),
        ..TestIssuer::grant("schema-pipeline", scope)
    };
    let as_token = |token: String| RegistryHttp::new(RegistryAccess::bearer(&registry.url, &token));

    let writer = as_token(issuer.token(&grant("schemas:write")));
    assert_eq!(writer.post_schema("/subjects/probe-value/versions", &schema("a")).await.status, 200);
    let answer = writer.send("PUT", "/config/probe-value", Some(json!({ "compatibility": "NONE" }).to_string())).await;
    assert_eq!(answer.status, 200, "{}", answer.text);

    let reader = as_token(issuer.token(&grant("schemas:read orders:write")));
    assert_eq!(reader.get("/subjects").await.status, 200);
    let answer = reader.send("DELETE", "/subjects/probe-value", None).await;
    assert_eq!((answer.status, answer.error_code()), (403, 40301), "{}", answer.text);
    assert!(answer.text.contains("schemas:write"), "says which scope: {}", answer.text);

    // A token for order-api is not a token for the registry; an expired one is refused.
    let for_api = as_token(issuer.token(&TestIssuer::grant("checkout", "schemas:write")));
    let answer = for_api.send("DELETE", "/subjects/probe-value", None).await;
    assert_eq!(answer.status, 401, "{}", answer.text);
    assert!(answer.text.contains("audience"), "{}", answer.text);
    let mut claims = grant("schemas:write").claims();
    claims["exp"] = json!(1_000_000);
    let answer = as_token(issuer.key.sign(&claims)).send("DELETE", "/subjects/probe-value", None).await;
    assert!(answer.status == 401 && answer.text.contains("expired"), "{}", answer.text);
    // Basic still works beside tokens, and the challenge offers both.
    assert_eq!(registry.client().get("/subjects").await.body, json!(["probe-value"]));
    let raw = orderflow_tests::http().delete(format!("{}/subjects/probe-value", registry.url)).send().await.unwrap();
    assert_eq!(
        raw.headers()["www-authenticate"],
        "Basic realm=\"orderflow-registry\", Bearer realm=\"orderflow-registry\""
    );
}

#[tokio::test]
async fn a_new_users_file_takes_effect_without_a_restart() {
    let registry = TestRegistry::spawn().await;
    let old = registry.client();
    assert_eq!(old.get("/subjects").await.status, 200);
    // The operator rotates the password: a new file moved into place.
    let rotated = write_users_file("the-new-password");
    std::thread::sleep(Duration::from_millis(20)); // a later modification time
    std::fs::copy(&rotated, &registry.users_file).unwrap();
    std::fs::remove_file(&rotated).unwrap();
    let answer = old.send("PUT", "/config", Some(json!({ "compatibility": "FULL" }).to_string())).await;
    assert_eq!(answer.status, 401, "the old password is refused at once: {}", answer.text);
    let new = RegistryHttp::new(RegistryAccess::basic(&registry.url, WRITER, "the-new-password"));
    let answer = new.send("PUT", "/config", Some(json!({ "compatibility": "FULL" }).to_string())).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
}

#[tokio::test]
async fn readonly_mode_freezes_registrations_and_deletions_until_set_back() {
    let registry = with_probe().await;
    let writer = registry.client();
    // The subject's own mode would win over the global one.
    assert_eq!(writer.send("DELETE", "/mode/probe-value", None).await.status, 200);
    writer.send("PUT", "/mode", Some(json!({ "mode": "READONLY" }).to_string())).await;
    assert_eq!(writer.get("/mode").await.body, json!({ "mode": "READONLY" }));
    let answer = writer.post_schema("/subjects/probe-value/versions", &schema("b")).await;
    assert_eq!((answer.status, answer.error_code()), (422, 42205), "{}", answer.text);
    let answer = writer.send("DELETE", "/subjects/probe-value", None).await;
    assert_eq!((answer.status, answer.error_code()), (422, 42205), "{}", answer.text);
    let answer = writer.post_schema("/subjects/probe-value/versions", &schema("a")).await;
    assert_eq!(answer.status, 200, "a schema already held is still answered: {}", answer.text);
    let answer = writer.send("PUT", "/mode", Some(json!({ "mode": "IMPORT" }).to_string())).await;
    assert_eq!((answer.status, answer.error_code()), (422, 42204), "{}", answer.text);
    writer.send("PUT", "/mode", Some(json!({ "mode": "READWRITE" }).to_string())).await;
    assert_eq!(writer.post_schema("/subjects/probe-value/versions", &schema("b")).await.status, 200);
}

/// `orderflow-schemas register` as the chart's hook runs it, against a registry of ours.
fn register_command(registry: &TestRegistry) -> Command {
    let mut command = Command::new(binary("orderflow-schemas"));
    command
        .args(["register", "--registry", &registry.url])
        .env("ORDERFLOW_SCHEMAS_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/avro"))
        .env_remove("ORDERFLOW_REGISTRY_USER")
        .env_remove("ORDERFLOW_REGISTRY_PASSWORD")
        .env_remove("ORDERFLOW_REGISTRY_PASSWORD_FILE")
        .env_remove("ORDERFLOW_REGISTRY_TOKEN");
    command
}

// Multi-threaded: the registry answers while this thread waits for the child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderflow_schemas_register_uses_credentials_from_a_file_and_never_takes_them_on_the_command_line() {
    let registry = TestRegistry::spawn().await;
    let without = register_command(&registry).output().unwrap();
    assert!(!without.status.success());
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(stderr.contains("401") && stderr.contains("40101"), "{stderr}");

    let on_argv = register_command(&registry)
        .args(["--registry-user", WRITER, "--registry-password", &registry.password])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&on_argv.stderr);
    assert!(!on_argv.status.success() && stderr.contains("never on the command line"), "{stderr}");
    assert!(!stderr.contains(&registry.password), "the refusal repeats no secret: {stderr}");

    let secret = std::env::temp_dir().join(format!("orderflow-registry-password-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&secret, format!("{}\n", registry.password)).unwrap();
    let with = register_command(&registry)
        .env("ORDERFLOW_REGISTRY_USER", WRITER)
        .env("ORDERFLOW_REGISTRY_PASSWORD_FILE", &secret)
        .output()
        .unwrap();
    std::fs::remove_file(&secret).unwrap();
    assert!(with.status.success(), "{}", String::from_utf8_lossy(&with.stderr));
    let subjects = registry.client().get("/subjects").await.body;
    assert!(subjects.as_array().unwrap().len() >= 5, "{subjects}");
}

#[test]
fn the_registry_will_not_start_without_a_way_to_authenticate_writers() {
    let output = Command::new(binary("orderflow-registry"))
        .env("ORDERFLOW_REGISTRY_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env_remove("ORDERFLOW_REGISTRY_USERS_FILE")
        .env_remove("ORDERFLOW_REGISTRY_JWKS_FILE")
        .env_remove("ORDERFLOW_REGISTRY_JWKS_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("users file"), "{stderr}");
}

#[test]
fn hash_password_writes_a_users_file_line_the_registry_accepts() {
    use std::io::Write;
    let mut child = Command::new(binary("orderflow-registry"))
        .args(["hash-password", "--user", "ci", "--role", "read", "--cost", "4"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let output = child.wait_with_output().unwrap();
    let line = String::from_utf8(output.stdout).unwrap();
    let parts: Vec<&str> = line.trim().split(':').collect();
    assert_eq!((parts[0], parts[2]), ("ci", "read"), "{line}");
    assert!(bcrypt::verify("s3cret", parts[1]).unwrap(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluents_python_client_registers_with_basic_auth_user_info_and_gets_401_without() {
    let registry = TestRegistry::spawn().await;
    let script = r#"
import sys, json
from confluent_kafka.schema_registry import SchemaRegistryClient, Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError
url, user, password = sys.argv[1:4]
schema = Schema(json.dumps({"type": "record", "name": "Probe", "fields": [{"name": "a", "type": "string"}]}), "AVRO")
result = {}
client = SchemaRegistryClient({"url": url, "basic.auth.user.info": f"{user}:{password}"})
result["id"] = client.register_schema("probe-value", schema)
result["latest"] = client.get_latest_version("probe-value").version
stranger = SchemaRegistryClient({"url": url, "basic.auth.user.info": f"{user}:wrong"})
try:
    stranger.register_schema("other-value", schema)
except SchemaRegistryError as e:
    result["refused"] = [e.http_status_code, e.error_code]
anonymous = SchemaRegistryClient({"url": url})
result["anonymous_read"] = anonymous.get_schema(result["id"]).schema_str is not None
try:
    anonymous.set_compatibility("probe-value", "NONE")
except SchemaRegistryError as e:
    result["anonymous_config"] = [e.http_status_code, e.error_code]
print(json.dumps(result))
"#;
    let output = Command::new(python())
        .args(["-c", script, &registry.url, WRITER, &registry.password])
        .output()
        .expect("run the project's Python");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["latest"], 1, "{result}");
    assert_eq!(result["refused"], json!([401, 40101]), "{result}");
    assert_eq!(result["anonymous_read"], true, "{result}");
    assert_eq!(result["anonymous_config"], json!([401, 40101]), "{result}");
    assert_eq!(registry.client().get("/subjects").await.body, json!(["probe-value"]));
}
