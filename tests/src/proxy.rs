//! A TCP fault proxy between a service and Postgres or the broker, for faults a signal cannot
//! provoke: added latency, connections reset, a blackhole (bytes accepted, nothing forwarded or
//! answered), and a cut (everything reset, new connections refused) — switched at run time.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Bytes pass as they are.
    None,
    /// Each chunk waits this long before it is passed on, both ways.
    Latency(Duration),
    /// Every open connection is reset (RST) now; new ones are accepted and reset at once.
    Cut,
    /// Open and new connections stay up, but nothing is passed on either way: the peer waits.
    Blackhole,
}

pub struct FaultProxy {
    /// `host:port` to connect to instead of the target.
    pub addr: SocketAddr,
    fault: watch::Sender<Fault>,
    /// Connections accepted since the start.
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// A proxy on a free local port forwarding to `target` (`host:port`).
    pub async fn start(target: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (fault, watching) = watch::channel(Fault::None);
        let accepted = Arc::new(AtomicU64::new(0));
        let (target, counter) = (target.to_string(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(client, target.clone(), watching.clone()));
            }
        });
        FaultProxy { addr, fault, accepted, task }
    }

    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// `url` (a `postgres://` URL) with its host and port replaced by the proxy's.
    pub fn postgres_url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let credentials = authority.rsplit_once('@').map(|(c, _)| format!("{c}@")).unwrap_or_default();
        format!("{scheme}://{credentials}{}/{path}", self.addr)
    }
}

/// Resets `stream` (SO_LINGER 0, then close: the peer sees RST, not FIN).
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
}

async fn serve(client: TcpStream, target: String, mut fault: watch::Receiver<Fault>) {
    if *fault.borrow() == Fault::Cut {
        return reset(client);
    }
    let Ok(server) = TcpStream::connect(&target).await else { return reset(client) };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = pipe(&mut client_read, &mut server_write, fault.clone());
    let down = pipe(&mut server_read, &mut client_write, fault.clone());
    let cut = fault.wait_for(|f| *f == Fault::Cut);
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut => {}
    }
    // Whatever ended it, both sides go with an RST.
    if let (Ok(client), Ok(server)) = (client_read.reunite(client_write), server_read.reunite(server_write)) {
        reset(client);
        reset(server);
    }
}

/// Copies `from` to `to` under the current fault until either side closes.
async fn pipe(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Ok(n) = from.read(&mut buf).await else { return };
        if n == 0 {
            return;
        }
        loop {
            let now = *fault.borrow_and_update();
            match now {
                Fault::None => break,
                Fault::Latency(delay) => {
                    tokio::time::sleep(delay).await;
                    break;
                }
                // Held until the fault changes; a cut ends the connection (see `serve`).
                Fault::Blackhole | Fault::Cut => {
                    if fault.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
