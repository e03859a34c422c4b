//! Client security on a real broker: a broker of the test's own whose clients must authenticate
//! with SASL/SCRAM-SHA-512 over TLS (`TestBroker::spawn_secured`: a PEM keystore from a test CA,
//! the SCRAM user formatted into the cluster's metadata). The whole pipeline runs over it, and a
//! service given a wrong password, or a CA that did not sign the broker, stops at start saying
//! why — never printing the password.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chrono::Utc;
use orderflow_tests::{
    TestDatabase, binary,
    broker::{TestBroker, free_port},
    history::{Intake, check, wait_for_ops},
    stack::TestStack,
    tls::TestCa,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_pipeline_runs_over_sasl_scram_on_tls() {
    let broker = TestBroker::spawn_secured();
    // A client without credentials is refused on that listener: the pipeline below is
    // authenticated, not let through.
    let mut anonymous = orderflow_platform::kafka::KafkaSettings::new(&broker.bootstrap);
    anonymous.properties = broker.client_properties.iter().filter(|(k, _)| !k.starts_with("sasl.")).cloned().collect();
    anonymous.properties.push(("security.protocol".into(), "SSL".into()));
    let refused = tokio::time::timeout(Duration::from_secs(30), anonymous.check_access()).await;
    assert!(!matches!(refused, Ok(Ok(()))), "a TLS client without SASL got an answer from the SASL_SSL listener");

    let stack = TestStack::spawn_all_on(broker).await;
    let intake = Intake::start(&stack, 10.0);
    wait_for_ops(&intake, 60).await;
    let ops = intake.stop().await;
    let report = check(&stack, &ops, Utc::now(), Duration::from_secs(120)).await;
    report.print("the pipeline over SASL/SCRAM-SHA-512 on TLS");
    assert!(report.accepted >= 50, "orders went through: {report:?}");
    assert_eq!(report.lost, 0);
}

/// The inventory service as a process, its Kafka client settings from `properties` (a file,
/// as a secret comes), its log to a file; its metrics port.
struct Inventory {
    child: std::process::Child,
    log: std::path::PathBuf,
    metrics: u16,
}

impl Inventory {
    fn start(broker: &TestBroker, database_url: &str, properties: &std::path::Path) -> Inventory {
        let metrics = free_port();
        let log = std::env::temp_dir().join(format!("orderflow-inventory-{}.log", uuid::Uuid::new_v4().simple()));
        let child = Command::new(binary("inventory"))
            .env("ORDERFLOW_KAFKA_BOOTSTRAP", &broker.bootstrap)
            .env("ORDERFLOW_KAFKA_PROPERTIES_FILE", properties)
            .env("ORDERFLOW_KAFKA_NAMESPACE", &broker.namespace)
            .env("ORDERFLOW_INVENTORY_DATABASE_URL", database_url)
            .env("ORDERFLOW_REGISTRY_URL", "http://127.0.0.1:1")
            .env("ORDERFLOW_METRICS_LISTEN", format!("127.0.0.1:{metrics}"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Inventory { child, log, metrics }
    }

    /// Its exit status, if it ends within `within`.
    fn ended_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Inventory {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_reads_its_kafka_credentials_from_a_file_and_a_wrong_one_stops_it_at_start_saying_why() {
    let broker = TestBroker::spawn_secured();
    let db = TestDatabase::create().await;
    let password = broker.password();

    // The right password, from a file: the service subscribes (its /readyz answers 200).
    let mut good = Inventory::start(&broker, &db.url, &broker.properties_file(&password));
    let ready = format!("http://127.0.0.1:{}/readyz", good.metrics);
    let http = orderflow_http::client().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(answer) = http.get(&ready).send().await
            && answer.status() == 200
        {
            break;
        }
        assert!(good.child.try_wait().unwrap().is_none(), "inventory exited with the right password:\n{}", good.log());
        assert!(Instant::now() < deadline, "inventory not ready over SASL_SSL within 90 s:\n{}", good.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(good);

    // A wrong password: it stops at start, saying the broker refused it and where the settings
    // come from, and the password is in no line of its log.
    let wrong = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    let mut refused = Inventory::start(&broker, &db.url, &broker.properties_file(&wrong));
    let status = refused.ended_within(Duration::from_secs(60));
    let log = refused.log();
    assert!(matches!(status, Some(s) if !s.success()), "a wrong password did not stop inventory ({status:?}):\n{log}");
    assert!(log.contains("refused this client"), "{log}");
    assert!(log.contains("Authentication failed") || log.contains("SASL authentication"), "{log}");
    assert!(log.contains("ORDERFLOW_KAFKA_PROPERTIES_FILE"), "{log}");
    assert!(!log.contains(&wrong) && !log.contains(&password), "a password in the log:\n{log}");
    println!("wrong password: {}", log.lines().find(|l| l.contains("refused this client")).unwrap_or_default());

    // The right password but a CA that did not sign the broker: stopped too, naming the
    // certificate.
    let other_ca = TestCa::new();
    let file = broker.properties_file(&password);
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace(broker.ca.as_ref().unwrap().ca_file().to_str().unwrap(), other_ca.ca_file().to_str().unwrap());
    std::fs::write(&file, text).unwrap();
    let mut untrusted = Inventory::start(&broker, &db.url, &file);
    let status = untrusted.ended_within(Duration::from_secs(60));
    let log = untrusted.log();
    assert!(
        matches!(status, Some(s) if !s.success()),
        "an unverifiable broker did not stop inventory ({status:?}):\n{log}"
    );
    assert!(log.contains("refused this client") && log.contains("certificate"), "{log}");
    println!("another CA: {}", log.lines().find(|l| l.contains("refused this client")).unwrap_or_default());
}
