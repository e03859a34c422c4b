//! Who may read and change the registry.
//!
//! Every change — registering a schema, deleting a subject or version, setting a compatibility
//! level or a mode — needs credentials: HTTP basic checked against a file of bcrypt hashes (the
//! `htpasswd -B` format, re-read when it changes), or a bearer JWT with the `schemas:write` scope
//! verified like order-api's. Reads are open unless `anonymous_reads` is off; then they need a
//! user (either role) or a token with `schemas:read` or `schemas:write`. Health and metrics stay
//! open. Refusals are 401 (no or wrong credentials) or 403 (known caller, not allowed), in
//! Confluent's error shape.
//!
//! One exception keeps producers that register on first use (Confluent's serializers,
//! schema_registry_converter) working without write credentials: registering a schema the
//! subject already holds writes nothing, so a caller allowed to read gets its id, exactly as the
//! lookup (`POST /subjects/{subject}`) would answer. A schema the subject does not hold yet needs
//! write credentials: new schemas arrive through the schema workflow, not from a producer.
//!
//! The policy is one table ([`needed`]) applied by one middleware ([`gate`]), so no route can
//! be added without a decision.

use std::{path::PathBuf, sync::Arc};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use orderflow_platform::{
    jwt::{AuthError, AuthSettings, NoClaims, Verifier},
    users_file::UsersFile,
};

use crate::error::ApiError;

/// Scopes a token may carry.
pub mod scopes {
    pub const WRITE: &str = "schemas:write";
    pub const READ: &str = "schemas:read";
}

/// The audience a token for the registry names unless configured otherwise.
pub const AUDIENCE: &str = "orderflow-registry";

/// The roles of the users file; a line without one is a writer.
const ROLES: &[&str] = &["write", "read"];

#[derive(Debug, Clone, Default)]
pub struct AccessSettings {
    /// Users allowed in with HTTP basic: `name:bcrypt-hash[:read|write]` per line.
    pub users_file: Option<PathBuf>,
    /// Bearer tokens accepted, if set.
    pub jwt: Option<AuthSettings>,
    /// Whether reads need no credentials.
    pub anonymous_reads: bool,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Health and metrics.
    Nothing,
    Read,
    /// Registering: write, or read when the subject already holds the schema.
    Register,
    Write,
}

/// The policy: what each request needs, by method and path.
pub fn needed(method: &Method, path: &str) -> Need {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (_, [""] | ["healthz"] | ["metrics"]) => Need::Nothing,
        (&Method::GET | &Method::HEAD, _) => Need::Read,
        // A lookup and the compatibility checks read.
        (&Method::POST, ["subjects", _]) | (&Method::POST, ["compatibility", ..]) => Need::Read,
        (&Method::POST, ["subjects", _, "versions"]) => Need::Register,
        _ => Need::Write,
    }
}

/// An authenticated (or anonymous) caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    User { name: String, may_write: bool },
    Token { subject: String, scopes: Vec<String> },
}

impl Caller {
    fn may_write(&self) -> bool {
        match self {
            Caller::Anonymous => false,
            Caller::User { may_write, .. } => *may_write,
            Caller::Token { scopes, .. } => scopes.iter().any(|s| s == scopes::WRITE),
        }
    }

    fn may_read(&self) -> bool {
        match self {
            Caller::Anonymous => false,
            Caller::User { .. } => true,
            Caller::Token { scopes, .. } => scopes.iter().any(|s| s == scopes::WRITE || s == scopes::READ),
        }
    }

    fn name(&self) -> &str {
        match self {
            Caller::Anonymous => "anonymous",
            Caller::User { name, .. } => name,
            Caller::Token { subject, .. } => subject,
        }
    }
}

/// Set on a register request whose caller may only read: the handler answers it only if the
/// subject already holds the schema, and otherwise with [`LookupOnly::refusal`].
#[derive(Debug, Clone)]
pub struct LookupOnly {
    anonymous: bool,
    message: String,
}

impl LookupOnly {
    pub fn refusal(&self) -> ApiError {
        match self.anonymous {
            true => ApiError::Unauthenticated(self.message.clone()),
            false => ApiError::Forbidden(self.message.clone()),
        }
    }
}

pub struct Access {
    /// Users who sign in with HTTP basic (the platform's users file).
    users: Option<UsersFile>,
    verifier: Option<Verifier>,
    anonymous_reads: bool,
}

impl AccessSettings {
    /// At least one way to authenticate a writer must be configured: a registry anyone can
    /// change is refused at start.
    pub fn ensure_writers(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.users_file.is_some() || self.jwt.is_some(),
            "the registry needs a users file (--users-file) or a token issuer (--jwks-file/--jwks-url and \
             --jwt-issuer): without one nobody could register a schema, and it will not run open to anyone"
        );
        Ok(())
    }
}

