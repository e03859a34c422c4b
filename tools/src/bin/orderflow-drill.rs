//! `orderflow-drill`: docs/failure-catalog.md §8 at a chosen scale. With the payment service stopped, accept
//! N orders (they pile up on `orders`), then start K payment instances at once and watch the
//! backlog drain against the provider's limit. Live progress every second; at the end the
//! report: drain time against 1.1 × N / limit, provider requests per second (peak, mean),
//! 429s, retries, breaker openings, dead letters, duplicate charges, orders left pending.
//!
//! Run by `scripts/drill.sh`, which starts its own stack without the payment service.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use orderflow_payment_simulator::{LedgerEntry, faults::Stats};
use orderflow_tools::drill::{DrillReport, duplicate_charges, metric_sum};
use serde_json::json;
use sqlx::PgPool;

#[derive(Parser)]
#[command(name = "orderflow-drill", about = "Payments down, a backlog of orders, K instances come back: the drain")]
struct Args {
    #[arg(long, env = "ORDERFLOW_API_URL")]
    api_url: String,
    #[command(flatten)]
    auth: orderflow_tools::issuer::ApiAuthArgs,
    #[arg(long, env = "ORDERFLOW_ORDERS_DATABASE_URL", hide_env_values = true)]
    orders_database_url: String,
    #[arg(long, env = "ORDERFLOW_PAYMENTS_DATABASE_URL", hide_env_values = true)]
    payments_database_url: String,
    /// The payment simulator's admin port (faults, stats, ledger).
    #[arg(long, env = "ORDERFLOW_PROVIDER_ADMIN_URL")]
    provider_admin_url: String,
    /// The payment service binary; its other settings come from this environment.
    #[arg(long)]
    payment_bin: PathBuf,
    /// Orders accepted while payments are down.
    #[arg(long, default_value_t = 50_000)]
    orders: u64,
    /// Payment instances brought back at once.
    #[arg(long, default_value_t = 4)]
    instances: usize,
    /// The provider's limit (requests per second), enforced by the simulator with 429s and
    /// given to every payment instance.
    #[arg(long, default_value_t = 200.0)]
    limit: f64,
    /// Orders posted at once while filling the backlog.
    #[arg(long, default_value_t = 64)]
    intake_concurrency: usize,
    /// Orders per second while filling the backlog (checkout traffic during the outage; the
    /// outage must not be a flood the machine cannot take while it also serves the drill).
    #[arg(long, default_value_t = 300.0)]
    intake_rate: f64,
    /// Instance i serves its metrics on this port + i.
    #[arg(long, default_value_t = 28300)]
    metrics_port: u16,
    /// Where the instances' logs go.
    #[arg(long, default_value = "/var/tmp/orderflow-drill")]
    log_dir: PathBuf,
    /// Gives up (and fails) after this long draining.
    #[arg(long, default_value_t = 3600)]
    timeout_secs: u64,
}

struct Instances(Vec<Child>);

impl Drop for Instances {
    fn drop(&mut self) {
        for child in &mut self.0 {
            // SIGTERM: each instance commits what it finished and leaves the group.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = orderflow_platform::secret::parse();
    // ctrl-c or SIGTERM ends the drill through the same path as an error: the instances it
    // started are stopped (Instances' drop), never left running against the next drill.
    tokio::select! {
        result = drill(args) => result,
        () = orderflow_platform::shutdown::shutdown_signal() => anyhow::bail!("interrupted"),
    }
}

async fn drill(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.limit >= 1.0 && args.instances >= 1 && args.orders >= 1,
        "orders, instances and limit must be positive"
    );
    let http = orderflow_http::client().no_proxy().build()?;
    let pool = PgPool::connect(&args.orders_database_url).await?;
    let payments = PgPool::connect(&args.payments_database_url).await?;
    let admin = args.provider_admin_url.trim_end_matches('/');
    let limit = args.limit.round() as u64;
    let faults = http.put(format!("{admin}/admin/faults")).json(&json!({"rate_limit_per_sec": limit})).send().await?;
    anyhow::ensure!(faults.status().is_success(), "setting the provider limit: {}", faults.text().await?);
    http.delete(format!("{admin}/admin/stats")).send().await?.error_for_status()?;

    println!("1/3 payments are down; accepting {} orders", args.orders);
    // The API's client carries the token; the others (simulator, metrics) never see it.
    let api_http = args.auth.client("orderflow-drill", orderflow_http::client().no_proxy())?;
    fill_backlog(&args, &api_http).await?;
    let accepted: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&pool).await?;
    wait_published(&pool).await?;

