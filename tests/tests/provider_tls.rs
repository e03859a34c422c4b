//! HTTPS to the providers: payment and notifications verify the provider's certificate against
//! the system's roots plus a CA file they are given (`ORDERFLOW_PROVIDER_CA_CERT`,
//! `ORDERFLOW_NOTIFY_PROVIDER_CA_CERT`); both simulators serve HTTPS from `--tls-cert` /
//! `--tls-key`. A certificate that does not verify sends nothing and is a configuration error,
//! said as such.

use std::time::Duration;

use orderflow_notifications::{NotificationClient, SendError};
use orderflow_payment::{ChargeError, ChargeOutcome, PaymentProviderClient, ProviderSettings};
use orderflow_tests::{
    Process, TestDatabase, binary,
    broker::free_port,
    intake::{eventually, sample_order},
    stack::{TestSimulator, TestStack},
    tls::TestCa,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

async fn payment_client(simulator: &TestSimulator, ca: Option<&TestCa>) -> PaymentProviderClient {
    let mut settings = ProviderSettings::new(&simulator.url);
    settings.api_key = Some(orderflow_platform::secret::Secret::new(&simulator.api_key));
    settings.ca_cert = ca.map(TestCa::ca_file);
    settings.deadline = Duration::from_secs(5);
    PaymentProviderClient::new(settings, &prometheus::Registry::new(), None).await.unwrap()
}

#[tokio::test]
async fn payment_charges_over_https_and_a_certificate_it_cannot_verify_charges_nothing() {
    let ca = TestCa::new();
    let simulator = TestSimulator::spawn_with(Some(ca.server_config())).await;
    assert!(simulator.url.starts_with("https://"), "{}", simulator.url);

    let trusted = payment_client(&simulator, Some(&ca)).await;
    let outcome = trusted.charge("tls-1", 1_999, "EUR", "customer-1", "order-1").await.unwrap();
    assert!(matches!(outcome, ChargeOutcome::Approved { .. }), "{outcome:?}");
    assert_eq!(simulator.ledger().await.len(), 1, "charged once, over HTTPS");

    // Signed by a CA the client was not given, or verified against the system's roots only:
    // refused in the handshake, before any byte of the request, and said to be configuration.
    let stranger = TestCa::new();
    for (what, client) in [
        ("another CA", payment_client(&simulator, Some(&stranger)).await),
        ("system roots", payment_client(&simulator, None).await),
    ] {
        match client.charge("tls-2", 500, "EUR", "customer-2", "order-2").await {
            Err(ChargeError::Misconfigured(reason)) => {
                assert!(reason.contains("certificate"), "{what}: the reason names the certificate: {reason}")
            }
            other => panic!("{what}: a certificate that does not verify is misconfiguration, got {other:?}"),
        }
    }
    assert_eq!(simulator.ledger().await.len(), 1, "nothing charged without a verified provider");

    // Plain HTTP to the HTTPS port: no answer, so ambiguous (retried), and nothing charged.
    let mut plain = ProviderSettings::new(&simulator.url.replacen("https://", "http://", 1));
    plain.api_key = Some(orderflow_platform::secret::Secret::new(&simulator.api_key));
    plain.deadline = Duration::from_secs(5);
    let plain = PaymentProviderClient::new(plain, &prometheus::Registry::new(), None).await.unwrap();
    let refused = plain.charge("tls-3", 500, "EUR", "customer-3", "order-3").await;
    assert!(matches!(refused, Err(ChargeError::Ambiguous(_))), "{refused:?}");
    assert_eq!(simulator.ledger().await.len(), 1);
}

/// A simulator binary serving HTTPS with the test CA's certificate; its admin port stays plain.
struct SimulatorProcess {
    url: String,
    admin_url: String,
    _db: TestDatabase,
    _process: Process,
}

async fn simulator_process(name: &str, prefix: &str, ca: &TestCa, api_key: Option<&str>) -> SimulatorProcess {
    let db = TestDatabase::create().await;
    let (port, admin) = (free_port(), free_port());
    let mut command = std::process::Command::new(binary(name));
    command
        .env(format!("{prefix}_LISTEN"), format!("127.0.0.1:{port}"))
        .env(format!("{prefix}_ADMIN_LISTEN"), format!("127.0.0.1:{admin}"))
        .env(format!("{prefix}_DATABASE_URL"), &db.url)
        .env(format!("{prefix}_TLS_CERT"), ca.server_cert())
        .env(format!("{prefix}_TLS_KEY"), ca.server_key())
        .env("RUST_LOG", "warn");
    if let Some(key) = api_key {
        command.env(format!("{prefix}_API_KEY"), key);
    }
    let process = Process::spawn(&mut command);
    let admin_url = format!("http://127.0.0.1:{admin}");
    let http = orderflow_tests::http();
    eventually(WAIT, "the simulator's admin port", || async {
        http.get(format!("{admin_url}/healthz")).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await;
    SimulatorProcess { url: format!("https://localhost:{port}"), admin_url, _db: db, _process: process }
}

impl SimulatorProcess {
    async fn ledger(&self) -> Vec<Value> {
        orderflow_tests::http().get(format!("{}/ledger", self.admin_url)).send().await.unwrap().json().await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notification_simulator_serves_https_and_notifications_trusts_only_the_ca_it_is_given() {
    let ca = TestCa::new();
    let simulator = simulator_process("notification-simulator", "ORDERFLOW_NOTIFY_SIMULATOR", &ca, None).await;

    let client = NotificationClient::new(&simulator.url, Duration::from_secs(5), Some(&ca.ca_file())).unwrap();
    client.send("tls-email-1", "email", "ada@example.com", "order_confirmed", "order-1").await.unwrap();

    let stranger = TestCa::new();
    let untrusting =
        NotificationClient::new(&simulator.url, Duration::from_secs(5), Some(&stranger.ca_file())).unwrap();
    match untrusting.send("tls-email-2", "email", "bob@example.com", "order_confirmed", "order-2").await {
        Err(SendError::Unavailable(reason)) => assert!(reason.contains("certificate"), "{reason}"),
        other => panic!("a certificate that does not verify must not send: {other:?}"),
    }
    let ledger = simulator.ledger().await;
    assert_eq!(ledger.len(), 1, "only the verified send reached the provider: {ledger:?}");

    // A CA file that is not one is refused when the client is made, naming the file.
    let junk = stranger.dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let error = NotificationClient::new(&simulator.url, Duration::from_secs(5), Some(&junk)).err().unwrap();
    assert!(format!("{error:#}").contains("junk.pem"), "{error:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_is_paid_by_the_payment_binary_over_https_to_the_simulator_binary() {
    let stack = TestStack::spawn_without_payment().await;
    let ca = TestCa::new();
    let api_key = format!("sk_test_{}", uuid::Uuid::new_v4().simple());
    let provider = simulator_process("payment-simulator", "ORDERFLOW_SIMULATOR", &ca, Some(&api_key)).await;
    let _payment = Process::spawn(
        stack
            .service_command(binary("payment"))
            .env("ORDERFLOW_PAYMENTS_DATABASE_URL", &stack.payments_db.url)
            .env("ORDERFLOW_PROVIDER_URL", &provider.url)
            .env("ORDERFLOW_PROVIDER_API_KEY", &api_key)
            .env("ORDERFLOW_PROVIDER_CA_CERT", ca.ca_file()),
    );
    let response = stack.api.post_order(Some("tls-order"), &sample_order("tls-order")).await;
    assert_eq!(response.status(), 202);
    let order: uuid::Uuid = response.json::<Value>().await.unwrap()["order_id"].as_str().unwrap().parse().unwrap();
    stack.wait_for_status(order, "PAID", Duration::from_secs(120)).await;
    let ledger = provider.ledger().await;
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(ledger[0]["reference"], order.to_string());
}
