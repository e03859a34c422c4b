//! The Confluent Schema Registry REST API, as real clients (Java/librdkafka serdes,
//! schema_registry_converter, the Confluent CLI) use it.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Extension, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use orderflow_schemas::CompatibilityLevel;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    access::{self, Access, LookupOnly},
    error::{ApiError, CONTENT_TYPE},
    store::{Mode, ParsedSchema, Store, VersionSpec},
};

type Flags = Query<HashMap<String, String>>;

/// The API, every request passing [`access::gate`] first.
pub fn router(store: Store, access: Arc<Access>) -> Router {
    Router::new()
        .route("/", get(|| async { reply(json!({})) }))
        .route("/healthz", get(healthz))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(list_versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(get_version).delete(delete_version))
        .route("/subjects/{subject}/versions/{version}/schema", get(get_version_schema))
        .route("/schemas/ids/{id}", get(get_schema))
        .route("/schemas/ids/{id}/schema", get(get_raw_schema))
        .route("/schemas/ids/{id}/versions", get(get_schema_usages))
        .route("/compatibility/subjects/{subject}/versions", post(check_all))
        .route("/compatibility/subjects/{subject}/versions/{version}", post(check_version))
        .route("/config", get(get_global_config).put(put_global_config))
        .route("/config/{subject}", get(get_subject_config).put(put_subject_config).delete(delete_subject_config))
        .route("/mode", get(get_global_mode).put(put_global_mode))
        .route("/mode/{subject}", get(get_subject_mode).put(put_subject_mode).delete(delete_subject_mode))
        .route("/schemas/types", get(|| async { reply(json!(["AVRO"])) }))
        .with_state(store)
        .layer(axum::middleware::from_fn_with_state(access, access::gate))
}

