//! The pipeline on a replicated cluster of the test's own (three KRaft nodes, replication 3,
//! `min.insync.replicas=2`) while a node fails, Jepsen-style: a checkout client places orders at
//! a steady pace, every operation recorded ok / failed / unknown; at the end every acknowledged
//! order must be PAID with its events on `orders` once and in order, charged once, reserved
//! once, handled by every group (`orderflow_tests::history::check`). The relay and every
//! consumer group run throughout: none is restarted. Each test prints its figures (README
//! "Failover on a replicated cluster").

use std::time::Duration;

use chrono::Utc;
use orderflow_tests::{
    broker::TestBroker,
    history::{Intake, check, wait_for_ops},
    stack::TestStack,
};

/// Orders per second the checkout client places.
const PACE: f64 = 10.0;
const SETTLE: Duration = Duration::from_secs(240);

async fn stack() -> TestStack {
    TestStack::spawn_all_on(TestBroker::spawn_cluster()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_of_a_busy_partition_killed_under_intake_loses_no_acknowledged_order() {
    let mut stack = stack().await;
    let intake = Intake::start(&stack, PACE);
    wait_for_ops(&intake, 80).await;
    let (leader, isr) = stack.broker.leader("orders", 0);
    assert_eq!(isr.len(), 3, "every replica in sync before the fault: {isr:?}");
    let fault = Utc::now();
    stack.broker.kill_node(leader);
    // Intake goes on for as long again with one node gone; nobody restarts anything.
    wait_for_ops(&intake, 240).await;
    let (new_leader, isr) = stack.broker.leader("orders", 0);
    assert_ne!(new_leader, leader, "another replica leads the partition");
    assert!(!isr.contains(&leader), "the dead node left the ISR: {isr:?}");
    let ops = intake.stop().await;
    let report = check(&stack, &ops, fault, SETTLE).await;
    report.print(&format!("leader (node {leader}) of orders/0 SIGKILLed"));
    assert!(report.accepted >= 200, "the client kept placing orders: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_killed_and_restarted_catches_up_and_loses_nothing() {
    let mut stack = stack().await;
    let intake = Intake::start(&stack, PACE);
    wait_for_ops(&intake, 80).await;
    let (leader, _) = stack.broker.leader("orders", 0);
    let follower = stack.broker.node_ids().into_iter().find(|n| *n != leader).unwrap();
    let fault = Utc::now();
    stack.broker.kill_node(follower);
    wait_for_ops(&intake, 160).await;
    let restart = (Utc::now() - fault).as_seconds_f64();
    stack.broker.start_node(follower);
    let restarted = (Utc::now() - fault).as_seconds_f64();
    wait_for_ops(&intake, 240).await;
    let ops = intake.stop().await;
    let report = check(&stack, &ops, fault, SETTLE).await;
    // Back in every partition's ISR once it has caught up.
    orderflow_tests::intake::eventually(Duration::from_secs(120), "the follower back in sync", || async {
        stack.broker.leader("orders", 0).1.contains(&follower)
    })
    .await;
    report.print(&format!(
        "follower (node {follower}) of orders/0 SIGKILLed, started again {restart:.1} s later (up at {restarted:.1} s)"
    ));
    assert!(report.accepted >= 200, "the client kept placing orders: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_down_below_min_isr_the_outbox_keeps_every_event_and_drains_when_one_returns() {
    let mut stack = stack().await;
    let intake = Intake::start(&stack, PACE);
    wait_for_ops(&intake, 60).await;
    let (leader, _) = stack.broker.leader("orders", 0);
    let down: Vec<i32> = stack.broker.node_ids().into_iter().filter(|n| *n != leader).collect();
    let fault = Utc::now();
    for node in &down {
        stack.broker.kill_node(*node);
    }
    // One node left: below min.insync.replicas (and without a quorum). Intake only needs
    // Postgres: orders are still accepted, and their events wait in the outbox.
    let accepted_before = intake.count();
    wait_for_ops(&intake, accepted_before + 150).await;
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&stack.api.pool).await.unwrap();
    assert!(waiting >= 100, "the relay keeps what the brokers did not acknowledge ({waiting} rows)");
    stack.broker.start_node(down[0]);
    wait_for_ops(&intake, accepted_before + 250).await;
    let ops = intake.stop().await;
    let report = check(&stack, &ops, fault, SETTLE).await;
    report.print(&format!("nodes {down:?} SIGKILLed (one left, below min ISR), node {} back", down[0]));
    assert!(report.accepted >= 300, "intake kept accepting while the brokers were down: {report:?}");
    assert_eq!(report.failed, 0, "no order refused for the brokers' outage: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_active_controller_killed_during_a_rebalance_loses_nothing() {
    let mut stack = stack().await;
    let intake = Intake::start(&stack, PACE);
    wait_for_ops(&intake, 80).await;
    // A second payment instance joins (the group rebalances) as the controller dies.
    let controller = stack.broker.active_controller();
    let provider = stack.provider_settings();
    let fault = Utc::now();
    stack.start_payment(provider).await;
    stack.broker.kill_node(controller);
    wait_for_ops(&intake, 240).await;
    let new_controller = stack.broker.active_controller();
    assert_ne!(new_controller, controller, "another node leads the quorum");
    let ops = intake.stop().await;
    let report = check(&stack, &ops, fault, SETTLE).await;
    report.print(&format!("active controller (node {controller}) SIGKILLed during a payment rebalance"));
    assert!(report.accepted >= 200, "the client kept placing orders: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_frozen_past_the_request_timeout_then_resumed_loses_nothing() {
    let mut stack = stack().await;
    let intake = Intake::start(&stack, PACE);
    wait_for_ops(&intake, 80).await;
    let (leader, _) = stack.broker.leader("orders", 0);
    let fault = Utc::now();
    // SIGSTOP: the node holds its connections open and answers nothing (a GC pause, a VM
    // stall), for longer than the clients' 30 s request timeout.
    stack.broker.freeze_node(leader, true);
    tokio::time::sleep(Duration::from_secs(40)).await;
    stack.broker.freeze_node(leader, false);
    let placed = intake.count();
    wait_for_ops(&intake, placed + 100).await;
    let ops = intake.stop().await;
    let report = check(&stack, &ops, fault, SETTLE).await;
    report.print(&format!("leader (node {leader}) of orders/0 SIGSTOPped 40 s, then resumed"));
    assert!(report.accepted >= 500, "the client kept placing orders: {report:?}");
}
