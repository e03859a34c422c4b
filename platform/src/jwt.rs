//! Bearer JWTs, verified against the issuer's public keys (a JWKS file or URL) with a well-kept
//! library (`jsonwebtoken`), never by hand. order-api checks every order route with it and the
//! schema registry its writes; each reads the claims it needs beyond `sub` and the scopes.
//!
//! - Only asymmetric signatures are accepted: RS256, ES256 and EdDSA, and a token's `alg` must be
//!   its key's. `alg: none`, HS256 (with the public key as a "secret") or any other algorithm is
//!   refused before a key is looked at.
//! - The key is found by the token's `kid`. An unknown `kid` re-reads the JWKS (at most once per
//!   `min_refresh`, so a flood of made-up ids cannot hammer the issuer), and the keys are re-read
//!   every `refresh` anyway: a rotation needs no restart, and a removed key stops working.
//! - `iss`, `aud`, `exp` and `sub` are required; `exp` and `nbf` are checked with `leeway`.
//! - Scopes come from `scope` (space-separated, RFC 8693) or `scp` (a list); other claims are
//!   read into the caller's own type ([`Verifier::verify`]).
//!
//! Every refusal names its reason ([`AuthError`]) and writes nothing.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::RwLock,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use base64::Engine;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse},
};
use serde::{Deserialize, de::DeserializeOwned};

/// The algorithms a token may be signed with.
pub const ALGORITHMS: [&str; 3] = ["RS256", "ES256", "EdDSA"];

/// Where the issuer's public keys are.
#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub jwks: JwksSource,
    /// The one accepted `iss`.
    pub issuer: String,
    /// Accepted `aud` values (a token needs one of them).
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// How often the keys are re-read even when every `kid` is known.
    pub refresh: Duration,
    /// The least time between two reads caused by unknown `kid`s.
    pub min_refresh: Duration,
}

/// Verification defaults, written once (every service's flags take them from here).
pub mod defaults {
    pub const LEEWAY_SECS: u64 = 30;
    pub const REFRESH_SECS: u64 = 300;
    pub const MIN_REFRESH_SECS: u64 = 10;
}

impl AuthSettings {
    /// Settings accepting tokens from `issuer` for `audience`, with the default leeway and
    /// refresh periods.
    pub fn new(jwks: JwksSource, issuer: impl Into<String>, audience: impl Into<String>) -> AuthSettings {
        AuthSettings {
            jwks,
            issuer: issuer.into(),
            audiences: vec![audience.into()],
            leeway: Duration::from_secs(defaults::LEEWAY_SECS),
            refresh: Duration::from_secs(defaults::REFRESH_SECS),
            min_refresh: Duration::from_secs(defaults::MIN_REFRESH_SECS),
        }
    }
}

/// A verified token: its subject, its scopes and the other claims the caller asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token<C> {
    pub subject: String,
    pub scopes: Vec<String>,
    pub claims: C,
}

impl<C> Token<C> {
    pub fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// For a caller that needs no claims beyond `sub` and the scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct NoClaims {}

/// Why a request is not authenticated. Each says which rule the token broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("an Authorization: Bearer <token> header is required")]
    Missing,
    #[error("the Authorization header must be `Bearer <token>`")]
    NotBearer,
    #[error("the bearer token is not a JWT ({0})")]
    Malformed(String),
    #[error("tokens signed with {0:?} are not accepted; use RS256, ES256 or EdDSA")]
    Algorithm(String),
    #[error("the token has no `kid` header naming its key")]
    MissingKid,
    #[error("no key {0:?} in the issuer's key set")]
    UnknownKid(String),
    #[error("the token's alg {token} is not its key's ({key})")]
    AlgorithmMismatch { token: String, key: String },
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's issuer (iss) is not the one accepted")]
    WrongIssuer,
    #[error("the token's audience (aud) is not this API")]
    WrongAudience,
    #[error("the token lacks the {0:?} claim")]
    MissingClaim(String),
    #[error("the token's {0:?} claim is malformed")]
    BadClaim(String),
    #[error("the issuer's keys cannot be read right now; retry shortly")]
    KeysUnavailable,
}

