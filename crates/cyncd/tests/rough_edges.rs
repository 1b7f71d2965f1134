//! What a new user runs into in the first hour, each checked as they would meet it: a
//! configuration error said once, the start-up line naming the page, the certificate announced
//! once, `decode | head` ending quietly, `sim` against a closed port failing with why, `sim`
//! interrupted still printing its summary, and the metrics documented exactly: every family the
//! README or `docs/` names is in `/metrics` from the start, and every family there is named in
//! `docs/metrics.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

fn cyncd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cyncd"))
}

fn signal(pid: u32, name: &str) {
    assert!(
        Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn a_configuration_error_is_said_once() {
    let dir = temp_dir("bad-config");
    let file = dir.join("cyncd.toml");
    std::fs::write(&file, "lisen = \"0.0.0.0:23779\"\n").unwrap();
    let out = cyncd()
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.matches("unknown field `lisen`").count(), 1, "{err}");
    assert!(err.contains(file.to_str().unwrap()), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_first_start_names_the_page_and_announces_the_certificate_once() {
    let dir = temp_dir("first-start");
    let mut child = cyncd()
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(&dir)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Where devices connect, then where the page is.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (mut first, mut second) = (String::new(), String::new());
    stdout.read_line(&mut first).unwrap();
    stdout.read_line(&mut second).unwrap();
    assert!(first.contains("devices on 127.0.0.1:"), "{first}");
    assert!(second.contains("web page http://127.0.0.1:"), "{second}");
    signal(child.id(), "TERM");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(err.matches("self-signed").count(), 1, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn decode_into_a_closed_pipe_ends_quietly_with_success() {
    let capture = std::fs::read_dir(captures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut child = cyncd()
        .arg("decode")
        .arg(&capture)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -1`: one line read, then the reader goes away.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.starts_with('{'), "{first}");
    drop(stdout);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}: {err}");
    assert!(!err.contains("Broken pipe"), "{err}");
}

#[test]
fn sim_against_a_closed_port_fails_and_says_why() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = cyncd()
        .args(["sim", "--server", &format!("127.0.0.1:{port}")])
        .args([
            "--bridges",
            "1",
            "--duration",
            "1",
            "--plain",
            "--seed",
            "1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("no bridge could connect to 127.0.0.1:{port}"))
            && err.contains("is cyncd serve listening there"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_interrupted_prints_its_summary() {
    let server = start(config("sim-interrupted")).await;
    let child = cyncd()
        .args(["sim", "--server", &server.devices.to_string()])
        .args([
            "--bridges",
            "1",
            "--devices-per-bridge",
            "2",
            "--duration",
            "600",
        ])
        .args(["--id-base", "67000000", "--seed", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    until(&server, || !server.ctx.registry.connections().is_empty()).await;
    // Ctrl-C in a terminal.
    signal(child.id(), "INT");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = &text[text.find("\n{").unwrap()..];
    let summary: serde_json::Value = serde_json::from_str(summary).unwrap();
    assert_eq!(summary["seed"], 3);
    assert!(summary["connects"].as_u64().unwrap() >= 1, "{summary}");
    server.shutdown().await;
}

/// The repository's root.
fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The README and every `docs/*.md`, as one text.
fn all_docs() -> String {
    let mut text = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut pages: Vec<_> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    for page in pages {
        text.push_str(&std::fs::read_to_string(page).unwrap());
    }
    text
}

/// The metric families a text names: backticked names with cyncd's prefixes.
fn documented_families(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|s| s.split('{').next().unwrap().to_string())
        .filter(|s| {
            (s.starts_with("tcp_comm_") || s.starts_with("cync_") || s.starts_with("cyncd_"))
                && s.len() > "cyncd_".len()
                && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The family a sample line belongs to: its name without a histogram's suffixes.
fn family_of(sample: &str) -> &str {
    let name = sample.split(['{', ' ']).next().unwrap_or_default();
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

#[tokio::test]
async fn every_documented_metric_family_is_there_from_the_start() {
    let server = start(config("metrics-from-start")).await;
    let (status, text) = get(&server, "/metrics").await;
    assert_eq!(status, 200);
    let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let families = documented_families(&all_docs());
    assert!(families.len() > 30, "{families:?}");
    let missing: Vec<&String> = families
        .iter()
        .filter(|f| !samples.iter().any(|s| family_of(s) == f.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "documented but not in /metrics at start: {missing:?}"
    );
    // And the other way: the metrics reference names every family served.
    let reference =
        documented_families(&std::fs::read_to_string(root().join("docs/metrics.md")).unwrap());
    let mut undocumented: Vec<&str> = samples
        .iter()
        .map(|s| family_of(s))
        .filter(|f| !reference.iter().any(|r| r == f))
        .collect();
    undocumented.sort_unstable();
    undocumented.dedup();
    assert!(
        undocumented.is_empty(),
        "in /metrics but not in docs/metrics.md: {undocumented:?}"
    );
    server.shutdown().await;
}
