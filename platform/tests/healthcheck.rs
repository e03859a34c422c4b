//! `orderflow-healthcheck`, the compose healthchecks' probe, against real sockets.

use std::{
    io::{Read, Write},
    net::TcpListener,
    process::Command,
    thread,
};

/// Serves one request with `status_line`, returns the address.
fn answer_once(status_line: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request).unwrap();
        assert!(String::from_utf8_lossy(&request).starts_with("GET /readyz HTTP/1.1\r\n"));
        write!(stream, "{status_line}\r\ncontent-length: 2\r\n\r\nok").unwrap();
    });
    address
}

fn probe(url: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_orderflow-healthcheck")).arg(url).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn healthy_only_on_a_2xx_answer() {
    let (ok, out) = probe(&format!("http://{}/readyz", answer_once("HTTP/1.1 200 OK")));
    assert!(ok, "{out}");
    let (ok, out) = probe(&format!("http://{}/readyz", answer_once("HTTP/1.1 503 Service Unavailable")));
    assert!(!ok && out.contains("503"), "{out}");
}

#[test]
fn nothing_listening_or_a_bad_url_is_unhealthy() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (ok, _) = probe(&format!("http://{closed}/healthz"));
    assert!(!ok);
    let (ok, out) = probe("https://127.0.0.1:1/healthz");
    assert!(!ok && out.contains("only http://"), "{out}");
}

#[test]
fn a_kafka_broker_is_ready_when_it_answers_a_metadata_request() {
    let bootstrap = std::env::var("ORDERFLOW_TEST_KAFKA_BOOTSTRAP")
        .expect("ORDERFLOW_TEST_KAFKA_BOOTSTRAP is not set: run the suite with ./scripts/test.sh, which starts Kafka");
    let (ok, out) = probe(&format!("kafka://{bootstrap}"));
    assert!(ok && out.contains("1 broker"), "{out}");
}

#[test]
fn something_else_on_the_port_is_not_a_kafka_broker() {
    // An HTTP server answers the metadata request with an HTTP error.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 256];
        let _ = stream.read(&mut request);
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
    });
    let (ok, out) = probe(&format!("kafka://{address}"));
    assert!(!ok && out.contains("not a Kafka answer"), "{out}");
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (ok, _) = probe(&format!("kafka://{closed}"));
    assert!(!ok, "nothing listening");
}