#[derive(Deserialize)]
struct Claims<C> {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<Vec<String>>,
    #[serde(flatten)]
    rest: C,
}

/// A usable key from the JWKS.
#[derive(Clone)]
struct Key {
    algorithm: Algorithm,
    decoding: DecodingKey,
}

struct Keys {
    by_kid: HashMap<String, Key>,
    /// When the set was last read (or tried), and the file's modification time then.
    read_at: Option<Instant>,
    modified: Option<SystemTime>,
}

/// Verifies bearer tokens; shared by every request.
pub struct Verifier {
    settings: AuthSettings,
    keys: RwLock<Keys>,
    /// One read of the key set at a time; the others wait for its result.
    reading: tokio::sync::Mutex<()>,
    http: reqwest::Client,
}

impl Verifier {
    /// Reads the key set once. A key set that cannot be read does not stop the start: requests
    /// get 503 until it can ([`Verifier::ready`]).
    pub async fn new(settings: AuthSettings) -> anyhow::Result<Verifier> {
        anyhow::ensure!(!settings.issuer.is_empty(), "an issuer (--jwt-issuer) is required");
        anyhow::ensure!(!settings.audiences.is_empty(), "at least one audience (--jwt-audience) is required");
        let http = orderflow_http::client().timeout(Duration::from_secs(5)).build()?;
        let verifier = Verifier {
            settings,
            keys: RwLock::new(Keys { by_kid: HashMap::new(), read_at: None, modified: None }),
            reading: tokio::sync::Mutex::new(()),
            http,
        };
        if let Err(error) = verifier.reload().await {
            tracing::warn!(error = format!("{error:#}"), "the issuer's keys cannot be read yet");
        }
        Ok(verifier)
    }

    /// Whether a key set has been read.
    pub fn ready(&self) -> bool {
        !self.keys.read().unwrap_or_else(|p| p.into_inner()).by_kid.is_empty()
    }

