//! Kafka's own CLI classes (ProducerPerformance, ConsumerPerformance, ConsumerGroupCommand, …)
//! run from the jars `scripts/lib_kafka.sh` fetched, as peers of orderflow's own tools: the
//! benchmark's baselines and the tests' second opinion. `ORDERFLOW_JAVA` and
//! `ORDERFLOW_KAFKA_LIBS` say where Java and the jars are (the scripts export both);
//! `ORDERFLOW_KAFKA_CONFIG_DIR` holds the logging config (`ops/kafka`).

use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// `java <jvm options> -cp <libs>/* <class>`, logging to stderr.
pub fn java(jvm_options: &[&str], class: &str) -> anyhow::Result<Command> {
    let libs = std::env::var("ORDERFLOW_KAFKA_LIBS").context(
        "ORDERFLOW_KAFKA_LIBS is not set: run this through scripts/ (they fetch Kafka's jars and export it)",
    )?;
    let java = std::env::var("ORDERFLOW_JAVA").unwrap_or_else(|_| "java".into());
    let mut command = Command::new(java);
    command.args(jvm_options);
    if let Ok(dir) = std::env::var("ORDERFLOW_KAFKA_CONFIG_DIR") {
        command.arg(format!("-Dlog4j2.configurationFile={dir}/log4j2.properties"));
    }
    command.arg("-cp").arg(format!("{libs}/*")).arg(class).stdin(Stdio::null());
    Ok(command)
}

/// Runs `class` with `args` to the end; its standard output, or an error with the end of its
/// standard error.
pub fn run(class: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = java(&["-Xmx512m"], class)?
        .env("ORDERFLOW_KAFKA_LOG_LEVEL", "WARN")
        .args(args)
        .output()
        .with_context(|| format!("starting {class}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        bail!("{class} failed ({}):\n{}", output.status, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    Ok(stdout)
}

/// One partition of `kafka-consumer-groups --describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPartition {
    pub topic: String,
    pub partition: i32,
    /// `None` where the group has not committed.
    pub current_offset: Option<i64>,
    pub log_end_offset: i64,
    pub lag: Option<i64>,
}

/// `ConsumerGroupCommand --describe --group <group>`, parsed.
pub fn describe_group(bootstrap: &str, group: &str) -> anyhow::Result<Vec<GroupPartition>> {
    let out = run(
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        &["--bootstrap-server", bootstrap, "--describe", "--group", group],
    )?;
    let number = |s: &str| if s == "-" { Ok(None) } else { s.parse().map(Some) };
    let mut partitions = Vec::new();
    for line in out.lines().filter(|l| l.starts_with(group) && l.split_whitespace().next() == Some(group)) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 {
            bail!("unexpected consumer-groups line: {line}");
        }
        partitions.push(GroupPartition {
            topic: f[1].to_string(),
            partition: f[2].parse()?,
            current_offset: number(f[3])?,
            log_end_offset: f[4].parse()?,
            lag: number(f[5])?,
        });
    }
    Ok(partitions)
}

/// `ProducerPerformance`: `count` records of `size` bytes to `topic` as fast as the broker
/// acknowledges them, with `props` (e.g. `acks=all`); records/s from its closing summary.
pub fn producer_performance(
    bootstrap: &str,
    topic: &str,
    count: u64,
    size: usize,
    props: &[&str],
) -> anyhow::Result<f64> {
    let (count, size, servers) = (count.to_string(), size.to_string(), format!("bootstrap.servers={bootstrap}"));
    let mut args = vec!["--topic", topic, "--num-records", &count, "--record-size", &size, "--throughput", "-1"];
    args.extend(["--producer-props", &servers]);
    args.extend(props);
    let out = run("org.apache.kafka.tools.ProducerPerformance", &args)?;
    // "50000 records sent, 61349.7 records/sec (10.53 MB/sec), …": the last line is the summary.
    let summary = out.lines().rev().find(|l| l.contains(" records sent, ")).context("no summary line")?;
    summary
        .split(", ")
        .nth(1)
        .and_then(|field| field.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no records/sec in {summary:?}"))
}

/// `ConsumerPerformance`: reads `count` records of `topic` from the beginning in a fresh group;
/// records/s while fetching (`fetch.nMsg.sec`: joining the group is not throughput).
pub fn consumer_performance(bootstrap: &str, topic: &str, count: u64) -> anyhow::Result<f64> {
    let group = format!("perf-consumer-{}", uuid::Uuid::new_v4().simple());
    let count = count.to_string();
    let args = [
        "--bootstrap-server",
        bootstrap,
        "--topic",
        topic,
        "--num-records",
        &count,
        "--group",
        &group,
        "--timeout",
        "60000",
    ];
    let out = run("org.apache.kafka.tools.ConsumerPerformance", &args)?;
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().context("no header")?.split(',').map(str::trim).collect();
    let values: Vec<&str> = lines.next().context("no figures")?.split(',').map(str::trim).collect();
    let column = header.iter().position(|h| *h == "fetch.nMsg.sec").context("no fetch.nMsg.sec column")?;
    values.get(column).and_then(|v| v.parse().ok()).with_context(|| format!("no fetch.nMsg.sec in {values:?}"))
}
