//! order-api under a schema-driven fuzzer: schemathesis reads `/openapi.json` and sends what the
//! document allows and what it does not, with a valid token (so the fuzzing reaches past the
//! authentication), following the document's link from an accepted order to reading it, and
//! checks every answer: no 5xx, status codes, content types, headers and bodies as documented,
//! input outside the document refused.
//!
//! One check is left out, `positive_data_acceptance` (every schema-valid request accepted): the
//! order contract has rules across fields that JSON Schema cannot state — the order's total
//! (quantity × price, summed) within 1..10^12, `timeout` only with `wait_for` or `newer_than` —
//! so a schema-valid order of one free item is rightly a 422, which the document says.

use std::process::Command;

use orderflow_order_api::ApiSettings;
use orderflow_tests::{
    intake::{TestApi, TestIssuer},
    python,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    // A rate limit the fuzzer does not reach: it is not what is under test here.
    let settings = ApiSettings { client_rate: 10_000.0, client_burst: 10_000.0, ..Default::default() };
    let api = TestApi::spawn_with(settings).await;
    let token = api.issuer.token(&TestIssuer::grant("fuzzer", "orders:write orders:read"));
    let schemathesis = python().with_file_name("schemathesis");
    let output = Command::new(&schemathesis)
        .current_dir(std::env::temp_dir()) // its cache (.schemathesis/) stays out of the checkout
        .args([
            "run",
            &format!("{}/openapi.json", api.url),
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", "60"])
        .args(["--seed", "20261201", "--workers", "2", "--no-color"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", schemathesis.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Stateful"), "the stateful phase ran (POST then GET by the link): {stdout}");
    assert!(!stdout.contains("Missing test data"), "reads reached real orders: {stdout}");
}
