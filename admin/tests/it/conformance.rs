//! The admin API against its own OpenAPI document, by schemathesis: a live
//! admin API (real broker, real HTTP) is fuzzed from the `/openapi.json` it
//! serves, in every phase and with every check, for a bounded number of
//! examples. Schema-valid requests must be accepted, schema-violating ones
//! refused, and every answer must be one the document describes.
//!
//! Needs the PyPI package in `admin/tests/requirements.txt`
//! (`scripts/test.sh` installs it); settings in `admin/tests/schemathesis.toml`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use sockeye_testkit::TestBroker;
use sockeye_testkit::http::API_KEY;

/// Examples per operation and phase: enough to find what it found before
/// (see `openapi.rs`), small enough for CI (about ten seconds here).
const MAX_EXAMPLES: &str = "25";

/// A hang detector for the whole run, not a speed requirement.
const RUN_LIMIT: Duration = Duration::from_secs(600);

#[tokio::test]
async fn schemathesis_finds_no_disagreement_between_the_document_and_the_api() {
    let server = TestBroker::start_admin().await;
    // Something to find: a stored topic with history, and a connection.
    server
        .publish_over_http("conformance.topic", json!({"n": 1}))
        .await;
    let _client = server
        .client_with_user_agent("conformance", "test-agent")
        .await;

    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    // Its caches (.hypothesis, .schemathesis) go to a directory of its own.
    let scratch = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new("python3")
        .args([
            "-c",
            "from schemathesis.cli import schemathesis; schemathesis()",
            "--no-color",
            "--config-file",
        ])
        .arg(&config)
        .args(["run", &server.admin_url("/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {API_KEY}")])
        .args([
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            "1",
            "--workers",
            "1",
        ])
        .current_dir(scratch.path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("schemathesis finishes within the limit")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named"),
        "schemathesis is not installed: pip install -r admin/tests/requirements.txt\n{stderr}"
    );
    assert!(
        output.status.success(),
        "schemathesis found disagreements:\n{stdout}\n{stderr}"
    );
    // It really ran every phase against the live API.
    for phase in ["Examples", "Coverage", "Fuzzing", "Stateful"] {
        assert!(
            stdout.contains(&format!("✅ {phase}")),
            "{phase}:\n{stdout}"
        );
    }
    // ...and tested every operation it loaded from the document (it counts
    // `/docs` and `/docs/` as one).
    let selected = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("Selected: "))
        .unwrap_or_else(|| panic!("no operation count:\n{stdout}"));
    let (tested, total) = selected.split_once('/').unwrap();
    assert_eq!(tested, total, "{stdout}");
    assert!(tested.parse::<usize>().unwrap() >= 15, "{stdout}");
    assert!(stdout.contains(&format!("Tested: {tested}")), "{stdout}");
}
