//! Apache Kafka for the suites. Most tests share the one broker `scripts/test.sh` starts
//! (`ORDERFLOW_TEST_KAFKA_BOOTSTRAP`) and keep to their own namespace: every topic and consumer
//! group they or their services use is prefixed with it (`KafkaSettings::namespace`), so tests
//! run in parallel without meeting, and the namespace's topics are deleted when the test ends.
//! A test that kills or stops its broker gets one of its own ([`TestBroker::spawn_own`]): a
//! single-node KRaft JVM from the same jars (`ORDERFLOW_KAFKA_LIBS`) and the same
//! `ops/kafka/server.properties`, on free ports and a temporary data directory. A test of
//! failover gets a cluster of its own ([`TestBroker::spawn_cluster`]): three such JVMs, each a
//! broker and a controller of one KRaft quorum, topics replicated three times with
//! `min.insync.replicas=2` (as production's), each node killed, frozen and started alone.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Message,
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer, StreamConsumer},
    message::{Headers, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
};

use crate::{
    kafka_node::{OwnBroker, Secured, base64_uuid, java},
    tls::TestCa,
};

pub struct TestBroker {
    pub bootstrap: String,
    /// Prefix of this test's topics and groups (`t<random>.`).
    pub namespace: String,
    /// The broker processes of this test's own (one, or a cluster's three); none on the shared
    /// broker.
    own: Vec<OwnBroker>,
    /// What a client of a secured broker ([`TestBroker::spawn_secured`]) sets: SASL/SCRAM over
    /// TLS with the test's user; every client the harness and the test's services make uses it.
    pub client_properties: Vec<(String, String)>,
    /// The certificate authority a secured broker's certificate chains to.
    pub ca: Option<TestCa>,
}

/// A port on 127.0.0.1 that nothing listens on now, for a process the test starts to bind
/// later. Drawn at random below the kernel's ephemeral range (`ip_local_port_range`), never from
/// it: a port the kernel hands out for `bind(0)` is also the local end it picks for outgoing
/// connections, and with the suite's hundreds of connections one of them took a test broker's
/// port between the draw and the broker's bind (the broker exited at start with "Address already
/// in use"). Each port is handed out once per test process.
pub fn free_port() -> u16 {
    use std::{collections::HashSet, sync::Mutex};
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next().and_then(|low| low.parse::<u16>().ok()))
        .unwrap_or(32768);
    let (low, high) = if ephemeral_low > 12_000 { (10_000, ephemeral_low - 1) } else { (ephemeral_low, u16::MAX) };
    let mut given = GIVEN.lock().unwrap();
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let port = rand::random_range(low..=high);
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {low} and {high} after 1000 draws");
}

impl TestBroker {
    /// The suite's shared broker, under a namespace of this test's own.
    pub fn spawn() -> TestBroker {
        let bootstrap = std::env::var("ORDERFLOW_TEST_KAFKA_BOOTSTRAP").unwrap_or_else(|_| {
            panic!(
                "ORDERFLOW_TEST_KAFKA_BOOTSTRAP is not set: run the suite with ./scripts/test.sh, which starts Kafka"
            )
        });
        TestBroker { bootstrap, namespace: fresh_namespace(), own: Vec::new(), client_properties: Vec::new(), ca: None }
    }

    /// A broker of this test's own, which it may kill and start again with its data intact.
    pub fn spawn_own() -> TestBroker {
        Self::spawn_nodes(1, None)
    }

    /// A cluster of this test's own: three KRaft nodes (each a broker and a controller),
    /// topics replicated three times, `min.insync.replicas=2`; nodes are numbered 1 to 3.
    pub fn spawn_cluster() -> TestBroker {
        Self::spawn_nodes(3, None)
    }

