//! Who is calling: every order route takes a bearer JWT, verified by the platform's
//! [`Verifier`] (RS256, ES256 or EdDSA from the issuer's JWKS; `iss`, `aud`, `exp`, `nbf`), and
//! read here into what order-api decides on: the subject, the scopes and, for a token acting for
//! one customer, its `customer_id` claim.

pub use orderflow_platform::jwt::{AuthError, AuthSettings, JwksSource, Verifier};
use serde::Deserialize;

/// order-api's own defaults (the rest are the platform's, `orderflow_platform::jwt::defaults`).
pub mod defaults {
    pub use orderflow_platform::jwt::defaults::*;
    /// The audience a token for this API names unless `--jwt-audience` says otherwise.
    pub const AUDIENCE: &str = "orderflow-api";
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub scopes: Vec<String>,
    /// Set when the token acts for one customer: it may place and read only that customer's
    /// orders.
    pub customer_id: Option<String>,
}

pub mod scopes {
    /// Place orders (for any customer, unless the token names one).
    pub const WRITE: &str = "orders:write";
    /// Read any order.
    pub const READ: &str = "orders:read";
}

#[derive(Deserialize)]
struct OrderClaims {
    #[serde(default)]
    customer_id: Option<String>,
}

impl Principal {
    /// The caller behind an `Authorization` header value.
    pub async fn verify(verifier: &Verifier, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let token = verifier.verify::<OrderClaims>(authorization).await?;
        Ok(Principal {
            subject: token.subject,
            scopes: token.scopes,
            customer_id: token.claims.customer_id.filter(|c| !c.is_empty()),
        })
    }

    pub fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// Whether this caller may see an order placed for `customer_id`.
    pub fn may_read(&self, customer_id: &str) -> bool {
        self.has(scopes::READ) || self.customer_id.as_deref() == Some(customer_id)
    }
}
