//! The Home Assistant add-on (`addon/`): the real binary run on the sample options files the
//! Supervisor would write, each checked through the effective configuration it logs; the
//! broker found through a local stand-in for the Supervisor's documented `/services/mqtt`
//! answer; unknown options refused by name; `config.yaml`'s schema and the options cyncd reads
//! naming the same keys; and the page behind Home Assistant's ingress: requests from the trusted
//! gateway address with `X-Ingress-Path` need no token, every other request still does.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn addon_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../addon")
}

/// Copies the sample options (and the TOML file they may name) into a fresh directory, as
/// the Supervisor's `/data`.
fn data_dir(sample: &str) -> PathBuf {
    let dir = common::temp_dir(&format!("addon-{sample}"));
    std::fs::copy(
        addon_dir().join("tests").join(sample),
        dir.join("options.json"),
    )
    .unwrap();
    std::fs::copy(addon_dir().join("tests/cyncd.toml"), dir.join("cyncd.toml")).unwrap();
    dir
}

/// Runs `cyncd serve --options-json DIR/options.json` on loopback until it logs its effective
/// configuration; returns that configuration and every log line before it. Stops the server.
fn effective(dir: &Path, env: &[(&str, &str)]) -> (serde_json::Value, Vec<serde_json::Value>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cyncd"));
    cmd.args(["serve", "--options-json"])
        .arg(dir.join("options.json"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env_remove("SUPERVISOR_TOKEN")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = Vec::new();
    let mut config = None;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            panic!("not a JSON log line: {line}");
        };
        if v["message"] == "effective configuration" {
            config = Some(serde_json::from_str(v["config"].as_str().unwrap()).unwrap());
            break;
        }
        lines.push(v);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    (config.expect("no effective configuration logged"), lines)
}

fn noted(lines: &[serde_json::Value], text: &str) -> bool {
    lines
        .iter()
        .any(|l| l["message"].as_str().is_some_and(|m| m.contains(text)))
}

#[test]
fn the_default_options_run_with_state_in_data_and_no_broker_outside_the_supervisor() {
    let dir = data_dir("options-default.json");
    let (c, lines) = effective(&dir, &[]);
    assert_eq!(c["state_dir"], dir.to_str().unwrap());
    assert_eq!(c["log_level"], "info");
    assert_eq!(c["discover_mesh"], true);
    assert_eq!(c["mqtt"]["url"], serde_json::Value::Null);
    assert!(
        dir.join("cert.pem").exists(),
        "the certificate lives in /data"
    );
    assert!(noted(&lines, "SUPERVISOR_TOKEN is not set"), "{lines:?}");
    // Home Assistant's ingress gateway, and nothing else, is trusted.
    assert_eq!(
        c["http_trusted_proxies"],
        serde_json::json!(["172.30.32.2"])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_option_maps_onto_the_configuration() {
    let dir = data_dir("options-full.json");
    let (c, lines) = effective(&dir, &[]);
    assert_eq!(c["log_level"], "debug");
    assert_eq!(c["log_format"], "json");
    assert_eq!(c["utc_offset"], "-06:00");
    assert_eq!(c["discover_mesh"], false);
    let mqtt = &c["mqtt"];
    assert_eq!(mqtt["url"], "mqtt://127.0.0.1:1883");
    assert_eq!(mqtt["username"], "cyncd");
    assert_eq!(mqtt["password"], "<redacted>");
    assert_eq!(mqtt["base_topic"], "home/cync");
    assert_eq!(mqtt["discovery_prefix"], "ha");
    // config_file: the homes come from the TOML file next to the options.
    assert_eq!(c["homes"][0]["name"], "cabin");
    assert_eq!(c["homes"][0]["devices"][0]["name"], "Porch light");
    assert!(!format!("{lines:?}{c}").contains("hunter2"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_broker_url_the_supervisor_names_the_broker() {
    // A stand-in for the Supervisor: one answer of the documented shape.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let supervisor = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let body = r#"{"result": "ok", "data": {"addon": "core_mosquitto", "host": "127.0.0.1", "port": 1883, "ssl": false, "protocol": "3.1.1", "username": "addons", "password": "from-supervisor"}}"#;
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        String::from_utf8(head).unwrap()
    });
    let dir = data_dir("options-default.json");
    let url = format!("http://127.0.0.1:{port}");
    let (c, lines) = effective(
        &dir,
        &[
            ("SUPERVISOR_TOKEN", "token-123"),
            ("CYNCD_SUPERVISOR_URL", &url),
        ],
    );
    let head = supervisor.join().unwrap();
    assert!(
        head.starts_with("GET /services/mqtt HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\nAuthorization: Bearer token-123\r\n"),
        "{head}"
    );
    assert_eq!(c["mqtt"]["url"], "mqtt://127.0.0.1:1883");
    assert_eq!(c["mqtt"]["username"], "addons");
    assert_eq!(c["mqtt"]["password"], "<redacted>");
    assert!(
        noted(&lines, "from the Supervisor's MQTT service"),
        "{lines:?}"
    );
    assert!(!format!("{lines:?}{c}").contains("from-supervisor"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unknown_option_is_refused_by_name_once() {
    let dir = data_dir("options-unknown.json");
    let out = Command::new(env!("CARGO_BIN_EXE_cyncd"))
        .args(["serve", "--options-json"])
        .arg(dir.join("options.json"))
        .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.matches("unknown field `mqtt_host`").count(), 1, "{err}");
    assert!(
        err.contains("mqtt_url"),
        "the known options are listed: {err}"
    );
    assert!(!dir.join("cert.pem").exists(), "nothing started");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The keys of `config.yaml`'s `schema:` block.
fn schema_keys() -> Vec<String> {
    let text = std::fs::read_to_string(addon_dir().join("config.yaml")).unwrap();
    text.lines()
        .skip_while(|l| *l != "schema:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.trim().split_once(':').map(|(k, _)| k.to_string()))
        .collect()
}

#[test]
fn the_schema_and_the_options_name_the_same_keys() {
    let schema = schema_keys();
    assert!(schema.len() >= 8, "{schema:?}");
    // serde names every field it knows when it meets one it does not.
    let err = serde_json::from_str::<cyncd::config::options::Options>(r#"{"-": 1}"#)
        .unwrap_err()
        .to_string();
    let mut known: Vec<String> = err
        .split('`')
        .skip(3)
        .step_by(2)
        .map(str::to_string)
        .collect();
    known.sort();
    let mut sorted = schema.clone();
    sorted.sort();
    assert_eq!(sorted, known, "{err}");
    // The defaults config.yaml gives parse.
    let text = std::fs::read_to_string(addon_dir().join("config.yaml")).unwrap();
    assert!(text.contains("ingress: true") && text.contains("ingress_port: 8099"));
    assert!(text.contains("23779/tcp: 23779"));
    assert_eq!(cyncd::config::options::ADDON_HTTP, "0.0.0.0:8099");
}

/// The add-on's binary serving on loopback; killed on drop.
struct Served {
    child: std::process::Child,
    http: std::net::SocketAddr,
    dir: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `cyncd serve --options-json` with `args` on top until it logs where it serves HTTP.
fn serve_addon(sample: &str, args: &[&str]) -> (Served, serde_json::Value) {
    let dir = data_dir(sample);
    let mut child = Command::new(env!("CARGO_BIN_EXE_cyncd"))
        .args(["serve", "--options-json"])
        .arg(dir.join("options.json"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .args(args)
        .env_remove("SUPERVISOR_TOKEN")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut config = None;
    let mut http = None;
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["message"] == "effective configuration" {
            config = Some(serde_json::from_str(v["config"].as_str().unwrap()).unwrap());
        }
        if v["message"] == "serving the web page and the HTTP API" {
            http = Some(v["addr"].as_str().unwrap().parse().unwrap());
            break;
        }
    }
    // Keep reading, so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let served = Served {
        child,
        http: http.expect("the server never said where it serves HTTP"),
        dir,
    };
    (served, config.expect("no effective configuration logged"))
}

/// One HTTP/1.1 request to `to` from the local address `from`; the status and the body.
async fn request_from(
    from: std::net::IpAddr,
    to: std::net::SocketAddr,
    head: &str,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::new(from, 0))
        .unwrap_or_else(|e| panic!("binding {from} (a loopback alias on Linux): {e}"));
    let mut stream = socket.connect(to).await.unwrap();
    let request = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("no answer in 10 s")
    .unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// Home Assistant's ingress: the Supervisor's gateway forwards the browser's request with the
/// browser's `Host` (Home Assistant's name), `X-Ingress-Path` and `X-Forwarded-Host`, after Home
/// Assistant signed the person in. The gateway's address, 172.30.32.2, cannot be bound here:
/// the loopback alias 127.0.0.2 stands in for it (`--http-trusted-proxy`, which adds to the
/// add-on's list), and 127.0.0.3 for any other machine on the network.
#[tokio::test]
async fn behind_ingress_the_gateway_needs_no_token_and_nobody_else_gets_in_without_it() {
    let (served, config) = serve_addon(
        "options-default.json",
        &["--http-trusted-proxy", "127.0.0.2"],
    );
    assert_eq!(
        config["http_trusted_proxies"],
        serde_json::json!(["172.30.32.2", "127.0.0.2"])
    );
    let token = std::fs::read_to_string(served.dir.join("api-token")).unwrap();
    let token = token.trim();
    let gateway: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let stranger: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let http = served.http;
    let ingress = "X-Ingress-Path: /api/hassio_ingress/Zm9vYmFy\r\nX-Hass-Source: core.ingress\r\nX-Forwarded-For: 192.168.1.20, 172.30.32.1\r\nX-Forwarded-Host: homeassistant.local:8123\r\nX-Forwarded-Proto: http";
    let ha_host = "Host: homeassistant.local:8123";
    let get = |from, path: &str, headers: &str| {
        let head = format!("GET {path} HTTP/1.1\r\n{headers}");
        async move { request_from(from, http, &head, "").await }
    };

    // Through the gateway: the page's calls work without the token, under Home Assistant's
    // host name.
    let (status, body) = get(gateway, "/api/session", &format!("{ha_host}\r\n{ingress}")).await;
    assert_eq!(status, 200, "{body}");
    let session: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(session["auth"], "proxy", "{body}");
    let (status, body) = get(gateway, "/api/devices", &format!("{ha_host}\r\n{ingress}")).await;
    assert_eq!((status, body.as_str()), (200, "[]"));
    // A write from the page, same-origin as the browser sees it.
    let write = format!(
        "PUT /api/canary HTTP/1.1\r\n{ha_host}\r\n{ingress}\r\nOrigin: http://homeassistant.local:8123\r\nSec-Fetch-Site: same-origin\r\nContent-Type: application/json"
    );
    let (status, body) = request_from(gateway, http, &write, "{}").await;
    assert_eq!(status, 200, "{body}");
    // ... but not from another site, even through the gateway.
    let cross = write.replace("Sec-Fetch-Site: same-origin", "Sec-Fetch-Site: cross-site");
    let (status, body) = request_from(gateway, http, &cross, "{}").await;
    assert_eq!(status, 403, "{body}");

    // The gateway's address without the ingress header is just another client.
    let (status, _) = get(gateway, "/api/devices", &format!("Host: {http}")).await;
    assert_eq!(status, 401);
    let (status, _) = get(gateway, "/api/devices", ha_host).await;
    assert_eq!(status, 403, "the host check applies");

    // Anyone else sending the same headers: the host check, then the token, as always.
    let (status, _) = get(stranger, "/api/devices", &format!("{ha_host}\r\n{ingress}")).await;
    assert_eq!(status, 403);
    let (status, body) = get(
        stranger,
        "/api/devices",
        &format!("Host: {http}\r\n{ingress}"),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = request_from(
        stranger,
        http,
        &write
            .replace(ha_host, &format!("Host: {http}"))
            .replace("homeassistant.local:8123", &http.to_string()),
        "{}",
    )
    .await;
    assert_eq!(status, 401, "{body}");
    // With the token, as every API client.
    let (status, body) = get(
        stranger,
        "/api/devices",
        &format!("Host: {http}\r\nAuthorization: Bearer {token}"),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "[]"));
    drop(served);
}

/// Outside the add-on nothing is trusted: the same ingress request from the same address needs
/// the token.
#[tokio::test]
async fn without_the_option_the_ingress_header_opens_nothing() {
    let cfg = common::config("no-proxy");
    let dir = cfg.state_dir.clone();
    let server = common::start(cfg).await;
    assert!(server.ctx.config.http_trusted_proxies.is_empty());
    let (status, _) = request_from(
        "127.0.0.2".parse().unwrap(),
        server.http,
        &format!(
            "GET /api/devices HTTP/1.1\r\nHost: {}\r\nX-Ingress-Path: /api/hassio_ingress/x",
            server.http
        ),
        "",
    )
    .await;
    assert_eq!(status, 401);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
