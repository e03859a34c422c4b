//! `orderflow-dlt`: inspect and replay dead-letter topics (`<topic>.<group>.DLT`).
//!
//!   orderflow-dlt list orders.payment.DLT
//!   orderflow-dlt replay orders.payment.DLT --error-class registry_unavailable
//!   orderflow-dlt replay orders.payment.DLT --offsets 10-20
//!   orderflow-dlt triage orders.payment.DLT                 # everything listed so far is dealt with
//!   orderflow-dlt rewind payment --to 1h                    # what the group would read again
//!   orderflow-dlt rewind payment --to 1h --execute          # the group stopped: rewind it

use std::collections::BTreeMap;

use anyhow::Context;
use clap::{Parser, Subcommand};
use orderflow_consumer_runtime::{
    dlt_tools::{self, Selection},
    rewind,
};
use orderflow_platform::kafka::KafkaArgs;

#[derive(Parser)]
#[command(name = "orderflow-dlt", about = "List and replay dead-letter topics; rewind a consumer group")]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every record with its reason, then counts by error class.
    List { dlt: String },
    /// Re-publish selected records to their original topic (consumers dedupe, so this is safe).
    Replay {
        dlt: String,
        /// Only this partition's records.
        #[arg(long)]
        partition: Option<i32>,
        /// Inclusive offset range, `from-to`.
        #[arg(long)]
        offsets: Option<String>,
        #[arg(long)]
        event_id: Option<String>,
        #[arg(long)]
        error_class: Option<String>,
        /// Replay everything in the DLT (required when no other selector is given).
        #[arg(long)]
        all: bool,
    },
    /// Record that the dead letters up to an offset were looked at (replayed or deliberately
    /// left): the lag exporter stops counting them as untriaged and the DLT alert resolves.
    Triage {
        dlt: String,
        /// The last offset triaged (inclusive); default: everything in the DLT now.
        #[arg(long)]
        through: Option<i64>,
    },
    /// Move a consumer group's offsets on a topic to a time, the beginning or offsets per
    /// partition, so it reads those records again (consumers dedupe: what was handled right is
    /// skipped). Without --execute: a dry run that shows what would be re-read. Refused while
    /// the group has live members (stop its instances first).
    Rewind {
        /// The consumer group (its logical name: ORDERFLOW_KAFKA_NAMESPACE is added).
        group: String,
        /// The topic (logical name).
        #[arg(long, default_value = "orders")]
        topic: String,
        /// `1h`, `90m`, `2d` (back from now), a time (`2026-12-02T04:00:00Z`), `earliest`, or
        /// offsets per partition (`0:120,3:77`).
        #[arg(long)]
        to: rewind::Target,
        /// Commit the new offsets (without it nothing changes).
        #[arg(long)]
        execute: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = orderflow_platform::secret::parse();
    let kafka = cli.kafka.settings()?;
    match cli.command {
        Command::List { dlt } => {
            let letters = dlt_tools::read(&kafka, &dlt)?;
            let mut by_class: BTreeMap<&str, usize> = BTreeMap::new();
            for d in &letters {
                *by_class.entry(&d.error_class).or_default() += 1;
                println!(
                    "p{} @{:<6} {:<24} event {:<36} type {:<20} from {:<10} attempts {:<2} {}",
                    d.partition,
                    d.offset,
                    d.error_class,
                    d.event_id.as_deref().unwrap_or("-"),
                    d.event_type.as_deref().unwrap_or("-"),
                    d.original_topic.as_deref().unwrap_or("-"),
                    d.attempts.as_deref().unwrap_or("-"),
                    d.error_message
                );
            }
            println!("{} records in {dlt}", letters.len());
            for (class, count) in by_class {
                println!("  {count:>6}  {class}");
            }
        }
        Command::Replay { dlt, partition, offsets, event_id, error_class, all } => {
            let offsets = offsets
                .map(|raw| {
                    let (from, to) = raw.split_once('-').context("--offsets takes from-to")?;
                    anyhow::Ok((from.trim().parse()?, to.trim().parse()?))
                })
                .transpose()?;
            let selection = Selection { partition, offsets, event_id, error_class };
            if selection.is_everything() && !all {
                anyhow::bail!("choose what to replay: --partition, --offsets, --event-id, --error-class, or --all");
            }
            let replayed = dlt_tools::replay(&kafka, &dlt, &selection).await?;
            println!("replayed {replayed} records from {dlt}");
        }
        Command::Rewind { group, topic, to, execute } => {
            let (group, topic) = (kafka.group(&group), kafka.topic(&topic));
            let plan = rewind::plan(&kafka, &group, &topic, &to)?;
            for m in &plan.moves {
                let committed = m.committed.map_or("none".to_string(), |c| c.to_string());
                let effect = match m.reread() {
                    n if n > 0 => format!("reads {n} records again"),
                    0 => "unchanged".to_string(),
                    n => format!("skips {} records", -n),
                };
                println!(
                    "{topic} p{:<3} committed {committed:>8} -> {:<8} {effect:<28} (the partition holds {}..{})",
                    m.partition, m.target, m.low, m.high
                );
            }
            println!("group {group}: {} records to read again on {topic}", plan.reread());
            if !plan.members.is_empty() {
                println!("live members: {}", plan.members.join(", "));
            }
            if execute {
                rewind::apply(&kafka, &plan)?;
                println!("rewound: the group's next member starts from these offsets");
            } else {
                println!("dry run: nothing changed (add --execute to commit these offsets)");
            }
        }
        Command::Triage { dlt, through } => {
            for (partition, next) in dlt_tools::mark_triaged(&kafka, &dlt, through)? {
                println!("{dlt} p{partition}: triaged up to offset {next} (exclusive)");
            }
        }
    }
    Ok(())
}
