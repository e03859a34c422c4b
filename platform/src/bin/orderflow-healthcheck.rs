//! `orderflow-healthcheck URL`: exits 0 when `GET URL` answers 2xx within 3 s, 1 otherwise.
//!
//! The container image has no shell and no curl (distroless), so docker-compose healthchecks
//! run this: `["CMD", "orderflow-healthcheck", "http://127.0.0.1:8080/readyz"]`. Plain HTTP/1.1
//! over std only; a health endpoint needs nothing more.

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    process::ExitCode,
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: orderflow-healthcheck http://HOST:PORT/PATH");
        return ExitCode::from(2);
    };
    match check(&url) {
        Ok(status) => {
            println!("{url}: {status}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs are supported")?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let address = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} has no address"))?;
    let mut stream = TcpStream::connect_timeout(&address, TIMEOUT).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    // One write: some servers read the request line from the first segment alone.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line.lines().next().unwrap_or_default().to_string();
    match status.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(status),
        _ => Err(format!("unhealthy: {status:?}")),
    }
}
