//! HTTPS, the same way in every binary and test.
//!
//! Outbound: [`client`] is the one way to build a `reqwest` client. TLS is rustls on ring (the
//! crypto provider sqlx already builds for Postgres), verifying against the system's trust store
//! (`/etc/ssl/certs`, or `SSL_CERT_FILE` / `SSL_CERT_DIR` when set); [`client_trusting`] adds one
//! private CA for an endpoint signed by it (a provider's sandbox, a test CA). Verification is
//! never switched off.
//!
//! Inbound: [`server_config`] reads a PEM certificate chain and key; [`TlsListener`] serves an
//! axum app over it.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Once},
    time::Duration,
};

use anyhow::Context;
pub use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
};
pub use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// reqwest finds rustls's process-wide provider when it builds a client; ring is installed once.
fn install_crypto_provider() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // Err means another part of the process installed one first; that one serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client builder whose HTTPS verifies servers against the system's trust store.
#[allow(clippy::disallowed_methods)] // the one place allowed to
pub fn client() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

/// [`client`], also trusting the CA certificates in the PEM file `ca` when given.
pub fn client_trusting(ca: Option<&Path>) -> anyhow::Result<reqwest::ClientBuilder> {
    let builder = client();
    let Some(ca) = ca else { return Ok(builder) };
    let pem = std::fs::read(ca).with_context(|| format!("reading the CA certificate file {}", ca.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("{} is not a PEM certificate bundle", ca.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no PEM certificate", ca.display());
    Ok(builder.tls_certs_merge(certs))
}

/// The TLS failure behind a request's error, when that is what it was: a certificate that does
/// not verify, a server that does not speak TLS. Nothing reached the server, and waiting will
/// not help: it is a configuration to fix.
pub fn tls_failure<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // io::Error's `source` skips the error it wraps (hyper-rustls wraps rustls's error in an
        // io::Error in another io::Error): go inside instead.
        next = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

/// An error and every cause under it, `: `-separated (reqwest's own message names only the
/// URL; the reason — refused, reset, certificate — is further down).
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        next = cause.source();
    }
    text
}

/// A server's TLS settings from a PEM certificate chain (leaf first) and its PEM private key
/// (PKCS#8, PKCS#1 or SEC1); HTTP/1.1 over TLS 1.2 or 1.3.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("reading the certificate chain {}: {e}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no PEM certificate", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("reading the private key {}: {e}", key.display()))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate does not match its key, or the key is of a kind TLS cannot use")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// [`server_config`] when both a certificate and its key are named (clap's `requires` sees to
/// one without the other); plain HTTP (`None`) when neither is.
pub fn server_config_if(cert: Option<&Path>, key: Option<&Path>) -> anyhow::Result<Option<Arc<ServerConfig>>> {
    match (cert, key) {
        (Some(cert), Some(key)) => server_config(cert, key).map(Some),
        (None, None) => Ok(None),
        _ => anyhow::bail!("a TLS certificate needs its key, and a key its certificate"),
    }
}

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP listener whose connections are TLS, for `axum::serve`. Handshakes run beside the
/// accept loop, so a client that connects and never speaks delays no one; a failed or
/// timed-out handshake is logged and dropped.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> TlsListener {
        TlsListener { tcp, acceptor: TlsAcceptor::from(config), handshakes: JoinSet::new() }
    }
}

/// One handshake, with the deadline; `None` when it failed (logged).
pub async fn handshake(acceptor: TlsAcceptor, stream: TcpStream, peer: SocketAddr) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(error)) => {
            tracing::info!(%peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            None
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let acceptor = self.acceptor.clone();
                        self.handshakes.spawn(async move { handshake(acceptor, stream, peer).await.map(|tls| (tls, peer)) });
                    }
                    Err(error) => {
                        // Out of descriptors and the like: wait rather than spin.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
