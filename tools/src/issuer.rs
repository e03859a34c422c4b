//! A token issuer for the local stack, compose and the tests: signing keys (RS256, ES256,
//! EdDSA), the JWKS that publishes their public halves, and signed tokens. In production the
//! tokens come from your identity provider; order-api only ever reads its JWKS.
//!
//! A key's `kid` is its RFC 7638 thumbprint, so a PEM file is all a signer needs.

use std::{path::Path, time::Duration};

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{
        AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, KeyAlgorithm, OctetKeyPairParameters,
        OctetKeyPairType, PublicKeyUse, ThumbprintHash,
    },
};
use rand_core::OsRng;
use serde_json::{Value, json};

pub struct SigningKey {
    pub kid: String,
    pub algorithm: Algorithm,
    pem: String,
    encoding: EncodingKey,
    jwk: Jwk,
}

impl SigningKey {
    /// A new key pair for `algorithm` (RS256: 2048 bits; ES256: P-256; EdDSA: Ed25519).
    pub fn generate(algorithm: Algorithm) -> anyhow::Result<SigningKey> {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let pem = match algorithm {
            Algorithm::RS256 => rsa::RsaPrivateKey::new(&mut OsRng, 2048)?.to_pkcs8_pem(LineEnding::LF)?,
            Algorithm::ES256 => p256::SecretKey::random(&mut OsRng).to_pkcs8_pem(LineEnding::LF)?,
            Algorithm::EdDSA => ed25519_dalek::SigningKey::generate(&mut OsRng).to_pkcs8_pem(LineEnding::LF)?,
            other => anyhow::bail!("{other:?} keys are not made here; use RS256, ES256 or EdDSA"),
        };
        Self::from_pem(&pem)
    }

    /// A key from a PKCS#8 PEM private key; its algorithm is the key's type.
    pub fn from_pem(pem: &str) -> anyhow::Result<SigningKey> {
        let bytes = pem.as_bytes();
        let (algorithm, encoding) = if let Ok(key) = EncodingKey::from_ed_pem(bytes) {
            (Algorithm::EdDSA, key)
        } else if let Ok(key) = EncodingKey::from_ec_pem(bytes) {
            (Algorithm::ES256, key)
        } else if let Ok(key) = EncodingKey::from_rsa_pem(bytes) {
            (Algorithm::RS256, key)
        } else {
            anyhow::bail!("not a PKCS#8 PEM private key of RSA, P-256 or Ed25519");
        };
        let mut jwk = match algorithm {
            // jsonwebtoken 10 derives the public JWK of RSA and EC keys, not of Ed25519 ones.
            Algorithm::EdDSA => {
                use ed25519_dalek::pkcs8::DecodePrivateKey;
                let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem).context("an Ed25519 key")?;
                Jwk {
                    common: CommonParameters { key_algorithm: Some(KeyAlgorithm::EdDSA), ..Default::default() },
                    algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                        key_type: OctetKeyPairType::OctetKeyPair,
                        curve: EllipticCurve::Ed25519,
                        x: URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes()),
                    }),
                }
            }
            _ => Jwk::from_encoding_key(&encoding, algorithm).context("the key's public half")?,
        };
        let kid = jwk.thumbprint(ThumbprintHash::SHA256);
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(SigningKey { kid, algorithm, pem: pem.to_string(), encoding, jwk })
    }

    pub fn read(path: &Path) -> anyhow::Result<SigningKey> {
        let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_pem(&pem).with_context(|| format!("{}", path.display()))
    }

    /// The private key, PKCS#8 PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The public half as a JWK (with `kid`, `alg` and `use: sig`).
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// `claims` signed with this key, `kid` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing with a key that loaded")
    }
}

/// A JWKS publishing `keys`.
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

/// What a token says.
#[derive(Debug, Clone)]
pub struct Grant {
    pub issuer: String,
    pub audience: String,
    pub subject: String,
    /// Space-separated, e.g. `orders:write orders:read`.
    pub scope: String,
    /// Set for a token that acts for one customer.
    pub customer_id: Option<String>,
    pub ttl: Duration,
}

