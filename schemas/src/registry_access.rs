//! Where the schema registry is and who we are to it: every client of the registry (the codec,
//! the schema workflow, the tools) takes a [`RegistryAccess`].
//!
//! Reads may be open; changes need credentials — HTTP basic (a user of the registry's users
//! file) or a bearer token with `schemas:write`. A service that only looks schemas up needs
//! none while the registry's reads are open.

use std::fmt;

/// How to prove who we are.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic { user: String, password: String },
    Bearer(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { user, .. } => write!(f, "Basic({user}, [redacted])"),
            Credentials::Bearer(_) => f.write_str("Bearer([redacted])"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryAccess {
    /// The base URL, without a trailing slash.
    pub url: String,
    pub credentials: Option<Credentials>,
}

impl RegistryAccess {
    /// No credentials: reads only, where the registry leaves them open.
    pub fn anonymous(url: &str) -> RegistryAccess {
        RegistryAccess { url: url.trim_end_matches('/').to_string(), credentials: None }
    }

    pub fn basic(url: &str, user: &str, password: &str) -> RegistryAccess {
        RegistryAccess {
            credentials: Some(Credentials::Basic { user: user.into(), password: password.into() }),
            ..RegistryAccess::anonymous(url)
        }
    }

    pub fn bearer(url: &str, token: &str) -> RegistryAccess {
        RegistryAccess { credentials: Some(Credentials::Bearer(token.into())), ..RegistryAccess::anonymous(url) }
    }

    /// `request` with our credentials.
    pub fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credentials {
            None => request,
            Some(Credentials::Basic { user, password }) => request.basic_auth(user, Some(password)),
            Some(Credentials::Bearer(token)) => request.bearer_auth(token),
        }
    }
}

impl From<&str> for RegistryAccess {
    fn from(url: &str) -> Self {
        RegistryAccess::anonymous(url)
    }
}

impl From<&String> for RegistryAccess {
    fn from(url: &String) -> Self {
        RegistryAccess::anonymous(url)
    }
}

/// The registry's credentials as flags (`#[command(flatten)]`). The password and the token
/// are secrets: from the environment or a `_FILE` (orderflow's binaries refuse them on the
/// command line).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegistryCredentialArgs {
    /// User for HTTP basic to the registry.
    #[arg(id = "registry_user", long = "registry-user", env = "ORDERFLOW_REGISTRY_USER")]
    pub user: Option<String>,
    /// That user's password.
    #[arg(
        id = "registry_password",
        long = "registry-password",
        env = "ORDERFLOW_REGISTRY_PASSWORD",
        hide_env_values = true,
        requires = "registry_user"
    )]
    pub password: Option<String>,
    /// A bearer token for the registry instead of a user.
    #[arg(
        id = "registry_token",
        long = "registry-token",
        env = "ORDERFLOW_REGISTRY_TOKEN",
        hide_env_values = true,
        conflicts_with = "registry_user"
    )]
    pub token: Option<String>,
}

impl RegistryCredentialArgs {
    /// Access to the registry at `url` with these credentials (none if none were given).
    pub fn access(&self, url: &str) -> anyhow::Result<RegistryAccess> {
        Ok(match (&self.user, &self.password, &self.token) {
            (Some(user), Some(password), _) => RegistryAccess::basic(url, user, password),
            (Some(_), None, _) => anyhow::bail!(
                "ORDERFLOW_REGISTRY_USER is set without ORDERFLOW_REGISTRY_PASSWORD (or ORDERFLOW_REGISTRY_PASSWORD_FILE)"
            ),
            (None, _, Some(token)) => RegistryAccess::bearer(url, token),
            (None, _, None) => RegistryAccess::anonymous(url),
        })
    }
}

/// The schema registry a service talks to (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// The schema registry's base URL (Confluent-compatible REST).
    #[arg(long = "registry-url", env = "ORDERFLOW_REGISTRY_URL", default_value = "http://127.0.0.1:8081")]
    pub url: String,
    #[command(flatten)]
    pub credentials: RegistryCredentialArgs,
}

impl RegistryArgs {
    pub fn access(&self) -> anyhow::Result<RegistryAccess> {
        self.credentials.access(&self.url)
    }
}
