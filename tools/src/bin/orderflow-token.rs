//! `orderflow-token`: a development token issuer. `keygen` makes a signing key and the JWKS
//! order-api reads (`--jwks-file`); `sign` prints a bearer token for curl, the demo or a test
//! client. Production tokens come from your identity provider, never from this tool.
//!
//!   orderflow-token keygen --dir /var/tmp/orderflow/auth
//!   orderflow-token sign --key /var/tmp/orderflow/auth/issuer.pem --issuer orderflow-local \
//!       --subject checkout --scope "orders:write orders:read"

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use orderflow_tools::issuer::{Grant, SigningKey, ensure_key_files};

#[derive(Parser)]
#[command(name = "orderflow-token", about = "Development signing keys, JWKS and bearer tokens for order-api")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make DIR/issuer.pem (0600) and DIR/jwks.json; an existing key is kept (its JWKS rewritten).
    Keygen {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum, default_value_t = Alg::EdDSA)]
        alg: Alg,
    },
    /// Print a token signed with KEY.
    Sign {
        /// The PKCS#8 PEM private key (`keygen` makes one).
        #[arg(long)]
        key: PathBuf,
        /// `iss`: what order-api's --jwt-issuer accepts.
        #[arg(long)]
        issuer: String,
        /// `aud`: one of order-api's --jwt-audience.
        #[arg(long, default_value = "orderflow-api")]
        audience: String,
        /// `sub`: who calls (rate limits are per subject).
        #[arg(long)]
        subject: String,
        /// Space-separated scopes: `orders:write` places orders, `orders:read` reads any order.
        #[arg(long, default_value = "orders:write")]
        scope: String,
        /// A token acting for one customer: it places and reads only that customer's orders.
        #[arg(long)]
        customer_id: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
#[allow(clippy::upper_case_acronyms)]
enum Alg {
    #[value(name = "RS256")]
    RS256,
    #[value(name = "ES256")]
    ES256,
    #[value(name = "EdDSA")]
    EdDSA,
}

fn main() -> anyhow::Result<()> {
    match orderflow_platform::secret::parse::<Args>().command {
        Command::Keygen { dir, alg } => {
            let algorithm = match alg {
                Alg::RS256 => jsonwebtoken::Algorithm::RS256,
                Alg::ES256 => jsonwebtoken::Algorithm::ES256,
                Alg::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            };
            let key = ensure_key_files(&dir, algorithm)?;
            println!("{}", key.kid);
        }
        Command::Sign { key, issuer, audience, subject, scope, customer_id, ttl_secs } => {
            let key = SigningKey::read(&key)?;
            let grant = Grant { issuer, audience, subject, scope, customer_id, ttl: Duration::from_secs(ttl_secs) };
            println!("{}", key.sign(&grant.claims()));
        }
    }
    Ok(())
}