    /// The caller behind an `Authorization` header value, with the claims `C` reads.
    pub async fn verify<C: DeserializeOwned>(&self, authorization: Option<&str>) -> Result<Token<C>, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => token.trim(),
            _ => return Err(AuthError::NotBearer),
        };
        let (alg, kid) = peek_header(token)?;
        if !ALGORITHMS.contains(&alg.as_str()) {
            return Err(AuthError::Algorithm(alg));
        }
        let kid = kid.ok_or(AuthError::MissingKid)?;
        let key = self.key(&kid).await?;
        let key_alg = format!("{:?}", key.algorithm);
        if key_alg != alg {
            return Err(AuthError::AlgorithmMismatch { token: alg, key: key_alg });
        }
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&self.settings.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.settings.leeway.as_secs();
        let claims = jsonwebtoken::decode::<Claims<C>>(token, &key.decoding, &validation)
            .map_err(|e| refusal(e.into_kind()))?
            .claims;
        let mut scopes: Vec<String> = claims.scope.unwrap_or_default().split_whitespace().map(str::to_string).collect();
        scopes.extend(claims.scp.unwrap_or_default());
        let subject = claims.sub.ok_or_else(|| AuthError::MissingClaim("sub".into()))?;
        if subject.is_empty() {
            return Err(AuthError::BadClaim("sub".into()));
        }
        Ok(Token { subject, scopes, claims: claims.rest })
    }

    /// The key `kid`, re-reading the set when it is unknown (at most once per `min_refresh`) or
    /// when the set is older than `refresh`.
    async fn key(&self, kid: &str) -> Result<Key, AuthError> {
        let (found, age) = self.lookup(kid);
        let stale = age.is_none_or(|age| age >= self.settings.refresh);
        if let (Some(key), false) = (&found, stale) {
            return Ok(key.clone());
        }
        let may_read = stale || age.is_none_or(|age| age >= self.settings.min_refresh);
        if may_read {
            let _one = self.reading.lock().await;
            // Another request may have read the set while this one waited.
            let (_, age) = self.lookup(kid);
            let fresh = age.is_some_and(|age| age < self.settings.min_refresh);
            if !fresh && let Err(error) = self.reload().await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "re-reading the issuer's keys failed; keeping the last set"
                );
            }
        }
        match (self.lookup(kid).0, self.ready()) {
            (Some(key), _) => Ok(key),
            (None, true) => Err(AuthError::UnknownKid(kid.to_string())),
            (None, false) => Err(AuthError::KeysUnavailable),
        }
    }

    fn lookup(&self, kid: &str) -> (Option<Key>, Option<Duration>) {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        (keys.by_kid.get(kid).cloned(), keys.read_at.map(|at| at.elapsed()))
    }

    /// Reads the key set; a file that has not changed since the last read is not parsed again.
    async fn reload(&self) -> anyhow::Result<()> {
        let now = Instant::now();
        let result = self.read_set().await;
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        keys.read_at = Some(now);
        match result? {
            None => Ok(()),
            Some((by_kid, modified)) => {
                tracing::info!(keys = by_kid.len(), "read the issuer's keys");
                keys.by_kid = by_kid;
                keys.modified = modified;
                Ok(())
            }
        }
    }

    #[allow(clippy::type_complexity)]
    async fn read_set(&self) -> anyhow::Result<Option<(HashMap<String, Key>, Option<SystemTime>)>> {
        let (text, modified) = match &self.settings.jwks {
            JwksSource::File(path) => {
                let modified = tokio::fs::metadata(path)
                    .await
                    .with_context(|| format!("reading {}", path.display()))?
                    .modified()
                    .ok();
                let unchanged = {
                    let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
                    modified.is_some() && keys.modified == modified && !keys.by_kid.is_empty()
                };
                if unchanged {
                    return Ok(None);
                }
                (
                    tokio::fs::read_to_string(path).await.with_context(|| format!("reading {}", path.display()))?,
                    modified,
                )
            }
            JwksSource::Url(url) => {
                // Errors without the URL: it may carry an access token.
                let fetch = |e: reqwest::Error| anyhow::anyhow!("fetching the JWKS: {}", e.without_url());
                let response = self.http.get(url).send().await.map_err(fetch)?;
                let response = response.error_for_status().map_err(fetch)?;
                (response.text().await.map_err(fetch)?, None)
            }
        };
        Ok(Some((parse_key_set(&text)?, modified)))
    }
}

/// The usable signing keys of a JWKS, by `kid`. A key without a `kid`, meant for encryption, of
/// another algorithm, or malformed is skipped with a warning; a set with none left is an error.
fn parse_key_set(text: &str) -> anyhow::Result<HashMap<String, Key>> {
    let set: JwkSet = serde_json::from_str(text).context("the JWKS is not a JSON Web Key Set")?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            tracing::warn!("skipping a JWKS key without a kid");
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithm = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(KeyAlgorithm::RS256), AlgorithmParameters::RSA(_)) | (None, AlgorithmParameters::RSA(_)) => {
                Algorithm::RS256
            }
            (Some(KeyAlgorithm::ES256), AlgorithmParameters::EllipticCurve(p))
            | (None, AlgorithmParameters::EllipticCurve(p))
                if p.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            (Some(KeyAlgorithm::EdDSA), AlgorithmParameters::OctetKeyPair(p))
            | (None, AlgorithmParameters::OctetKeyPair(p))
                if p.curve == EllipticCurve::Ed25519 =>
            {
                Algorithm::EdDSA
            }
            _ => {
                tracing::warn!(kid, "skipping a JWKS key of an algorithm not accepted (RS256, ES256, EdDSA only)");
                continue;
            }
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(decoding) => {
                keys.insert(kid, Key { algorithm, decoding });
            }
            Err(error) => tracing::warn!(kid, %error, "skipping a malformed JWKS key"),
        }
    }
    anyhow::ensure!(!keys.is_empty(), "the JWKS holds no usable signing key (RS256, ES256 or EdDSA, with a kid)");
    Ok(keys)
}