    println!("2/3 bringing {} payment instances back at once (provider limit {limit}/s)", args.instances);
    std::fs::create_dir_all(&args.log_dir)?;
    let mut children = Vec::new();
    for i in 0..args.instances {
        let log = std::fs::File::create(args.log_dir.join(format!("payment-{i}.log")))?;
        let child = Command::new(&args.payment_bin)
            .env("ORDERFLOW_METRICS_LISTEN", format!("127.0.0.1:{}", args.metrics_port + i as u16))
            .env("ORDERFLOW_PROVIDER_RATE_LIMIT", args.limit.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", args.payment_bin.display()))?;
        children.push(child);
    }
    let mut instances = Instances(children);
    // The clock starts when they can work: each has migrated its database and joined the group
    // (`/readyz`), as a pod's readiness gate says.
    let ready_by = Instant::now() + Duration::from_secs(120);
    for i in 0..args.instances {
        let url = format!("http://127.0.0.1:{}/readyz", args.metrics_port + i as u16);
        while !http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
            if let Some(status) = instances.0[i].try_wait()? {
                anyhow::bail!(
                    "payment instance {i} exited ({status}); see {}",
                    args.log_dir.join(format!("payment-{i}.log")).display()
                );
            }
            anyhow::ensure!(Instant::now() < ready_by, "payment instance {i} not ready within 120 s ({url})");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let started = Instant::now();
    let start_second = chrono::Utc::now().timestamp();

    println!("3/3 draining");
    let (mut last_requests, mut last_at) = (0, Instant::now());
    let mut drained: Option<Duration> = None;
    let pending = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (i, child) in instances.0.iter_mut().enumerate() {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "payment instance {i} exited ({status}); see {}",
                    args.log_dir.join(format!("payment-{i}.log")).display()
                );
            }
        }
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PENDING_PAYMENT'").fetch_one(&pool).await?;
        let paid: i64 = sqlx::query_scalar("SELECT count(*) FROM payments").fetch_one(&payments).await?;
        if paid >= accepted && drained.is_none() {
            drained = Some(started.elapsed());
        }
        let stats: Stats = http.get(format!("{admin}/admin/stats")).send().await?.json().await?;
        let mut windows = 0.0;
        let mut open = 0;
        for i in 0..args.instances {
            if let Ok(text) = scrape(&http, args.metrics_port + i as u16).await {
                windows += metric_sum(&text, "orderflow_provider_window", &[]);
                open += (metric_sum(&text, "orderflow_provider_breaker_state", &[]) > 0.0) as u32;
            }
        }
        println!(
            "  t={:>5.0}s  payments {paid:>6}/{accepted}  settled {:>6}  pending {pending:>6}  provider {:>4.0} req/s (429s {})  window {windows:.0}  breakers not closed {open}",
            started.elapsed().as_secs_f64(),
            accepted - pending,
            // Per second since the last line (a line takes a little over a second).
            (stats.requests - last_requests) as f64 / last_at.elapsed().as_secs_f64(),
            stats.rate_limited,
        );
        (last_requests, last_at) = (stats.requests, Instant::now());
        if pending == 0 || started.elapsed() > Duration::from_secs(args.timeout_secs) {
            break pending;
        }
    };
    let settled = started.elapsed();
    let end_second = chrono::Utc::now().timestamp();

    let mut report = DrillReport {
        orders: accepted as u64,
        instances: args.instances,
        limit: args.limit,
        drain_secs: drained.unwrap_or(settled).as_secs_f64(),
        settled_secs: settled.as_secs_f64(),
        pending: pending as u64,
        ..Default::default()
    };
    for i in 0..args.instances {
        report.add_instance_metrics(&scrape(&http, args.metrics_port + i as u16).await?);
    }
    drop(instances);
    let stats: Stats = http.get(format!("{admin}/admin/stats")).send().await?.json().await?;
    report.provider_view(&stats, start_second, end_second);
    let ledger: Vec<LedgerEntry> = http.get(format!("{admin}/ledger")).send().await?.json().await?;
    report.duplicate_charges = duplicate_charges(&ledger);
    println!("{report}");
    anyhow::ensure!(report.duplicate_charges == 0, "an order was charged twice");
    anyhow::ensure!(report.pending == 0, "orders still pending after {settled:?}");
    anyhow::ensure!(report.rate_limited == 0, "the provider's limit was exceeded");
    Ok(())
}

/// Posts the orders at `intake_rate`, at most `intake_concurrency` at a time, each retried
/// until accepted.
async fn fill_backlog(args: &Args, http: &reqwest::Client) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut done = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.intake_rate.max(1.0)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let paced = futures::stream::unfold((0, tick), |(i, mut tick)| async move {
        if i >= args.orders {
            return None;
        }
        tick.tick().await;
        Some((i, (i + 1, tick)))
    });
    let posts = paced
        .map(|_| async {
            let body = orderflow_tools::sample_order(&mut rand::rng(), 0.02);
            let key = uuid::Uuid::new_v4().to_string();
            for attempt in 0..20 {
                let sent =
                    http.post(format!("{}/orders", args.api_url)).header("Idempotency-Key", &key).json(&body).send();
                match sent.await.map(|r| r.status().as_u16()) {
                    Ok(202 | 200) => return Ok(()),
                    Ok(400 | 422) => anyhow::bail!("the API refused a sample order"),
                    _ => tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await,
                }
            }
            anyhow::bail!("the API did not accept an order after 20 tries")
        })
        .buffer_unordered(args.intake_concurrency);
    tokio::pin!(posts);
    let mut last = Instant::now();
    while let Some(result) = posts.next().await {
        result?;
        done += 1;
        if last.elapsed() >= Duration::from_secs(2) || done == args.orders {
            last = Instant::now();
            println!(
                "  accepted {done:>6}/{}  ({:.0} orders/s)",
                args.orders,
                done as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Waits until the relay has published every accepted order to `orders`: the backlog is in
/// Kafka, as after a real outage.
async fn wait_published(pool: &PgPool) -> anyhow::Result<()> {
    loop {
        let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(pool).await?;
        if unpublished == 0 {
            return Ok(());
        }
        println!("  {unpublished} events still in the outbox");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn scrape(http: &reqwest::Client, port: u16) -> anyhow::Result<String> {
    Ok(http.get(format!("http://127.0.0.1:{port}/metrics")).send().await?.error_for_status()?.text().await?)
}
