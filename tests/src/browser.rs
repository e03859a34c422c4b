//! Pages in a real browser: a scenario of `tests/browser/` (Node, playwright-core) driving
//! Debian's headless chromium, both installed by `scripts/test.sh` (`ensure_browser_tools`,
//! which names them in `ORDERFLOW_NODE_MODULES` and `ORDERFLOW_CHROMIUM`). The test sets the
//! scene (services, records) and hands the scenario its settings as a JSON file; the scenario
//! fails on any failed check and on any console error or page error.

use std::{path::PathBuf, process::Command};

/// Runs `tests/browser/<scenario>` with `settings` (plus `screenshots`: `ORDERFLOW_SCREENSHOTS`
/// when set, e.g. `docs/screenshots` to refresh the README's); panics with its output unless it
/// passes.
pub async fn run(scenario: &str, mut settings: serde_json::Value) {
    for (var, what) in [("ORDERFLOW_NODE_MODULES", "playwright-core"), ("ORDERFLOW_CHROMIUM", "chromium")] {
        assert!(
            std::env::var_os(var).is_some(),
            "{var} is not set: run the suite with ./scripts/test.sh, which installs {what}"
        );
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser");
    if let Some(shots) = std::env::var_os("ORDERFLOW_SCREENSHOTS") {
        settings["screenshots"] = serde_json::Value::String(PathBuf::from(shots).to_string_lossy().into_owned());
    }
    let file = std::env::temp_dir().join(format!("orderflow-browser-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, settings.to_string()).unwrap();
    let script = dir.join(scenario);
    let output = tokio::task::spawn_blocking(move || {
        let output = Command::new("node").arg(&script).arg(&file).output();
        let _ = std::fs::remove_file(&file);
        output
    })
    .await
    .unwrap()
    .expect("node (scripts/test.sh installs it)");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{scenario} failed ({}):\n{stdout}\n{stderr}", output.status);
}