fn reply(body: Value) -> Response {
    let mut response = body.to_string().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

fn flag(flags: &Flags, name: &str) -> bool {
    flags.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn checked_subject(subject: String) -> Result<String, ApiError> {
    if subject.is_empty() || subject.chars().any(char::is_control) {
        return Err(ApiError::InvalidSubject(subject));
    }
    Ok(subject)
}

/// The body clients send with a schema. Unknown fields (metadata, ruleSet) are tolerated, as
/// Confluent does; references are refused since this registry resolves none.
#[derive(Deserialize)]
struct SchemaBody {
    #[serde(default)]
    schema: Option<String>,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

fn parse_body(body: &Bytes) -> Result<ParsedSchema, ApiError> {
    let body: SchemaBody = serde_json::from_slice(body).map_err(|e| ApiError::MalformedBody(e.to_string()))?;
    if let Some(kind) = body.schema_type.as_deref().filter(|k| !k.eq_ignore_ascii_case("AVRO")) {
        return Err(ApiError::InvalidSchema(format!(
            "schemaType {kind} is not supported; this registry holds AVRO only"
        )));
    }
    if !body.references.is_empty() {
        return Err(ApiError::InvalidSchema("schema references are not supported; inline the referenced types".into()));
    }
    ParsedSchema::parse(body.schema.as_deref().unwrap_or_default())
}

async fn healthz(State(store): State<Store>) -> Result<Response, ApiError> {
    store.ping().await?;
    Ok(reply(json!({ "status": "ok" })))
}

async fn list_subjects(State(store): State<Store>, flags: Flags) -> Result<Response, ApiError> {
    Ok(reply(json!(store.subjects(flag(&flags, "deleted")).await?)))
}

/// Registers a schema; a caller that may only read gets the id of a schema the subject already
/// holds (what a lookup would answer) and the gate's refusal otherwise.
async fn register(
    State(store): State<Store>,
    Path(subject): Path<String>,
    lookup_only: Option<Extension<LookupOnly>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let subject = checked_subject(subject)?;
    let parsed = parse_body(&body)?;
    if let Some(Extension(only)) = lookup_only {
        return match store.lookup(&subject, &parsed, false).await {
            Ok(row) => Ok(reply(json!({ "id": row.schema_id }))),
            Err(ApiError::SubjectNotFound(_) | ApiError::SchemaNotFound) => Err(only.refusal()),
            Err(other) => Err(other),
        };
    }
    let id = store.register(&subject, &parsed).await?;
    tracing::info!(%subject, id, "schema registered");
    Ok(reply(json!({ "id": id })))
}

async fn lookup(
    State(store): State<Store>,
    Path(subject): Path<String>,
    flags: Flags,
    body: Bytes,
) -> Result<Response, ApiError> {
    let parsed = parse_body(&body)?;
    let row = store.lookup(&subject, &parsed, flag(&flags, "deleted")).await?;
    Ok(reply(json!({ "subject": row.subject, "id": row.schema_id, "version": row.version, "schema": row.schema_text })))
}

async fn list_versions(
    State(store): State<Store>,
    Path(subject): Path<String>,
    flags: Flags,
) -> Result<Response, ApiError> {
    Ok(reply(json!(store.versions(&subject, flag(&flags, "deleted")).await?)))
}

async fn get_version(
    State(store): State<Store>,
    Path((subject, version)): Path<(String, String)>,
    flags: Flags,
) -> Result<Response, ApiError> {
    let row = store.version(&subject, VersionSpec::parse(&version)?, flag(&flags, "deleted")).await?;
    Ok(reply(json!({ "subject": row.subject, "id": row.schema_id, "version": row.version, "schema": row.schema_text })))
}

async fn get_version_schema(
    State(store): State<Store>,
    Path((subject, version)): Path<(String, String)>,
    flags: Flags,
) -> Result<Response, ApiError> {
    let row = store.version(&subject, VersionSpec::parse(&version)?, flag(&flags, "deleted")).await?;
    Ok(raw(row.schema_text))
}

fn raw(schema_text: String) -> Response {
    let mut response = schema_text.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

fn parse_id(raw: &str) -> Result<i32, ApiError> {
    raw.parse::<i32>().map_err(|_| ApiError::SchemaNotFound)
}

async fn get_schema(State(store): State<Store>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(reply(json!({ "schema": store.schema_by_id(parse_id(&id)?).await? })))
}

async fn get_raw_schema(State(store): State<Store>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(raw(store.schema_by_id(parse_id(&id)?).await?))
}

async fn get_schema_usages(
    State(store): State<Store>,
    Path(id): Path<String>,
    flags: Flags,
) -> Result<Response, ApiError> {
    let usages = store.usages_of_schema(parse_id(&id)?, flag(&flags, "deleted")).await?;
    let body: Vec<Value> =
        usages.into_iter().map(|(subject, version)| json!({ "subject": subject, "version": version })).collect();
    Ok(reply(json!(body)))
}

async fn delete_subject(
    State(store): State<Store>,
    Path(subject): Path<String>,
    flags: Flags,
) -> Result<Response, ApiError> {
    let permanent = flag(&flags, "permanent");
    let versions = store.delete_subject(&subject, permanent).await?;
    tracing::info!(%subject, permanent, ?versions, "subject deleted");
    Ok(reply(json!(versions)))
}

async fn delete_version(
    State(store): State<Store>,
    Path((subject, version)): Path<(String, String)>,
    flags: Flags,
) -> Result<Response, ApiError> {
    let permanent = flag(&flags, "permanent");
    let version = store.delete_version(&subject, VersionSpec::parse(&version)?, permanent).await?;
    tracing::info!(%subject, version, permanent, "version deleted");
    Ok(reply(json!(version)))
}

fn compatibility_reply(problems: Vec<String>, verbose: bool) -> Response {
    let mut body = json!({ "is_compatible": problems.is_empty() });
    if verbose {
        body["messages"] = json!(problems);
    }
    reply(body)
}

async fn check_all(
    State(store): State<Store>,
    Path(subject): Path<String>,
    flags: Flags,
    body: Bytes,
) -> Result<Response, ApiError> {
    let parsed = parse_body(&body)?;
    let problems = store.check(&subject, &parsed, None).await?;
    Ok(compatibility_reply(problems, flag(&flags, "verbose")))
}

async fn check_version(
    State(store): State<Store>,
    Path((subject, version)): Path<(String, String)>,
    flags: Flags,
    body: Bytes,
) -> Result<Response, ApiError> {
    let spec = VersionSpec::parse(&version)?;
    let parsed = parse_body(&body)?;
    let problems = store.check(&subject, &parsed, Some(spec)).await?;
    Ok(compatibility_reply(problems, flag(&flags, "verbose")))
}

#[derive(Deserialize)]
struct ConfigBody {
    compatibility: Option<String>,
}

fn parse_level(body: &Bytes) -> Result<CompatibilityLevel, ApiError> {
    let body: ConfigBody = serde_json::from_slice(body).map_err(|e| ApiError::MalformedBody(e.to_string()))?;
    let raw = body.compatibility.unwrap_or_default();
    raw.parse().map_err(|_| ApiError::InvalidCompatibilityLevel(raw))
}

async fn get_global_config(State(store): State<Store>) -> Result<Response, ApiError> {
    Ok(reply(json!({ "compatibilityLevel": store.global_level().await?.as_str() })))
}

async fn put_global_config(State(store): State<Store>, body: Bytes) -> Result<Response, ApiError> {
    let level = parse_level(&body)?;
    store.set_level(None, level).await?;
    Ok(reply(json!({ "compatibility": level.as_str() })))
}

async fn get_subject_config(
    State(store): State<Store>,
    Path(subject): Path<String>,
    flags: Flags,
) -> Result<Response, ApiError> {
    let level = match store.level(Some(&subject)).await? {
        Some(level) => level,
        None if flag(&flags, "defaultToGlobal") => store.global_level().await?,
        None => return Err(ApiError::SubjectConfigNotFound(subject)),
    };
    Ok(reply(json!({ "compatibilityLevel": level.as_str() })))
}

async fn put_subject_config(
    State(store): State<Store>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let subject = checked_subject(subject)?;
    let level = parse_level(&body)?;
    store.set_level(Some(&subject), level).await?;
    Ok(reply(json!({ "compatibility": level.as_str() })))
}

async fn delete_subject_config(State(store): State<Store>, Path(subject): Path<String>) -> Result<Response, ApiError> {
    match store.delete_level(Some(&subject)).await? {
        Some(level) => Ok(reply(json!({ "compatibilityLevel": level.as_str() }))),
        None => Err(ApiError::SubjectConfigNotFound(subject)),
    }
}

#[derive(Deserialize)]
struct ModeBody {
    mode: Option<String>,
}

fn parse_mode(body: &Bytes) -> Result<Mode, ApiError> {
    let body: ModeBody = serde_json::from_slice(body).map_err(|e| ApiError::MalformedBody(e.to_string()))?;
    body.mode.unwrap_or_default().parse()
}

async fn get_global_mode(State(store): State<Store>) -> Result<Response, ApiError> {
    Ok(reply(json!({ "mode": store.mode(None).await?.unwrap_or(Mode::ReadWrite).as_str() })))
}

async fn put_global_mode(State(store): State<Store>, body: Bytes) -> Result<Response, ApiError> {
    let mode = parse_mode(&body)?;
    store.set_mode(None, mode).await?;
    tracing::info!(mode = mode.as_str(), "registry mode set");
    Ok(reply(json!({ "mode": mode.as_str() })))
}

async fn get_subject_mode(
    State(store): State<Store>,
    Path(subject): Path<String>,
    flags: Flags,
) -> Result<Response, ApiError> {
    let mode = match store.mode(Some(&subject)).await? {
        Some(mode) => mode,
        None if flag(&flags, "defaultToGlobal") => store.mode(None).await?.unwrap_or(Mode::ReadWrite),
        None => return Err(ApiError::SubjectModeNotFound(subject)),
    };
    Ok(reply(json!({ "mode": mode.as_str() })))
}

async fn put_subject_mode(
    State(store): State<Store>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let subject = checked_subject(subject)?;
    let mode = parse_mode(&body)?;
    store.set_mode(Some(&subject), mode).await?;
    tracing::info!(%subject, mode = mode.as_str(), "subject mode set");
    Ok(reply(json!({ "mode": mode.as_str() })))
}

async fn delete_subject_mode(State(store): State<Store>, Path(subject): Path<String>) -> Result<Response, ApiError> {
    match store.delete_mode(Some(&subject)).await? {
        Some(mode) => Ok(reply(json!({ "mode": mode.as_str() }))),
        None => Err(ApiError::SubjectModeNotFound(subject)),
    }
}