impl Grant {
    pub fn claims(&self) -> Value {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({
            "iss": self.issuer, "aud": self.audience, "sub": self.subject, "scope": self.scope,
            "iat": now, "nbf": now, "exp": now + self.ttl.as_secs() as i64,
        });
        if let Some(customer) = &self.customer_id {
            claims["customer_id"] = json!(customer);
        }
        claims
    }
}

/// Makes `dir/issuer.pem` (mode 0600) and `dir/jwks.json` unless the key is already there;
/// returns the key either way (safe to run twice).
pub fn ensure_key_files(dir: &Path, algorithm: Algorithm) -> anyhow::Result<SigningKey> {
    let pem_path = dir.join("issuer.pem");
    let key = if pem_path.exists() {
        SigningKey::read(&pem_path)?
    } else {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = SigningKey::generate(algorithm)?;
        write_private(&pem_path, key.pem())?;
        key
    };
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, serde_json::to_vec_pretty(&jwks(&[&key]))?)
        .with_context(|| format!("writing {}", jwks_path.display()))?;
    Ok(key)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// How a tool (demo, bench, drill) authenticates to order-api: with the token in
/// `ORDERFLOW_API_TOKEN` or the file `ORDERFLOW_API_TOKEN_FILE` names (a secret: never on the
/// command line, where every user sees it), or by minting its own tokens with a development
/// signing key (`--api-token-key`, as the local stack and compose do).
#[derive(clap::Args, Debug, Clone)]
pub struct ApiAuthArgs {
    /// A bearer token for order-api.
    #[arg(long = "api-token", env = "ORDERFLOW_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A PKCS#8 PEM signing key the tool mints its tokens with (`orderflow-token keygen`).
    #[arg(long = "api-token-key", env = "ORDERFLOW_API_TOKEN_KEY")]
    pub token_key: Option<std::path::PathBuf>,
    /// The `iss` of minted tokens: what order-api's --jwt-issuer accepts.
    #[arg(long = "api-token-issuer", env = "ORDERFLOW_API_JWT_ISSUER", default_value = "orderflow-local")]
    pub issuer: String,
}

impl ApiAuthArgs {
    /// An HTTP client that sends a bearer token for `subject` with `orders:write orders:read`
    /// (a token from `ORDERFLOW_API_TOKEN` is sent as it is, whatever its subject).
    pub fn client(&self, subject: &str, builder: reqwest::ClientBuilder) -> anyhow::Result<reqwest::Client> {
        let token = match (&self.token_key, self.token.clone().filter(|t| !t.is_empty())) {
            (Some(path), _) => {
                let grant = Grant {
                    issuer: self.issuer.clone(),
                    audience: "orderflow-api".into(),
                    subject: subject.into(),
                    scope: "orders:write orders:read".into(),
                    customer_id: None,
                    ttl: Duration::from_secs(30 * 86_400),
                };
                SigningKey::read(path)?.sign(&grant.claims())
            }
            (None, Some(token)) => token,
            (None, None) => anyhow::bail!(
                "order-api needs a bearer token: set ORDERFLOW_API_TOKEN, or --api-token-key with a signing key order-api's JWKS publishes"
            ),
        };
        bearer_client(&token, builder)
    }
}

/// A client sending `Authorization: Bearer <token>` on every request (marked sensitive, so it
/// never shows in reqwest's debug output).
pub fn bearer_client(token: &str, builder: reqwest::ClientBuilder) -> anyhow::Result<reqwest::Client> {
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .context("the token is not a valid header value")?;
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(builder.default_headers(headers).build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_makes_a_key_whose_pem_reads_back_with_the_same_kid() {
        for algorithm in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
            let key = SigningKey::generate(algorithm).unwrap();
            let again = SigningKey::from_pem(key.pem()).unwrap();
            assert_eq!((again.kid.as_str(), again.algorithm), (key.kid.as_str(), algorithm));
            assert_eq!(key.jwk().common.key_id.as_deref(), Some(key.kid.as_str()));
        }
        assert!(SigningKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
    }
}
