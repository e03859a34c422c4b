//! How the simulator listens: the API port's accept loop (closed and reopened by the `down`
//! fault, with connections reset on the way down) and the admin port beside it.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::Router;
use orderflow_http::TlsAcceptor;
use sqlx::PgPool;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{Notify, watch},
};

use crate::{AppState, ConnectionReset, admin_router, api_router};

/// Serves the provider's API on `api` and, when given, the API with the ledger, faults and
/// stats on `admin` — a port that stays up when the fault `down` closes the API port, and the
/// only one that can change or read the simulator's state (it listens on loopback unless told
/// otherwise).
///
/// How the API port serves, as a real provider's does.
#[derive(Clone, Default)]
pub struct ApiOptions {
    /// The API answers only requests bearing `Authorization: Bearer <key>` (401 otherwise).
    pub api_key: Option<String>,
    /// HTTPS with this certificate; plain HTTP when unset. The admin port stays plain HTTP.
    pub tls: Option<Arc<orderflow_http::ServerConfig>>,
}

pub async fn run(
    api: TcpListener,
    admin: Option<TcpListener>,
    pool: PgPool,
    options: ApiOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = AppState {
        pool,
        faults: Arc::default(),
        down: Arc::new(watch::Sender::new(false)),
        api_key: options.api_key.map(Arc::from),
    };
    let scheme = if options.tls.is_some() { "https" } else { "http" };
    tracing::info!(api = %api.local_addr()?, scheme, admin = ?admin.as_ref().map(|a| a.local_addr()), "payment simulator listening");
    let (stop, stopped) = watch::channel(false);
    let app = api_router(state.clone());
    let admin = admin.map(|admin| {
        let mut stopped = stopped.clone();
        let app = admin_router(state.clone());
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            axum::serve(admin, app).with_graceful_shutdown(shutdown).await
        })
    });
    let tls = options.tls.map(TlsAcceptor::from);
    let served = tokio::spawn(serve_api(api, app, tls, state.down.subscribe(), stopped));
    shutdown.await;
    stop.send_replace(true);
    served.await.context("the API loop")??;
    if let Some(admin) = admin {
        admin.await.context("the admin server")??;
    }
    Ok(())
}

/// The API's accept loop: `down` closes the listening socket (new connections are refused)
/// and resets every open connection; `up` binds the same address again.
async fn serve_api(
    mut listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    mut down: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    loop {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        connections.spawn(serve_connection(stream, peer, tls.clone(), app.clone()));
                    }
                    Err(error) => tracing::warn!(%error, "accept failed"),
                },
                _ = down.wait_for(|d| *d) => break,
                _ = stopped.wait_for(|s| *s) => return Ok(()),
            }
            while connections.try_join_next().is_some() {}
        }
        drop(listener);
        connections.abort_all();
        tracing::warn!(%addr, "API port closed (fault: down)");
        tokio::select! {
            _ = down.wait_for(|d| !*d) => {}
            _ = stopped.wait_for(|s| *s) => return Ok(()),
        }
        listener = rebind(addr).await?;
        tracing::info!(%addr, "API port open again");
    }
}

async fn rebind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    let mut tries = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(error) if tries < 50 => {
                tries += 1;
                tracing::warn!(%error, %addr, "cannot bind the API port yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(error).context("binding the API port again"),
        }
    }
}

/// One HTTP/1 connection, over TLS when the API has a certificate. Closing with a zero linger
/// sends a reset, not a FIN, so an aborted connection (`down`, `reset_after_charge`) is a reset
/// for the client.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, tls: Option<TlsAcceptor>, app: Router) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    match tls {
        None => serve_http(stream, app).await,
        Some(acceptor) => {
            if let Some(stream) = orderflow_http::handshake(acceptor, stream, peer).await {
                serve_http(stream, app).await
            }
        }
    }
}

async fn serve_http(stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static, app: Router) {
    let reset = Arc::new(Notify::new());
    let app = app.layer(axum::Extension(ConnectionReset(reset.clone())));
    let service = hyper_util::service::TowerToHyperService::new(app);
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::select! {
        result = connection => {
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended");
            }
        }
        () = reset.notified() => tracing::info!("connection reset after the charge (fault)"),
    }
}