/// The token's `alg` and `kid`, read before any key is chosen, so `none` and unknown algorithms
/// get their own answer.
fn peek_header(token: &str) -> Result<(String, Option<String>), AuthError> {
    #[derive(Deserialize)]
    struct Header {
        alg: Option<String>,
        kid: Option<String>,
    }
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::Malformed("three dot-separated parts expected".into()));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed("the header is not base64url".into()))?;
    let header: Header =
        serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed("the header is not a JSON object".into()))?;
    let alg = header.alg.ok_or_else(|| AuthError::Malformed("the header has no alg".into()))?;
    Ok((alg, header.kid))
}

fn refusal(kind: ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim),
        ErrorKind::InvalidClaimFormat(claim) => AuthError::BadClaim(claim),
        ErrorKind::InvalidAlgorithm => AuthError::Algorithm("a different one".into()),
        ErrorKind::Json(e) => AuthError::Malformed(format!("its claims are not valid JSON: {e}")),
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => {
            AuthError::Malformed("it cannot be decoded".into())
        }
        other => AuthError::Malformed(format!("{other:?}")),
    }
}

/// The verification flags, the same in every service that takes tokens; each binary names their
/// environment variables with its own prefix ([`JwtArgs::named`]), e.g. `ORDERFLOW_API_JWKS_FILE`.
#[derive(Debug, Clone, clap::Args)]
pub struct JwtArgs {
    /// The token issuer's public keys as a JWKS file (re-read when it changes) ...
    #[arg(long, conflicts_with = "jwks_url")]
    pub jwks_file: Option<PathBuf>,
    /// ... or at a URL (e.g. https://idp.example.com/.well-known/jwks.json); a secret, as such
    /// a URL may carry an access token.
    #[arg(long, hide_env_values = true)]
    pub jwks_url: Option<String>,
    /// The token issuer accepted (`iss`).
    #[arg(long)]
    pub jwt_issuer: Option<String>,
    /// Audiences accepted (`aud`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub jwt_audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, default_value_t = defaults::LEEWAY_SECS)]
    pub jwt_leeway_secs: u64,
    /// Seconds between reads of the issuer's keys (a rotation takes effect within this).
    #[arg(long, default_value_t = defaults::REFRESH_SECS)]
    pub jwks_refresh_secs: u64,
    /// The least seconds between two reads caused by tokens naming an unknown key.
    #[arg(long, default_value_t = defaults::MIN_REFRESH_SECS)]
    pub jwks_min_refresh_secs: u64,
}

impl JwtArgs {
    const IDS: [&str; 7] = [
        "jwks_file",
        "jwks_url",
        "jwt_issuer",
        "jwt_audience",
        "jwt_leeway_secs",
        "jwks_refresh_secs",
        "jwks_min_refresh_secs",
    ];

    /// `command` with the verification flags read from `<prefix>_JWKS_FILE` and so on, and
    /// `audience` the default `--jwt-audience`.
    pub fn named(command: clap::Command, prefix: &str, audience: &'static str) -> clap::Command {
        Self::IDS.iter().fold(command, |command, id| {
            command.mut_arg(*id, |arg| {
                let arg = arg.env(format!("{prefix}_{}", id.to_ascii_uppercase()));
                if *id == "jwt_audience" { arg.default_value(audience) } else { arg }
            })
        })
    }

    /// The settings, or None when no key set is configured (tokens are then not accepted).
    pub fn settings(&self) -> anyhow::Result<Option<AuthSettings>> {
        let jwks = match (&self.jwks_file, &self.jwks_url) {
            (Some(path), _) => JwksSource::File(path.clone()),
            (None, Some(url)) => JwksSource::Url(url.clone()),
            (None, None) => return Ok(None),
        };
        let issuer = self.jwt_issuer.clone().context("--jwt-issuer is required with --jwks-file or --jwks-url")?;
        Ok(Some(AuthSettings {
            jwks,
            issuer,
            audiences: self.jwt_audience.iter().map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect(),
            leeway: Duration::from_secs(self.jwt_leeway_secs),
            refresh: Duration::from_secs(self.jwks_refresh_secs.max(1)),
            min_refresh: Duration::from_secs(self.jwks_min_refresh_secs),
        }))
    }
}
