//! The registry REST calls the PR workflow makes (`orderflow-schemas check|register`).
//! Producers and consumers go through [`crate::codec`] instead.

use serde::Deserialize;
use serde_json::json;

use crate::registry_access::RegistryAccess;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// A registry answer that was not a success, with Confluent's error code when it sent one.
#[derive(Debug, thiserror::Error)]
pub enum RegistryCallError {
    #[error("registry at {url} is unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("registry answered {status} (error_code {error_code}): {message}")]
    Api { status: u16, error_code: i64, message: String },
}

#[derive(Debug, Deserialize)]
pub struct Registered {
    pub id: u32,
}

#[derive(Debug, Deserialize)]
pub struct SubjectVersion {
    pub subject: String,
    pub id: u32,
    pub version: u32,
}

#[derive(Debug, Deserialize)]
pub struct CompatibilityAnswer {
    pub is_compatible: bool,
    #[serde(default)]
    pub messages: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    error_code: i64,
    message: String,
}

pub struct RegistryClient {
    access: RegistryAccess,
    http: reqwest::Client,
}

impl RegistryClient {
    pub fn new(access: impl Into<RegistryAccess>) -> Self {
        let http = orderflow_http::client()
            .timeout(std::time::Duration::from_secs(10))
            .no_proxy()
            .build()
            .expect("a plain HTTP client builds");
        RegistryClient { access: access.into(), http }
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, RegistryCallError> {
        let url = format!("{}{path}", self.access.url);
        let mut request = self.access.authorize(self.http.request(method, &url)).header("Accept", CONTENT_TYPE);
        if let Some(body) = body {
            request = request.header("Content-Type", CONTENT_TYPE).body(body.to_string());
        }
        let unreachable =
            |e: reqwest::Error| RegistryCallError::Unreachable { url: url.clone(), detail: e.to_string() };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(unreachable)?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| RegistryCallError::Unreachable {
                url: url.clone(),
                detail: format!("unexpected answer {text:?}: {e}"),
            });
        }
        let ApiError { error_code, message } =
            serde_json::from_str(&text).unwrap_or(ApiError { error_code: status.as_u16().into(), message: text });
        Err(RegistryCallError::Api { status: status.as_u16(), error_code, message })
    }

    /// Registers (or finds) a schema under a subject; returns its global id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryCallError> {
        let body = json!({ "schema": schema });
        let r: Registered =
            self.call(reqwest::Method::POST, &format!("/subjects/{subject}/versions"), Some(body)).await?;
        Ok(r.id)
    }

    /// Looks a schema up under a subject; `None` when the subject or the schema is not there.
    pub async fn lookup(&self, subject: &str, schema: &str) -> Result<Option<SubjectVersion>, RegistryCallError> {
        let body = json!({ "schema": schema });
        match self.call(reqwest::Method::POST, &format!("/subjects/{subject}"), Some(body)).await {
            Ok(found) => Ok(Some(found)),
            Err(RegistryCallError::Api { error_code: 40401 | 40403, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Versions registered under a subject (empty when the subject does not exist).
    pub async fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryCallError> {
        match self.call(reqwest::Method::GET, &format!("/subjects/{subject}/versions"), None).await {
            Ok(v) => Ok(v),
            Err(RegistryCallError::Api { error_code: 40401, .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Checks a schema against the subject under the subject's configured level.
    pub async fn check_compatibility(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<CompatibilityAnswer, RegistryCallError> {
        let body = json!({ "schema": schema });
        self.call(
            reqwest::Method::POST,
            &format!("/compatibility/subjects/{subject}/versions?verbose=true"),
            Some(body),
        )
        .await
    }
}
