//! Logs for machines and for people: `--log-format json` gives one JSON object per
//! line, text logs carry no colour codes when stderr is not a terminal, and a
//! failed start says what, where and what to do on one line.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn failed_start(args: &[&str]) -> String {
    let out = Command::new(WSGATE)
        .args(args)
        .env("HOME", "/nonexistent")
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{args:?} must exit 1");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_failed_start_is_one_line_that_says_each_reason_once() {
    let err = failed_start(&["serve", "--config", "/nonexistent"]);
    assert_eq!(
        err,
        "wsgate: /nonexistent: cannot read route config: No such file or directory (os error 2)\n"
    );
    let err = failed_start(&["run", "--kubeconfig", "/nonexistent"]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--kubeconfig /nonexistent"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    let err = failed_start(&["run"]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("pass --kubeconfig PATH or set KUBECONFIG"),
        "{err}"
    );
}

/// Starts `wsgate serve` with stderr in a file (not a terminal), waits for
/// "wsgate serving", stops it and returns what it logged.
fn log_of(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, Route::new("r").backend("127.0.0.1:9").yaml()).unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(WSGATE)
        .arg("serve")
        .arg("--config")
        .arg(&routes)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .args(extra)
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("wsgate serving") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains("wsgate serving"),
        "wsgate did not start:\n{text}"
    );
    text
}

#[test]
fn text_logs_have_no_colour_codes_off_a_terminal() {
    let text = log_of(&[]);
    assert!(!text.contains('\x1b'), "escape codes in a file:\n{text}");
    assert!(text.contains(" INFO "), "{text}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let text = log_of(&["--log-format", "json"]);
    let mut serving = None;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        if v["message"] == "wsgate serving" {
            serving = Some(v);
        }
    }
    let v = serving.expect("the serving line");
    assert_eq!(v["level"], "INFO");
    assert!(
        v["listen"].as_str().unwrap().starts_with("127.0.0.1:"),
        "event fields are top-level keys: {v}"
    );
}
