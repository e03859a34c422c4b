//! Who may change anything through the console, and how a change is told from a forgery.
//!
//! Every `/operate/*` page needs HTTP basic credentials of an `operator` from the users file
//! (`--operators-file`, the platform's bcrypt users file; a `viewer` may sign in and is
//! refused); without a file the console is read-only and says so. A confirmation (POST) must
//! carry the preview's form token — an HMAC of the operator's name and an expiry under a key of
//! this process, so another site cannot forge one — and must not come from another origin
//! (`Origin`, `Sec-Fetch-Site`).

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use hmac::{Hmac, Mac};
use orderflow_platform::users_file::{SignedIn, UsersFile};
use sha2::Sha256;

use crate::page::{esc, layout};

/// The roles of the operators file; a line without one is an operator.
pub const ROLES: &[&str] = &["operator", "viewer"];
/// How long a preview's form token stays good.
const TOKEN_SECS: i64 = 3600;

/// Who may act, and the key of the form tokens.
pub struct Operators {
    pub users: Option<UsersFile>,
    key: [u8; 32],
}

impl Operators {
    pub fn new(users: Option<UsersFile>) -> Operators {
        Operators { users, key: rand::random() }
    }

    /// The signed-in operator, or the response refusing the request.
    pub(crate) async fn operator(&self, headers: &HeaderMap) -> Result<SignedIn, Response> {
        let Some(users) = &self.users else {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "This console is read-only: it was started without an operators file (--operators-file), so nobody \
                 may replay, triage or rewind here.",
            ));
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(challenge("Sign in as an operator to replay, triage or rewind."));
        };
        let encoded = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
            .ok_or_else(|| challenge("The console accepts basic credentials only."))?;
        let signed_in = users.verify_basic(encoded).await.map_err(|refused| challenge(&refused.0))?;
        if signed_in.role != "operator" {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                &format!("{} is a {}: replay, triage and rewind need an operator.", signed_in.name, signed_in.role),
            ));
        }
        Ok(signed_in)
    }

    fn token(&self, user: &str, expires: i64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(user.as_bytes());
        mac.update(b"\0");
        mac.update(expires.to_string().as_bytes());
        let digest: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        format!("{expires}.{digest}")
    }

    /// A form token for `user`, good for an hour.
    pub(crate) fn issue(&self, user: &str) -> String {
        self.token(user, chrono::Utc::now().timestamp() + TOKEN_SECS)
    }

    /// Whether `token` was issued to `user` by this process and is still good.
    fn check(&self, user: &str, token: &str) -> bool {
        let Some((expires, _)) = token.split_once('.') else { return false };
        let Ok(expires) = expires.parse::<i64>() else { return false };
        // Equal length and every byte compared: the HMAC is the secret part.
        let expected = self.token(user, expires);
        expires >= chrono::Utc::now().timestamp()
            && expected.len() == token.len()
            && expected.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// The checks every POST passes before it acts: same origin, an operator, a good token.
    pub(crate) async fn confirm(&self, headers: &HeaderMap, token: &str) -> Result<SignedIn, Response> {
        if !same_origin(headers) {
            return Err(refuse(StatusCode::FORBIDDEN, "A change must come from the console's own pages."));
        }
        let operator = self.operator(headers).await?;
        if !self.check(&operator.name, token) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "The form's token is missing, expired or not yours: open the preview again and confirm from there.",
            ));
        }
        Ok(operator)
    }
}

/// Refuses a request another site's page sent (a browser says so in `Sec-Fetch-Site` and
/// `Origin`).
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let origin_host = origin.to_str().ok().and_then(|o| o.split_once("://")).map(|(_, rest)| rest);
    !host.is_empty() && origin_host == Some(host)
}

pub(crate) fn refuse(status: StatusCode, why: &str) -> Response {
    (status, Html(layout("Not allowed", &format!("<p class=\"error\">{}</p>", esc(why))))).into_response()
}

fn challenge(why: &str) -> Response {
    let mut response = refuse(StatusCode::UNAUTHORIZED, why);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"orderflow console\", charset=\"UTF-8\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_token_is_the_operators_own_and_expires() {
        let operators = Operators::new(None);
        let token = operators.issue("ana");
        assert!(operators.check("ana", &token));
        assert!(!operators.check("bo", &token));
        assert!(!operators.check("ana", &token.replace('.', ".0")));
        assert!(!operators.check("ana", ""));
        let stale = operators.token("ana", chrono::Utc::now().timestamp() - 1);
        assert!(!operators.check("ana", &stale));
        assert!(!Operators::new(None).check("ana", &token), "another process's key");
    }

    #[test]
    fn a_post_from_another_site_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("console:8070"));
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://console:8070"));
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&headers), "a page with no origin of its own");
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://console:8070"));
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&headers));
    }
}
