//! `orderflow-healthcheck URL`: exits 0 when the service at URL is ready within 3 s, 1 otherwise.
//!
//! - `http://HOST:PORT/PATH`: `GET` answers 2xx. The container image has no shell and no curl
//!   (distroless), so docker-compose healthchecks run this:
//!   `["CMD", "orderflow-healthcheck", "http://127.0.0.1:8080/readyz"]`.
//! - `kafka://HOST:PORT`: a Kafka broker answers a Metadata request (v4, no topics) naming at
//!   least one broker — what the scripts wait for after starting Kafka, instead of a sleep.
//!
//! Plain HTTP/1.1 and the Kafka wire protocol over std only; a probe needs nothing more.

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    process::ExitCode,
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: orderflow-healthcheck http://HOST:PORT/PATH | kafka://HOST:PORT");
        return ExitCode::from(2);
    };
    let result = match url.strip_prefix("kafka://") {
        Some(authority) => check_kafka(authority),
        None => check(&url),
    };
    match result {
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

fn connect(authority: &str) -> Result<TcpStream, String> {
    let address = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} has no address"))?;
    let stream = TcpStream::connect_timeout(&address, TIMEOUT).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    Ok(stream)
}

fn check(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// and kafka:// URLs are supported")?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let mut stream = connect(authority)?;
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

/// Metadata v4 (the oldest Kafka 4 still serves), request header v1, no topics; the answer must
/// carry our correlation id and at least one broker.
fn check_kafka(authority: &str) -> Result<String, String> {
    const CORRELATION: i32 = 0x6f66_6863;
    let client = b"orderflow-healthcheck";
    let mut body = Vec::new();
    body.extend_from_slice(&3i16.to_be_bytes()); // api key: Metadata
    body.extend_from_slice(&4i16.to_be_bytes()); // api version
    body.extend_from_slice(&CORRELATION.to_be_bytes());
    body.extend_from_slice(&(client.len() as i16).to_be_bytes());
    body.extend_from_slice(client);
    body.extend_from_slice(&0i32.to_be_bytes()); // topics: none
    body.push(0); // allow_auto_topic_creation: false
    let mut request = (body.len() as i32).to_be_bytes().to_vec();
    request.extend_from_slice(&body);
    let mut stream = connect(authority)?;
    stream.write_all(&request).map_err(|e| e.to_string())?;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).map_err(|e| format!("no answer to a metadata request: {e}"))?;
    let size = i32::from_be_bytes(size);
    if !(16..=16 << 20).contains(&size) {
        return Err(format!("not a Kafka answer (size {size})"));
    }
    let mut answer = vec![0u8; size as usize];
    stream.read_exact(&mut answer).map_err(|e| format!("a short metadata answer: {e}"))?;
    let int = |at: usize| i32::from_be_bytes(answer[at..at + 4].try_into().expect("four bytes"));
    if int(0) != CORRELATION {
        return Err("not a Kafka answer (another correlation id)".into());
    }
    // correlation id, throttle time, then the brokers array's length.
    match int(8) {
        brokers if brokers > 0 => Ok(format!("Kafka answers with {brokers} broker(s)")),
        _ => Err("Kafka answers but names no broker yet".into()),
    }
}
