//! Postgres out of disk (docs/failure-catalog.md §3): the orders database lives in a
//! tablespace on a small tmpfs the test fills; order-api refuses new orders with 503 and
//! `Retry-After`, nothing is half-written (no order without its OrderPlaced, no event without
//! its order), and once space returns the same request with the same key is accepted, once.
//! Mounting needs root, which the machines this suite runs on have. The full disk belongs to a
//! Postgres server of the test's own: a full tablespace stops the whole server's checkpoints,
//! which must never reach the suite's shared server.

use std::{io::Write, path::PathBuf, process::Command, time::Duration};

use orderflow_order_api::ApiSettings;
use orderflow_tests::{
    TestDatabase,
    intake::{TestApi, sample_order},
    postgres::PrivatePostgres,
};
use serde_json::Value;

/// A tmpfs of `size` mounted for the test, unmounted when it ends.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let uid = Command::new("id").arg("-u").output().unwrap();
        assert_eq!(String::from_utf8_lossy(&uid.stdout).trim(), "0", "mounting a small tmpfs needs root");
        let dir = std::env::temp_dir().join(format!("orderflow-disk-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |program: &str, args: &[&str]| {
            let status = Command::new(program).args(args).status().unwrap();
            assert!(status.success(), "{program} {args:?}");
        };
        let path = dir.to_str().unwrap();
        run("mount", &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", path]);
        // The tablespace's directory belongs to the server's user.
        run("chown", &["postgres:postgres", path]);
        SmallDisk { dir }
    }

    /// Fills what is left with a ballast file; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("ballast");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.flush();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Counts on a connection opened before the disk filled: a new connection to a database whose
/// tablespace is full fails (Postgres writes its relation-cache file as a session starts).
async fn count(checker: &mut sqlx::PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(checker).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_postgres_out_of_disk_orders_get_503_nothing_is_half_written_and_intake_recovers() {
    let disk = SmallDisk::mount("24m");
    // Declared after the disk, so dropped (stopped) before it is unmounted.
    let server = PrivatePostgres::start();
    let tablespace = format!("ts_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&server.admin_url).await.unwrap();
    sqlx::query(&format!("CREATE TABLESPACE \"{tablespace}\" LOCATION '{}'", disk.dir.display()))
        .execute(&admin)
        .await
        .unwrap();
    let db = TestDatabase::create_on(&server.admin_url, &format!("TABLESPACE \"{tablespace}\"")).await;
    let api = TestApi::spawn_on(db, ApiSettings::default()).await;
    let mut accepted = 0;
    for i in 0..5 {
        assert_eq!(api.post_order(Some(&format!("before-{i}")), &sample_order("before")).await.status(), 202);
        accepted += 1;
    }
    let mut checker = api.pool.acquire().await.unwrap().detach();
    let ballast = disk.fill();

    // Orders until the server runs out of room for one (what fits in pages it already has
    // is still accepted).
    let mut refused = None;
    for i in 0..20_000 {
        let key = format!("full-{i}");
        let response = api.post_order(Some(&key), &sample_order(&key)).await;
        match response.status().as_u16() {
            202 => accepted += 1,
            503 => {
                let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                let problem: Value = response.json().await.unwrap();
                assert_eq!(retry_after.as_deref(), Some("1"));
                assert_eq!(problem["type"], "https://orderflow.dev/problems/unavailable", "{problem}");
                refused = Some(key);
                break;
            }
            other => panic!("order {i}: {other}: {}", response.text().await.unwrap()),
        }
    }
    let refused = refused.expect("the disk filled up");
    println!("{} more orders fitted in the pages Postgres already had; then 503", accepted - 5);
    // Nothing half-written: every accepted order has its event, the refused one has neither.
    assert_eq!(count(&mut checker, "SELECT count(*) FROM orders").await, accepted);
    assert_eq!(count(&mut checker, "SELECT count(*) FROM outbox").await, accepted);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE idempotency_key = $1")
        .bind(&refused)
        .fetch_one(&mut checker)
        .await
        .unwrap();
    assert_eq!(stored, 0);

    // Space returns: the client's retry with the same key is accepted, once.
    std::fs::remove_file(ballast).unwrap();
    let mut answer = 0;
    for _ in 0..50 {
        answer = api.post_order(Some(&refused), &sample_order(&refused)).await.status().as_u16();
        if answer == 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(answer, 202, "accepted once space returned");
    let again = api.post_order(Some(&refused), &sample_order(&refused)).await;
    assert_eq!(again.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
    assert_eq!(count(&mut checker, "SELECT count(*) FROM orders").await, accepted + 1);
    assert_eq!(count(&mut checker, "SELECT count(*) FROM outbox").await, accepted + 1);

    // The server goes with the test (stopped before the disk is unmounted).
    drop(checker);
    api.pool.close().await;
    admin.close().await;
}