    /// A broker of this test's own whose clients must authenticate with SASL/SCRAM-SHA-512 over
    /// TLS (its certificate from a test CA, in a PEM keystore; the user `orderflow` with a
    /// random password formatted into its metadata). `client_properties` says how to connect;
    /// [`TestBroker::properties_file`] writes them for a service.
    pub fn spawn_secured() -> TestBroker {
        let ca = TestCa::new();
        let keystore = ca.dir.join("kafka-keystore.pem");
        let mut pem = std::fs::read_to_string(ca.dir.join("server.key")).unwrap();
        pem.push_str(&std::fs::read_to_string(ca.dir.join("server.crt")).unwrap());
        std::fs::write(&keystore, pem).unwrap();
        let secured = Secured {
            keystore,
            user: "orderflow".into(),
            password: uuid::Uuid::new_v4().simple().to_string(),
            internal_port: free_port(),
        };
        let client_properties = Self::scram_properties(&ca, &secured.user, &secured.password);
        let mut broker = Self::spawn_nodes_with(1, Some(secured), client_properties);
        broker.ca = Some(ca);
        broker
    }

    /// A client of a secured broker: SASL/SCRAM-SHA-512 over TLS, verifying the broker's
    /// certificate against `ca`.
    fn scram_properties(ca: &TestCa, user: &str, password: &str) -> Vec<(String, String)> {
        [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", user),
            ("sasl.password", password),
            ("ssl.ca.location", ca.ca_file().to_str().unwrap()),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec()
    }

    /// The password of a secured broker's user.
    pub fn password(&self) -> String {
        self.client_properties.iter().find(|(k, _)| k == "sasl.password").map(|(_, v)| v.clone()).unwrap_or_default()
    }

    /// Writes this broker's client properties, one `key=value` per line, with `password` (the
    /// broker's, or a wrong one), to a file a service reads through
    /// `ORDERFLOW_KAFKA_PROPERTIES_FILE`.
    pub fn properties_file(&self, password: &str) -> PathBuf {
        let file = std::env::temp_dir().join(format!("orderflow-kafka-{}.properties", uuid::Uuid::new_v4().simple()));
        let mut text = String::from("# the test broker's client settings\n");
        for (key, value) in &self.client_properties {
            let value = if key == "sasl.password" { password } else { value };
            text.push_str(&format!("{key}={value}\n"));
        }
        std::fs::write(&file, text).unwrap();
        file
    }

    fn spawn_nodes(count: i32, secured: Option<Secured>) -> TestBroker {
        Self::spawn_nodes_with(count, secured, Vec::new())
    }

    fn spawn_nodes_with(count: i32, secured: Option<Secured>, client_properties: Vec<(String, String)>) -> TestBroker {
        let dir = std::env::temp_dir().join(format!("orderflow-kafka-{}", uuid::Uuid::new_v4().simple()));
        let ports: Vec<(u16, u16)> = (0..count).map(|_| (free_port(), free_port())).collect();
        let voters: Vec<String> =
            ports.iter().zip(1..).map(|((_, controller), id)| format!("{id}@127.0.0.1:{controller}")).collect();
        let cluster_id = base64_uuid();
        let mut own: Vec<OwnBroker> = ports
            .iter()
            .zip(1..)
            .map(|(&(port, controller_port), node_id)| OwnBroker {
                node_id,
                port,
                controller_port,
                voters: voters.join(","),
                dir: dir.join(format!("node-{node_id}")),
                child: None,
                secured: secured.clone(),
            })
            .collect();
        for node in &mut own {
            std::fs::create_dir_all(&node.dir).unwrap();
            node.format(&cluster_id, count);
        }
        let bootstrap = own.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",");
        let mut broker = TestBroker { bootstrap, namespace: fresh_namespace(), own, client_properties, ca: None };
        broker.start();
        broker
    }

    fn own_mut(&mut self) -> &mut Vec<OwnBroker> {
        assert!(
            !self.own.is_empty(),
            "only a broker of the test's own (TestBroker::spawn_own, spawn_cluster) can be stopped and started"
        );
        &mut self.own
    }

    fn node(&mut self, node_id: i32) -> &mut OwnBroker {
        let own = self.own_mut();
        own.iter_mut()
            .find(|n| n.node_id == node_id)
            .unwrap_or_else(|| panic!("no node {node_id} in the test's cluster"))
    }

