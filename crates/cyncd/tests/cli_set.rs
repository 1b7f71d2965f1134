//! `cyncd set` and `cyncd toggle` against a running server with a simulated home: the outcome
//! printed, the exit status, and the device-side truth.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;
use cync_sim::{Fleet, FleetConfig};
use std::time::Duration;

async fn cyncd(args: Vec<String>) -> std::process::Output {
    // The server runs on this test's runtime, so the client runs on a blocking thread.
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cyncd"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_and_toggle_print_the_outcome_and_exit_accordingly() {
    let server = start(config("cli-set")).await;
    let fleet = Fleet::start(FleetConfig {
        server: server.devices.to_string(),
        bridges: 1,
        devices_per_bridge: 4,
        homes: Some(1),
        seed: 8,
        heartbeat: Duration::from_secs(10),
        firmware_delay: Duration::from_millis(50),
        id_base: 0x6100_0000,
        ..FleetConfig::default()
    })
    .unwrap();
    until(&server, || server.ctx.registry.device_count() == 4).await;
    let api = format!("http://{}", server.http);
    let token_file = server.http_token.as_ref().unwrap().path.clone();
    let arg = |s: &str| {
        s.split_whitespace()
            .map(String::from)
            .chain(["--api".into(), api.clone()])
            .chain(["--token-file".into(), token_file.display().to_string()])
            .collect::<Vec<_>>()
    };

    // Without the token the server refuses, and nothing is sent; the message says what to do.
    let applied_before = fleet.device("home0", 3).unwrap().applied_commands.len();
    let empty_state = temp_dir("cli-set-no-token");
    let out = cyncd(vec![
        "set".into(),
        "default:3".into(),
        "on".into(),
        "--api".into(),
        api.clone(),
        "--state-dir".into(),
        empty_state.display().to_string(),
    ])
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HTTP 401") && err.contains("--token-file"),
        "{err}"
    );
    assert_eq!(
        fleet.device("home0", 3).unwrap().applied_commands.len(),
        applied_before
    );
    // The token from the server's state directory (the default place).
    let out = cyncd(vec![
        "set".into(),
        "default:3".into(),
        "on".into(),
        "--api".into(),
        api.clone(),
        "--state-dir".into(),
        server.ctx.config.state_dir.display().to_string(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The token from the environment.
    let token = server.http_token.as_ref().unwrap().token.clone();
    let (api_env, state_env) = (api.clone(), empty_state.display().to_string());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cyncd"))
            .args([
                "set",
                "default:3",
                "off",
                "--api",
                &api_env,
                "--state-dir",
                &state_env,
            ])
            .env("CYNCD_API_TOKEN", token)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!fleet.device("home0", 3).unwrap().on);

    // Device 3 is a tunable-white bulb.
    let out = cyncd(arg("set default:3 brightness 40")).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("applied: 1 attempt(s)"), "{text}");
    assert_eq!(fleet.device("home0", 3).unwrap().brightness, 40);
    // The resulting state follows the outcome, in the units the command took.
    let state = text.lines().nth(1).unwrap_or_default();
    assert!(
        state.starts_with("default:3 ") && state.contains(": on, 40 %"),
        "{text}"
    );

    // White in kelvin, as on the page and in Home Assistant: 2700 K is 14 on the 0-100 scale of
    // the 2000-7000 K range.
    let out = cyncd(arg("set default:3 color-temp 2700")).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(fleet.device("home0", 3).unwrap().color_temp, Some(14));
    assert!(text.contains("2700 K"), "{text}");

    // Out of range: refused before anything is sent, with the real range.
    let applied_before = fleet.device("home0", 3).unwrap().applied_commands.len();
    for (args, range) in [
        ("set 3 brightness 300", "0-100"),
        ("set 3 color-temp 50", "2000-7000"),
        ("set 3 fan-speed 101", "0-100"),
    ] {
        let out = cyncd(arg(args)).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args}");
        assert!(err.contains(range) && !err.contains("255"), "{args}: {err}");
    }
    assert_eq!(
        fleet.device("home0", 3).unwrap().applied_commands.len(),
        applied_before
    );

    let before = fleet.device("home0", 2).unwrap().on;
    let out = cyncd(arg("toggle 2")).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fleet.device("home0", 2).unwrap().on, !before);
    let text = String::from_utf8_lossy(&out.stdout);
    let shown = if before { ": off" } else { ": on" };
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("default:2 ") && l.contains(shown)),
        "{text}"
    );

    // Device 1 reported its type (a plug): cyncd refuses colours before sending anything.
    let applied_before = fleet.device("home0", 1).unwrap().applied_commands.len();
    let out = cyncd(arg("set default:1 rgb 255 0 0")).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HTTP 400") && err.contains("cannot do rgb"),
        "{err}"
    );
    assert_eq!(
        fleet.device("home0", 1).unwrap().applied_commands.len(),
        applied_before
    );

    // Device 2's type is unknown to cyncd (only a bridge's own record carries one), so the
    // command goes out and the dimmable bulb itself refuses it with a bare 0x7B.
    let out = cyncd(arg("set default:2 rgb 255 0 0")).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("rejected"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("/api/trace/"));

    let out = cyncd(arg("set default:77 on")).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 404"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cyncd(vec![
        "set".into(),
        "3".into(),
        "on".into(),
        "--api".into(),
        "http://127.0.0.1:1".into(),
    ])
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting to"));
    fleet.stop().await;
    server.shutdown().await;
}
