//! `orderflow-demo`: pushes a steady stream of sample orders into order-api and prints, every
//! second, how many were accepted, published to Kafka, paid and declined — until ctrl-c.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use sqlx::PgPool;

#[derive(Parser)]
#[command(name = "orderflow-demo", about = "Live order stream with per-second progress")]
struct Args {
    #[arg(long, env = "ORDERFLOW_API_URL", default_value = "http://127.0.0.1:18080")]
    api: String,
    #[command(flatten)]
    auth: orderflow_tools::issuer::ApiAuthArgs,
    /// The orders database, read for progress (published / paid / declined).
    #[arg(long, env = "ORDERFLOW_ORDERS_DATABASE_URL", hide_env_values = true)]
    orders_database_url: String,
    /// Orders per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Share of orders from customers whose card is declined.
    #[arg(long, default_value_t = 0.1)]
    decline_share: f64,
}

async fn counts(pool: &PgPool) -> sqlx::Result<(i64, i64, i64, i64, i64)> {
    sqlx::query_as(
        "SELECT count(*) - (SELECT count(*) FROM outbox WHERE event_type = 'OrderPlaced'),
                count(*) FILTER (WHERE status IN ('PAID', 'CANCELLED', 'REFUNDED')),
                count(*) FILTER (WHERE status = 'PAYMENT_FAILED'),
                count(*) FILTER (WHERE status = 'PENDING_PAYMENT'),
                count(*) FILTER (WHERE status = 'REFUNDED')
         FROM orders",
    )
    .fetch_one(pool)
    .await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = orderflow_platform::secret::parse();
    let pool = PgPool::connect(&args.orders_database_url).await?;
    let http = args.auth.client("orderflow-demo", orderflow_http::client())?;
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    {
        let (accepted, refused, api, http) = (accepted.clone(), refused.clone(), args.api.clone(), http.clone());
        let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
        let share = args.decline_share;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let body = orderflow_tools::sample_order(&mut rand::rng(), share);
                let (accepted, refused, api, http) = (accepted.clone(), refused.clone(), api.clone(), http.clone());
                tokio::spawn(async move {
                    match orderflow_tools::post_order(&http, &api, &body).await {
                        202 => accepted.fetch_add(1, Ordering::Relaxed),
                        _ => refused.fetch_add(1, Ordering::Relaxed),
                    };
                });
            }
        });
    }
    let start = Instant::now();
    let base = counts(&pool).await?;
    let mut last = (0u64, 0i64, 0i64, 0i64);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    println!("pushing {} orders/s into {} (ctrl-c stops)", args.rate, args.api);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = orderflow_platform::shutdown::shutdown_signal() => break,
        }
        let (published, paid, declined, pending, refunded) = match counts(&pool).await {
            Ok(c) => (c.0 - base.0, c.1 - base.1, c.2 - base.2, c.3, c.4 - base.4),
            Err(e) => {
                println!("{:>5.0}s  orders database unreachable: {e}", start.elapsed().as_secs_f64());
                continue;
            }
        };
        let acc = accepted.load(Ordering::Relaxed);
        println!(
            "{:>5.0}s  accepted {:>4}/s ({acc:>6})  published {:>4}/s ({published:>6})  paid {:>4}/s ({paid:>6})  declined {:>4}/s ({declined:>5})  out of stock+refunded {refunded:>4}  pending {pending:>5}  refused {}",
            start.elapsed().as_secs_f64(),
            acc - last.0,
            published - last.1,
            paid - last.2,
            declined - last.3,
            refused.load(Ordering::Relaxed),
        );
        last = (acc, published, paid, declined);
    }
    Ok(())
}