    /// Starts the test's own brokers that are not running (again) on the same ports and data;
    /// returns once the metadata names every node as a broker.
    pub fn start(&mut self) {
        for node in self.own_mut().iter_mut().filter(|n| n.child.is_none()) {
            node.start();
        }
        self.wait_for_brokers();
    }

    /// Waits until the metadata names every node as a live broker.
    fn wait_for_brokers(&mut self) {
        let wanted = self.own.len();
        let deadline = Instant::now() + Duration::from_secs(120);
        let probe: BaseConsumer = self.client_config().set("socket.timeout.ms", "2000").create().unwrap();
        loop {
            match probe.fetch_metadata(None, Duration::from_secs(2)) {
                Ok(metadata) if metadata.brokers().len() >= wanted => return,
                _ => {}
            }
            for node in self.own_mut().iter_mut() {
                if let Some(status) = node.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                    let log = node.dir.join("broker.log");
                    panic!("the test's broker {} exited at start ({status}); log: {}", node.node_id, log.display());
                }
            }
            assert!(Instant::now() < deadline, "the test's brokers did not all answer within 120 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL of the test's own brokers: no clean shutdown, as in a crash.
    pub fn kill(&mut self) {
        for node in self.own_mut() {
            node.kill();
        }
    }

    /// SIGKILL of one node of the test's cluster: no clean shutdown, as in a crash.
    pub fn kill_node(&mut self, node_id: i32) {
        self.node(node_id).kill();
    }

    /// Starts one node again (its data intact); returns once it is a broker of the cluster again.
    pub fn start_node(&mut self, node_id: i32) {
        self.node(node_id).start();
        self.wait_for_brokers();
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) of one node: a broker that hangs, not one that died.
    pub fn freeze_node(&mut self, node_id: i32, frozen: bool) {
        let node = self.node(node_id);
        let pid = node.child.as_ref().unwrap_or_else(|| panic!("node {node_id} is not running")).id();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &pid.to_string()]).status().expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// The nodes of the test's own brokers (1 to 3 in a cluster).
    pub fn node_ids(&self) -> Vec<i32> {
        self.own.iter().map(|n| n.node_id).collect()
    }

    /// The node leading `topic`'s `partition` (a logical name) and its in-sync replicas, as the
    /// metadata says now.
    pub fn leader(&self, topic: &str, partition: i32) -> (i32, Vec<i32>) {
        let probe: BaseConsumer = self.client_config().create().unwrap();
        let topic = self.topic(topic);
        let metadata = probe.fetch_metadata(Some(&topic), Duration::from_secs(10)).unwrap();
        let found =
            metadata.topics().iter().find(|t| t.name() == topic).and_then(|t| {
                t.partitions().iter().find(|p| p.id() == partition).map(|p| (p.leader(), p.isr().to_vec()))
            });
        found.unwrap_or_else(|| panic!("no metadata for {topic}/{partition}"))
    }

    /// The node leading the KRaft quorum (the active controller), from Kafka's own
    /// `kafka-metadata-quorum describe --status`.
    pub fn active_controller(&self) -> i32 {
        let output = java(&["-Xmx128m"], "org.apache.kafka.tools.MetadataQuorumCommand")
            .args(["--bootstrap-server", &self.bootstrap, "describe", "--status"])
            .stderr(Stdio::null())
            .output()
            .expect("kafka-metadata-quorum");
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines()
            .find_map(|l| l.trim().strip_prefix("LeaderId:").and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no LeaderId in kafka-metadata-quorum's answer: {text}"))
    }

    /// The broker's name of this test's logical topic `name` (a name already in the namespace
    /// is returned as it is).
    pub fn topic(&self, name: &str) -> String {
        if name.starts_with(&self.namespace) { name.to_string() } else { format!("{}{name}", self.namespace) }
    }

    /// The broker's name of this test's logical consumer group `name`.
    pub fn group(&self, name: &str) -> String {
        self.topic(name)
    }

    /// Every record in this test's dead-letter topics (`*.DLT` in its namespace), by topic.
    pub fn dead_letters(&self) -> Vec<(String, orderflow_consumer_runtime::dlt_tools::DeadLetter)> {
        let consumer: rdkafka::consumer::BaseConsumer = self.client_config().create().unwrap();
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap();
        let kafka = self.settings();
        let mut letters = Vec::new();
        for topic in metadata.topics() {
            let name = topic.name();
            if name.starts_with(&self.namespace) && name.ends_with(".DLT") && !topic.partitions().is_empty() {
                // A DLT created a moment ago may not have a leader yet: ask again, briefly.
                let mut tries = 0;
                let read = loop {
                    match orderflow_consumer_runtime::dlt_tools::read(&kafka, name) {
                        Ok(read) => break read,
                        Err(error) if tries < 20 => {
                            tries += 1;
                            eprintln!("reading {name} again: {error:#}");
                            std::thread::sleep(Duration::from_millis(250));
                        }
                        Err(error) => panic!("reading {name}: {error:#}"),
                    }
                };
                letters.extend(read.into_iter().map(|letter| (name.to_string(), letter)));
            }
        }
        letters
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in &self.client_properties {
            config.set(key, value);
        }
        config
    }

    /// Settings for this test's services: the broker and the test's namespace (on a cluster,
    /// topics replicated to every node).
    pub fn settings(&self) -> orderflow_platform::kafka::KafkaSettings {
        let mut settings = orderflow_platform::kafka::KafkaSettings::new(&self.bootstrap);
        settings.properties = self.client_properties.clone();
        settings.namespace = self.namespace.clone();
        settings.replication_factor = self.own.len().max(1) as i32;
        settings
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        self.settings().ensure_topics(&[(&self.topic(topic), partitions)]).await.expect("create topic");
    }

    pub fn producer(&self) -> FutureProducer {
        self.settings().producer("test-producer", Duration::from_secs(10)).create().unwrap()
    }

    /// A producer that waits `linger` to fill a batch, so records sent together share one.
    pub fn batching_producer(&self, linger: Duration) -> FutureProducer {
        let mut config = self.settings().producer("test-producer", Duration::from_secs(10));
        config.set("linger.ms", linger.as_millis().to_string());
        config.create().unwrap()
    }

    /// Commits `offset` (the next to read) for `group` on one partition, as a member that left.
    pub fn commit(&self, group: &str, topic: &str, partition: i32, offset: i64) {
        let consumer: BaseConsumer = self.settings().consumer("test-committer", &self.group(group)).create().unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition_offset(&self.topic(topic), partition, rdkafka::Offset::Offset(offset)).unwrap();
        consumer.commit(&list, rdkafka::consumer::CommitMode::Sync).unwrap();
    }

    fn reader(&self, topic: &str) -> StreamConsumer {
        let group = format!("{}test-reader-{}", self.namespace, uuid::Uuid::new_v4().simple());
        let consumer: StreamConsumer = self.settings().consumer("test-reader", &group).create().unwrap();
        consumer.subscribe(&[&self.topic(topic)]).unwrap();
        consumer
    }

    /// Reads `topic` from the beginning with a fresh group until `count` records arrived.
    pub async fn read(&self, topic: &str, count: usize, timeout: Duration) -> Vec<OwnedMessage> {
        let consumer = self.reader(topic);
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        // librdkafka reports a lost connection (a cluster's node killed) and goes on: so does
        // the reader, naming the last such error should it run out of time.
        let mut last_error = None;
        while out.len() < count {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(message)) => out.push(message.detach()),
                Ok(Err(error)) => last_error = Some(error),
                Err(_) => panic!(
                    "read {} of {count} records from {topic} in {timeout:?} (last consumer error: {last_error:?})",
                    out.len()
                ),
            }
        }
        out
    }