impl Access {
    /// Reads the users file and the key set ([`AccessSettings::ensure_writers`] first).
    pub async fn new(settings: AccessSettings) -> anyhow::Result<Access> {
        settings.ensure_writers()?;
        let users = match settings.users_file {
            Some(path) => Some(UsersFile::open(path, ROLES).await?),
            None => None,
        };
        let verifier = match settings.jwt {
            Some(jwt) => Some(Verifier::new(jwt).await?),
            None => None,
        };
        Ok(Access { users, verifier, anonymous_reads: settings.anonymous_reads })
    }

    /// Who sent `headers`: anonymous without an Authorization header, else the verified user or
    /// token holder; wrong credentials are refused whatever the request needs.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(Caller::Anonymous);
        };
        let value = value.to_str().map_err(|_| unauthenticated("the Authorization header is not ASCII"))?;
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            self.basic(rest).await
        } else if scheme.eq_ignore_ascii_case("bearer") {
            self.bearer(value).await
        } else {
            Err(unauthenticated("the Authorization header must be Basic or Bearer"))
        }
    }

    /// Whether `caller` may do what `need` says.
    pub fn authorize(&self, caller: &Caller, need: Need) -> Result<(), ApiError> {
        let allowed = match need {
            Need::Nothing => true,
            Need::Read => self.anonymous_reads || caller.may_read(),
            Need::Register | Need::Write => caller.may_write(),
        };
        match (allowed, caller) {
            (true, _) => Ok(()),
            (false, Caller::Anonymous) if matches!(need, Need::Read) => {
                Err(unauthenticated("credentials are required to read this registry"))
            }
            (false, Caller::Anonymous) => Err(unauthenticated("credentials are required to change the registry")),
            (false, caller) => Err(ApiError::Forbidden(format!(
                "{} may not {} this registry{}",
                caller.name(),
                if matches!(need, Need::Read) { "read" } else { "change" },
                match caller {
                    Caller::Token { .. } if matches!(need, Need::Read) => {
                        format!(" (the token needs the {} or {} scope)", scopes::READ, scopes::WRITE)
                    }
                    Caller::Token { .. } => format!(" (the token needs the {} scope)", scopes::WRITE),
                    _ => " (the user's role is read)".to_string(),
                }
            ))),
        }
    }

    /// The schemes a 401 invites.
    pub fn challenge(&self) -> String {
        let mut schemes = Vec::new();
        if self.users.is_some() {
            schemes.push("Basic realm=\"orderflow-registry\"");
        }
        if self.verifier.is_some() {
            schemes.push("Bearer realm=\"orderflow-registry\"");
        }
        schemes.join(", ")
    }

    async fn basic(&self, encoded: &str) -> Result<Caller, ApiError> {
        let Some(users) = &self.users else {
            return Err(unauthenticated("this registry does not accept basic credentials; use a bearer token"));
        };
        let signed_in = users.verify_basic(encoded).await.map_err(|refused| unauthenticated(&refused.0))?;
        Ok(Caller::User { may_write: signed_in.role == "write", name: signed_in.name })
    }

    async fn bearer(&self, header: &str) -> Result<Caller, ApiError> {
        let Some(verifier) = &self.verifier else {
            return Err(unauthenticated("this registry does not accept bearer tokens; use basic credentials"));
        };
        match verifier.verify::<NoClaims>(Some(header)).await {
            Ok(token) => Ok(Caller::Token { subject: token.subject, scopes: token.scopes }),
            Err(AuthError::KeysUnavailable) => Err(ApiError::AuthUnavailable),
            Err(reason) => Err(unauthenticated(&reason.to_string())),
        }
    }
}

fn unauthenticated(reason: &str) -> ApiError {
    ApiError::Unauthenticated(reason.to_string())
}

/// The middleware: authenticates, then applies [`needed`]. A reader's register request goes on
/// with [`LookupOnly`]. Every 401 names the schemes accepted (`WWW-Authenticate`).
pub async fn gate(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    let mut response = match admit(&access, request).await {
        Ok(request) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    };
    if response.status() == StatusCode::UNAUTHORIZED
        && let Ok(challenge) = HeaderValue::from_str(&access.challenge())
    {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
    }
    response
}

async fn admit(access: &Access, mut request: Request) -> Result<Request, ApiError> {
    let need = needed(request.method(), request.uri().path());
    if need == Need::Nothing {
        return Ok(request);
    }
    let caller = access.authenticate(request.headers()).await?;
    if let Err(refusal) = access.authorize(&caller, need) {
        if need != Need::Register || access.authorize(&caller, Need::Read).is_err() {
            return Err(refusal);
        }
        let (anonymous, message) = match refusal {
            ApiError::Unauthenticated(message) => (true, message),
            ApiError::Forbidden(message) => (false, message),
            other => return Err(other),
        };
        request.extensions_mut().insert(LookupOnly { anonymous, message });
    }
    if caller != Caller::Anonymous {
        tracing::debug!(caller = caller.name(), method = %request.method(), path = request.uri().path(), "registry caller");
    }
    Ok(request)
}
