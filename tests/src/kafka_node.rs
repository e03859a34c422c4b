//! One broker process of a test's own ([`crate::broker::TestBroker::spawn_own`],
//! `spawn_cluster`): a KRaft node (broker and controller) from Kafka's jars and the repository's
//! `ops/kafka/server.properties`, on free ports and a temporary data directory — formatted,
//! started, killed.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

/// A broker process of one test's own: a KRaft node (broker and controller) of `voters`.
pub(crate) struct OwnBroker {
    pub node_id: i32,
    pub port: u16,
    pub controller_port: u16,
    /// `controller.quorum.voters`: every node of the test's quorum.
    pub voters: String,
    pub dir: PathBuf,
    pub child: Option<Child>,
    /// Clients authenticate with SASL/SCRAM over TLS on `port`; the nodes speak to each other on
    /// a PLAINTEXT listener of their own.
    pub secured: Option<Secured>,
}

/// A node's SASL/SCRAM-over-TLS listener: its certificate and key (PEM, the test CA's), the
/// one SCRAM user formatted into the cluster's metadata, and the port the nodes talk on.
#[derive(Clone)]
pub(crate) struct Secured {
    pub keystore: PathBuf,
    pub user: String,
    pub password: String,
    pub internal_port: u16,
}

impl OwnBroker {
    fn properties(&self) -> PathBuf {
        self.dir.join("server.properties")
    }

    /// Writes the repository's broker settings plus where this one listens and stores (and, in
    /// a cluster of `nodes`, the replication production asks for), and formats its data
    /// directory for the cluster `cluster_id`.
    pub fn format(&mut self, cluster_id: &str, nodes: i32) {
        let shared = kafka_config_dir().join("server.properties");
        let mut text =
            std::fs::read_to_string(&shared).unwrap_or_else(|e| panic!("cannot read {}: {e}", shared.display()));
        text.push_str(&format!(
            "\nnode.id={id}\ncontroller.quorum.voters={v}\nlog.dirs={d}\n",
            id = self.node_id,
            v = self.voters,
            d = self.dir.join("data").display(),
        ));
        let (p, c) = (self.port, self.controller_port);
        match &self.secured {
            None => text.push_str(&format!(
                "listeners=PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{p}\n"
            )),
            // Later keys win over the shared file's protocol map.
            Some(secured) => text.push_str(&format!(
                "listeners=PLAINTEXT://127.0.0.1:{i},SASL_SSL://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{i},SASL_SSL://127.0.0.1:{p}\n\
                 listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL\n\
                 sasl.enabled.mechanisms=SCRAM-SHA-512\n\
                 listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
                 org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
                 listener.name.sasl_ssl.ssl.keystore.type=PEM\n\
                 listener.name.sasl_ssl.ssl.keystore.location={k}\n",
                i = secured.internal_port,
                k = secured.keystore.display(),
            )),
        }
        if nodes > 1 {
            // Later keys win: the replication the chart's Strimzi topics ask for.
            let (rf, isr) = (nodes.min(3), nodes.min(3) - 1);
            text.push_str(&format!(
                "offsets.topic.replication.factor={rf}\ntransaction.state.log.replication.factor={rf}\n\
                 transaction.state.log.min.isr={isr}\nshare.coordinator.state.topic.replication.factor={rf}\n\
                 share.coordinator.state.topic.min.isr={isr}\ndefault.replication.factor={rf}\n\
                 min.insync.replicas={isr}\n"
            ));
        }
        std::fs::write(self.properties(), text).unwrap();
        let mut format = java(&["-Xmx256m"], "kafka.tools.StorageTool");
        format.args(["format", "-t", cluster_id, "-c"]).arg(self.properties());
        if let Some(secured) = &self.secured {
            // The user's SCRAM credential goes into the cluster's first metadata.
            format
                .arg("--add-scram")
                .arg(format!("SCRAM-SHA-512=[name={},password={}]", secured.user, secured.password));
        }
        let status = format
            .stdout(std::fs::File::create(self.dir.join("format.log")).unwrap())
            .stderr(Stdio::inherit())
            .status()
            .expect("cannot run java (scripts/test.sh installs and exports what the suite needs)");
        assert!(status.success(), "formatting the test's broker failed; see {}", self.dir.join("format.log").display());
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        assert!(TcpStream::connect(("127.0.0.1", self.port)).is_err(), "port {} is taken", self.port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("broker.log")).unwrap();
        let child = java(&["-Xms128m", "-Xmx384m", "-XX:+UseG1GC"], "kafka.Kafka")
            .arg(self.properties())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start the test's broker");
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `java` with the Kafka classpath and the repository's logging config.
pub(crate) fn java(jvm_options: &[&str], class: &str) -> Command {
    orderflow_tools::kafka_cli::java(jvm_options, class).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `ops/kafka` of the checkout under test, found at run time (never baked in at build time).
fn kafka_config_dir() -> PathBuf {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR when it runs a test");
    PathBuf::from(manifest).join("..").join("ops").join("kafka")
}

/// A KRaft cluster id: 16 random bytes, URL-safe base64 without padding.
pub(crate) fn base64_uuid() -> String {
    // One in 64 would start with '-', which `kafka-storage format -t` reads as an option (and then
    // fails the test that formats it); Kafka's own `Uuid.randomUuid()` draws again too.
    loop {
        let id = encode_base64(*uuid::Uuid::new_v4().as_bytes());
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn encode_base64(bytes: [u8; 16]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = String::new();
    for byte in bytes {
        bits = (bits << 8) | u32::from(byte);
        count += 8;
        while count >= 6 {
            count -= 6;
            out.push(ALPHABET[((bits >> count) & 63) as usize] as char);
        }
    }
    if count > 0 {
        out.push(ALPHABET[((bits << (6 - count)) & 63) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cluster_id_never_starts_with_a_dash_and_is_22_characters() {
        // Without the redraw, 2,000 ids would hold one starting with '-' but for a 1-in-10^13 chance.
        for _ in 0..2_000 {
            let id = super::base64_uuid();
            assert!(!id.starts_with('-') && id.len() == 22, "{id}");
        }
    }
}