    /// Every record of `topic` from the beginning: waits until it has `at_least`, then reads
    /// until nothing more arrives for `quiet`.
    pub async fn read_all(&self, topic: &str, at_least: usize, quiet: Duration) -> Vec<OwnedMessage> {
        self.read(topic, at_least, Duration::from_secs(60)).await;
        let consumer = self.reader(topic);
        let mut out = Vec::new();
        // The first record waits for the group to be joined; then `quiet` ends the read.
        let mut until = tokio::time::Instant::now() + Duration::from_secs(30).max(quiet);
        // Until nothing has arrived for `quiet`; a lost connection is reported and consumption
        // goes on.
        while let Ok(received) = tokio::time::timeout_at(until, consumer.recv()).await {
            if let Ok(message) = received {
                out.push(message.detach());
                until = tokio::time::Instant::now() + quiet;
            }
        }
        assert!(out.len() >= at_least, "read {} of at least {at_least} records from {topic}", out.len());
        out
    }

    /// The first record of `topic` (from the beginning) that `wanted` accepts.
    pub async fn find(&self, topic: &str, timeout: Duration, wanted: impl Fn(&OwnedMessage) -> bool) -> OwnedMessage {
        let consumer = self.reader(topic);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(message)) if wanted(&message.detach()) => return message.detach(),
                Ok(Ok(_)) => {}
                Ok(Err(error)) => panic!("consuming {topic}: {error}"),
                Err(_) => panic!("no wanted record in {topic} within {timeout:?}"),
            }
        }
    }

    /// Reads `topic` until `expected` distinct identities (per `identity`) arrived; duplicates
    /// from at-least-once delivery are kept in the returned list.
    pub async fn read_distinct(
        &self,
        topic: &str,
        expected: usize,
        timeout: Duration,
        identity: impl Fn(&OwnedMessage) -> String,
    ) -> Vec<OwnedMessage> {
        let consumer = self.reader(topic);
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while seen.len() < expected {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(message)) => {
                    let message = message.detach();
                    seen.insert(identity(&message));
                    out.push(message);
                }
                Ok(Err(error)) => panic!("consuming {topic}: {error}"),
                Err(_) => panic!("read {} of {expected} distinct records from {topic} in {timeout:?}", seen.len()),
            }
        }
        out
    }

    /// Sends raw bytes (e.g. poison) to a topic.
    pub async fn send_raw(&self, topic: &str, key: &str, payload: &[u8]) {
        self.producer()
            .send(FutureRecord::to(&self.topic(topic)).key(key).payload(payload), Duration::from_secs(10))
            .await
            .expect("send");
    }

    /// Deletes every topic of this test's namespace on the shared broker (a broker of the
    /// test's own goes with its data directory).
    fn delete_namespace(&self) {
        let (config, namespace) = (self.client_config(), self.namespace.clone());
        // Off the test's runtime: a drop may run on it, and the admin calls block.
        let cleanup = std::thread::spawn(move || {
            let probe: BaseConsumer = config.create().ok()?;
            let metadata = probe.fetch_metadata(None, Duration::from_secs(5)).ok()?;
            let topics: Vec<String> = metadata
                .topics()
                .iter()
                .map(|t| t.name().to_string())
                .filter(|name| name.starts_with(&namespace))
                .collect();
            if topics.is_empty() {
                return Some(());
            }
            let admin: AdminClient<DefaultClientContext> = config.create().ok()?;
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            futures::executor::block_on(admin.delete_topics(&names, &options)).ok()?;
            Some(())
        });
        let _ = cleanup.join();
    }
}

fn fresh_namespace() -> String {
    format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if self.own.is_empty() {
            self.delete_namespace();
            return;
        }
        let dir = self.own[0].dir.parent().map(PathBuf::from);
        for node in &mut self.own {
            // A frozen node dies of SIGKILL only once continued.
            if let Some(child) = &node.child {
                let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            }
            node.kill();
        }
        let Some(dir) = dir else { return };
        if std::thread::panicking() {
            eprintln!("broker data and logs kept for the failed test: {}", dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// A header's value as text.
pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

pub fn key(message: &OwnedMessage) -> String {
    String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned()
}
