//! The payment provider's HTTP API as the payment service calls it. Every charge carries an
//! idempotency key derived from the order, the same on every retry, restart and redelivery, so
//! asking again can never charge twice.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

/// What the provider said, classified for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Approved { provider_reference: String },
    Declined { code: String },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ChargeError {
    /// No answer or a 5xx: the charge may or may not exist; retry with the same key.
    #[error("ambiguous provider outcome: {0}")]
    Ambiguous(String),
    /// 429: retry after the given wait.
    #[error("rate limited for {0:?}")]
    RateLimited(Duration),
    /// A 4xx that retrying cannot fix (our request is wrong, or the key was reused).
    #[error("provider rejected the request: {0}")]
    Rejected(String),
    /// The provider refuses how we call it (API version, credentials): no order is at fault
    /// and none can succeed until an operator fixes the configuration.
    #[error("provider refuses our configuration: {0}")]
    Misconfigured(String),
}

#[derive(Clone)]
pub struct PaymentProviderClient {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Answer {
    id: String,
    status: String,
    decline_code: Option<String>,
}

impl PaymentProviderClient {
    pub fn new(base: &str, timeout: Duration) -> Self {
        let http = reqwest::Client::builder().timeout(timeout).no_proxy().build().expect("HTTP client");
        PaymentProviderClient { base: base.trim_end_matches('/').into(), http }
    }

    pub async fn charge(
        &self,
        idempotency_key: &str,
        amount_minor: i64,
        currency: &str,
        customer: &str,
        reference: &str,
    ) -> Result<ChargeOutcome, ChargeError> {
        let body =
            json!({ "amount_minor": amount_minor, "currency": currency, "customer": customer, "reference": reference });
        let answer = self.post("/v1/charges", idempotency_key, &body).await?;
        match answer.status.as_str() {
            "approved" => Ok(ChargeOutcome::Approved { provider_reference: answer.id }),
            "declined" => Ok(ChargeOutcome::Declined { code: answer.decline_code.unwrap_or_else(|| "unknown".into()) }),
            other => Err(ChargeError::Ambiguous(format!("unknown charge status {other:?}"))),
        }
    }

    /// Refunds `amount_minor` of the charge `charge_id`; returns the refund's reference. The
    /// key is the refund's own (never the charge's), stable across retries.
    pub async fn refund(
        &self,
        idempotency_key: &str,
        charge_id: &str,
        amount_minor: i64,
        reference: &str,
    ) -> Result<String, ChargeError> {
        let body = json!({ "charge_id": charge_id, "amount_minor": amount_minor, "reference": reference });
        let answer = self.post("/v1/refunds", idempotency_key, &body).await?;
        match answer.status.as_str() {
            "refunded" => Ok(answer.id),
            other => Err(ChargeError::Ambiguous(format!("unknown refund status {other:?}"))),
        }
    }

    async fn post(&self, path: &str, idempotency_key: &str, body: &serde_json::Value) -> Result<Answer, ChargeError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Idempotency-Key", idempotency_key)
            .json(body)
            .send()
            .await
            .map_err(|e| ChargeError::Ambiguous(e.to_string()))?;
        let status = response.status();
        if status.as_u16() == 429 {
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1);
            return Err(ChargeError::RateLimited(Duration::from_secs(wait)));
        }
        let text = response.text().await.map_err(|e| ChargeError::Ambiguous(e.to_string()))?;
        if status.is_server_error() {
            return Err(ChargeError::Ambiguous(format!("{status}: {text}")));
        }
        let misconfigured = matches!(status.as_u16(), 401 | 403) || text.contains("\"api_version_mismatch\"");
        if misconfigured {
            return Err(ChargeError::Misconfigured(format!("{status}: {text}")));
        }
        if !status.is_success() {
            return Err(ChargeError::Rejected(format!("{status}: {text}")));
        }
        serde_json::from_str(&text).map_err(|e| ChargeError::Ambiguous(format!("unreadable 200 answer {text:?}: {e}")))
    }
}
