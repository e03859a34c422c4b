//! The `inventory` command line: the inventory consumer (group `inventory`), and its stock
//! administration. (A library module, so the test suite can run the real binary's code as a
//! process it can SIGKILL.)
//!
//! ```text
//! inventory                         # consume orders, reserve stock for paid orders
//! inventory stock set SKU-1=100 SKU-2=5
//! inventory stock show
//! ```

use crate::{GROUP, InventoryHandler, TOPICS};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "inventory", about = "Reserves stock for paid orders; seeds and shows stock")]
struct Args {
    #[arg(long, env = "ORDERFLOW_INVENTORY_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    consumer: orderflow_consumer_runtime::ConsumerArgs,
    /// Where `/metrics` (Prometheus) and `/healthz` are served.
    #[arg(long, env = "ORDERFLOW_METRICS_LISTEN", default_value = "127.0.0.1:9103")]
    metrics_listen: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Stock administration.
    #[command(subcommand)]
    Stock(StockCommand),
}

#[derive(Subcommand)]
enum StockCommand {
    /// Sets the available quantity of SKUs: `SKU=QUANTITY ...`.
    Set {
        #[arg(required = true, value_parser = parse_level)]
        levels: Vec<(String, i32)>,
    },
    /// Prints every SKU and its available quantity.
    Show,
}

fn parse_level(raw: &str) -> Result<(String, i32), String> {
    let (sku, quantity) = raw.split_once('=').ok_or_else(|| format!("{raw:?} is not SKU=QUANTITY"))?;
    let quantity: i32 = quantity.parse().map_err(|_| format!("{quantity:?} is not a whole number"))?;
    if sku.is_empty() || quantity < 0 {
        return Err(format!("{raw:?}: the SKU must be non-empty and the quantity zero or more"));
    }
    Ok((sku.to_string(), quantity))
}

/// Parses the command line and runs it.
pub fn main() -> anyhow::Result<()> {
    let args: Args = orderflow_platform::secret::parse();
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    orderflow_platform::telemetry::init("inventory");
    let pool = orderflow_platform::service::connect(&args.database_url, 20, "inventory").await?;
    crate::migrate(&pool).await?;
    match args.command {
        Some(Command::Stock(StockCommand::Set { levels })) => {
            crate::set_stock(&pool, &levels).await?;
            println!("set {} SKU(s)", levels.len());
            Ok(())
        }
        Some(Command::Stock(StockCommand::Show)) => {
            for (sku, available) in crate::stock_levels(&pool).await? {
                println!("{sku}\t{available}");
            }
            Ok(())
        }
        None => {
            let codec = args.consumer.codec()?;
            let handler = InventoryHandler { codec: codec.clone() };
            let settings = args.consumer.settings(GROUP, &TOPICS)?;
            orderflow_consumer_runtime::run_service(settings, pool, codec, handler, &args.metrics_listen).await
        }
    }
}
