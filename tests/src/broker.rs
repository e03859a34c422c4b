//! A real Kafka-protocol broker (tansu, SQLite storage) per test, on its own port and data
//! directory; tests can SIGKILL it and start it again with its data intact.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Message,
    consumer::{Consumer, StreamConsumer},
    message::{Headers, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
};

pub struct TestBroker {
    pub bootstrap: String,
    port: u16,
    dir: PathBuf,
    /// tansu's `--storage-engine`: SQLite by default (durable, so tests can restart it).
    storage: String,
    child: Option<Child>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl TestBroker {
    pub fn spawn() -> TestBroker {
        Self::spawn_with_storage("sqlite://tansu.db")
    }

    /// A broker on another of tansu's storage engines (`memory://tansu/`: object storage in
    /// memory, which serves whole stored batches only).
    pub fn spawn_with_storage(storage: &str) -> TestBroker {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("orderflow-broker-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut broker =
            TestBroker { bootstrap: format!("127.0.0.1:{port}"), port, dir, storage: storage.into(), child: None };
        broker.start();
        broker
    }

    /// Starts the broker (again) on the same port and data.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let tansu = std::env::var("ORDERFLOW_TANSU_BIN").unwrap_or_else(|_| "tansu".into());
        let child = Command::new(&tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                &self.storage,
            ])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("broker.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {tansu} (install it with scripts/test.sh): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "broker did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no clean shutdown, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }

    pub fn settings(&self) -> orderflow_platform::kafka::KafkaSettings {
        orderflow_platform::kafka::KafkaSettings::new(&self.bootstrap)
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        self.settings().ensure_topics(&[(topic, partitions)]).await.expect("create topic");
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
        let consumer: rdkafka::consumer::BaseConsumer =
            self.settings().consumer("test-committer", group).create().unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset)).unwrap();
        consumer.commit(&list, rdkafka::consumer::CommitMode::Sync).unwrap();
    }

    /// Reads `topic` from the beginning with a fresh group until `count` records arrived.
    pub async fn read(&self, topic: &str, count: usize, timeout: Duration) -> Vec<OwnedMessage> {
        let group = format!("test-reader-{}", uuid::Uuid::new_v4().simple());
        let consumer: StreamConsumer = self.settings().consumer("test-reader", &group).create().unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < count {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(message)) => out.push(message.detach()),
                Ok(Err(error)) => panic!("consuming {topic}: {error}"),
                Err(_) => panic!("read {} of {count} records from {topic} in {timeout:?}", out.len()),
            }
        }
        out
    }

    /// Reads `topic` until `expected` distinct identities (per `identity`) arrived; duplicates
    /// from at-least-once delivery are kept in the returned list.
    /// The first record of `topic` (from the beginning) that `wanted` accepts.
    pub async fn find(&self, topic: &str, timeout: Duration, wanted: impl Fn(&OwnedMessage) -> bool) -> OwnedMessage {
        let group = format!("test-reader-{}", uuid::Uuid::new_v4().simple());
        let consumer: StreamConsumer = self.settings().consumer("test-reader", &group).create().unwrap();
        consumer.subscribe(&[topic]).unwrap();
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

    pub async fn read_distinct(
        &self,
        topic: &str,
        expected: usize,
        timeout: Duration,
        identity: impl Fn(&OwnedMessage) -> String,
    ) -> Vec<OwnedMessage> {
        let group = format!("test-reader-{}", uuid::Uuid::new_v4().simple());
        let consumer: StreamConsumer = self.settings().consumer("test-reader", &group).create().unwrap();
        consumer.subscribe(&[topic]).unwrap();
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
            .send(FutureRecord::to(topic).key(key).payload(payload), Duration::from_secs(10))
            .await
            .expect("send");
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("broker data and log kept for the failed test: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
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
