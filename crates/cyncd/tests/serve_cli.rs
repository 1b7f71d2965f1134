//! `cyncd serve` as a user runs it: it starts with no configuration, generates its private key,
//! says where it listens, logs packets as JSON with correlation ids and the auth code redacted,
//! and exits 0 promptly on SIGTERM.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cyncd-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Starts `cyncd serve` on loopback ephemeral ports with state in `state` and `args`, and
/// waits for its ready line; returns the child (stderr as given) and that line.
fn serve(state: &std::path::Path, args: &[&str], stderr: Stdio) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cyncd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line)
}

/// The HTTP address in a ready line.
fn http_of(line: &str) -> String {
    line.split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .trim_start_matches("http://")
        .to_string()
}

/// Sends `signal` (`TERM`, `HUP`) to the child.
fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Reads from `stream` until `want` bytes arrived (the socket has a read timeout).
fn read_n(stream: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut buf = vec![0u8; want];
    stream.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn serve_starts_logs_and_stops_on_sigterm() {
    let state = temp_dir("serve");
    let (mut child, line) = serve(
        &state,
        &[
            "--plain",
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--utc-offset",
            "-06:00",
        ],
        Stdio::piped(),
    );
    // "cyncd: devices on 127.0.0.1:P (plain TCP), HTTP on http://127.0.0.1:Q (...)"
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[..3], ["cyncd:", "devices", "on"], "{line}");
    let devices = words[3].to_string();
    let http = http_of(&line);

    let mut dev = TcpStream::connect(&devices).unwrap();
    dev.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = vec![0x23, 0, 0, 0, 0x1a, 3, 0x32, 0x5d, 0x53, 0x17, 0, 0x10];
    hello.extend_from_slice(b"1e07d8cdf4f53c50");
    hello.extend_from_slice(&[0, 0, 0x3c]);
    dev.write_all(&hello).unwrap();
    assert_eq!(read_n(&mut dev, 7), [0x28, 0, 0, 0, 2, 0, 0]);
    dev.write_all(&[0xd3, 0, 0, 0, 0]).unwrap();
    assert_eq!(read_n(&mut dev, 5), [0xd8, 0, 0, 0, 0]);

    let mut api = TcpStream::connect(&http).unwrap();
    api.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    api.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("ok\n"),
        "{response}"
    );

    let t0 = std::time::SystemTime::now();
    signal(&child, "TERM");
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(t0.elapsed().unwrap() < Duration::from_secs(5));
    // The device side sees the connection closed.
    let mut rest = Vec::new();
    let _ = dev.read_to_end(&mut rest);

    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(
        !logs.contains("1e07d8cdf4f53c50") && !logs.contains("31653037643863646634663533633530"),
        "auth code leaked"
    );
    let events: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let hello_in = events
        .iter()
        .find(|e| e["message"] == "packet" && e["dir"] == "in" && e["name"] == "hello")
        .unwrap();
    assert_eq!(hello_in["level"], "DEBUG");
    assert_eq!(hello_in["corr_id"].as_str().unwrap().len(), 20);
    assert!(
        hello_in["hex"]
            .as_str()
            .unwrap()
            .contains("0010********************************00003c")
    );
    // The reply carries the same correlation id.
    let ack = events
        .iter()
        .find(|e| e["message"] == "packet" && e["dir"] == "out" && e["name"] == "hello_ack")
        .unwrap();
    assert_eq!(ack["corr_id"], hello_in["corr_id"]);
    let hb = events
        .iter()
        .find(|e| e["message"] == "packet" && e["name"] == "heartbeat")
        .unwrap();
    assert_eq!(hb["span"]["conn_id"], "325d5317");
    assert!(
        events
            .iter()
            .any(|e| e["message"] == "effective configuration")
    );
    assert!(
        events
            .iter()
            .any(|e| e["message"] == "hello" && e["level"] == "INFO")
    );
    assert!(events.iter().any(|e| e["message"] == "disconnected"));
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn serve_generates_a_private_key_once() {
    let state = temp_dir("key");
    for round in 0..2 {
        let (mut child, line) = serve(&state, &["--log-level", "warn"], Stdio::inherit());
        assert!(line.contains("(TLS)"), "{line}");
        let mode = std::fs::metadata(state.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "round {round}");
        let before = std::fs::read(state.join("key.pem")).unwrap();
        signal(&child, "TERM");
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read(state.join("key.pem")).unwrap(), before);
    }
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn serve_rejects_bad_configuration_clearly() {
    let dir = temp_dir("badconf");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cyncd.toml");
    std::fs::write(&file, "lisen = \"0.0.0.0:1\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cyncd"))
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lisen") && err.contains("cyncd.toml"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_cyncd"))
        .args(["serve", "--cert", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_runs_a_simulated_home_and_stops() {
    let out = Command::new(env!("CARGO_BIN_EXE_cyncd"))
        .args(["demo", "--http", "127.0.0.1:0", "--duration", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("12 devices") && text.contains("/api/devices") && text.contains("/metrics"),
        "{text}"
    );
    // The simulated bridges said hello to the in-process server.
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.matches("hello").count() >= 2, "{logs}");
}

/// A GET with the API token from `state`'s `api-token`; returns the whole answer.
fn http_get(addr: &str, state: &std::path::Path, path: &str) -> String {
    let token = std::fs::read_to_string(state.join("api-token")).unwrap();
    let mut api = TcpStream::connect(addr).unwrap();
    api.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token.trim()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut response = String::new();
    api.read_to_string(&mut response).unwrap();
    response
}

/// Polls `GET path` until its body contains `want`, failing after 10 s.
fn until_body(addr: &str, state: &std::path::Path, path: &str, want: &str) {
    let deadline = std::time::SystemTime::now() + Duration::from_secs(10);
    loop {
        let body = http_get(addr, state, path);
        if body.contains(want) {
            return;
        }
        assert!(
            std::time::SystemTime::now() < deadline,
            "{want:?} never in {body}"
        );
        std::thread::yield_now();
    }
}

#[test]
fn sighup_reloads_the_routing_without_a_restart() {
    let state = temp_dir("hup");
    std::fs::create_dir_all(&state).unwrap();
    let config = state.join("cyncd.toml");
    std::fs::write(&config, "[canary]\nmode = \"legacy\"\n").unwrap();
    let config_arg = config.to_str().unwrap();
    let (mut child, line) = serve(
        &state,
        &["--plain", "--log-level", "warn", "--config", config_arg],
        Stdio::null(),
    );
    let http = http_of(&line);
    assert!(http_get(&http, &state, "/api/canary").contains("\"mode\":\"legacy\""));
    std::fs::write(&config, "[canary]\nmode = \"canary\"\npercent = 25.0\n").unwrap();
    signal(&child, "HUP");
    until_body(
        &http,
        &state,
        "/api/canary",
        "\"mode\":\"canary\",\"percent\":25.0",
    );
    // A broken file is refused (logged) without stopping cyncd; the next good one applies.
    std::fs::write(&config, "[canary]\nmode = \"sideways\"\n").unwrap();
    signal(&child, "HUP");
    std::fs::write(&config, "[canary]\nmode = \"reliable\"\n").unwrap();
    signal(&child, "HUP");
    until_body(&http, &state, "/api/canary", "\"mode\":\"reliable\"");
    assert!(child.try_wait().unwrap().is_none(), "cyncd exited");
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_password_in_the_mqtt_url_is_never_printed() {
    let state = temp_dir("secret");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cyncd"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--plain",
        ])
        .args([
            "--log-level",
            "debug",
            "--mqtt",
            "mqtt://user:SECRET@127.0.0.1:1/",
        ])
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The broker refuses the connection: the failure is logged (with the broker) before we stop.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut logs = String::new();
    while !logs.contains("MQTT connection lost or refused") {
        let mut l = String::new();
        assert!(err.read_line(&mut l).unwrap() > 0, "{logs}");
        logs.push_str(&l);
    }
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    err.read_to_string(&mut logs).unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let all = format!("{out}{logs}");
    assert!(all.contains("effective configuration"), "{all}");
    assert!(all.contains("user:<redacted>@127.0.0.1:1"), "{all}");
    assert!(!all.contains("SECRET"), "{all}");
    // The ready lines say where the API token is, and do not print it.
    assert!(
        out.contains(&format!(
            "API token in {}",
            state.join("api-token").display()
        )),
        "{out}"
    );
    let token = std::fs::read_to_string(state.join("api-token")).unwrap();
    assert!(!all.contains(token.trim()), "the API token was printed");
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn the_api_token_is_generated_once_and_token_less_mode_needs_loopback() {
    let state = temp_dir("token");
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let (mut child, _) = serve(
            &state,
            &["--plain", "--log-level", "warn"],
            Stdio::inherit(),
        );
        let file = state.join("api-token");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        tokens.push(std::fs::read_to_string(&file).unwrap());
        signal(&child, "TERM");
        assert!(child.wait().unwrap().success());
    }
    assert_eq!(tokens[0], tokens[1]);
    assert_eq!(tokens[0].trim().len(), 64);
    let out = Command::new(env!("CARGO_BIN_EXE_cyncd"))
        .args(["serve", "--http", "0.0.0.0:0", "--http-no-auth"])
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http_no_auth needs a loopback"), "{err}");
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn sighup_applies_an_import_made_while_cyncd_runs() {
    let state = temp_dir("homes-hup");
    let (mut child, line) = serve(&state, &["--plain"], Stdio::piped());
    let http = http_of(&line);
    // The log, line by line, for what cyncd says about each SIGHUP.
    let (log_tx, log) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = log_tx.send(line);
        }
    });
    let expect_log = |needle: &str| loop {
        let line = log
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    };
    assert!(http_get(&http, &state, "/api/devices").ends_with("[]"));
    let yaml = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cync_mesh.yaml");
    let imported = Command::new(env!("CARGO_BIN_EXE_cyncd"))
        .args(["account", "import"])
        .arg(&yaml)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(imported.status.success());
    signal(&child, "HUP");
    expect_log("40 devices and 8 rooms");
    // The imported homes' devices are listed (offline until a bridge reports them).
    until_body(
        &http,
        &state,
        "/api/devices",
        "\"name\":\"Kitchen Pendant\"",
    );
    let body = http_get(&http, &state, "/api/devices");
    assert!(body.contains("\"room\":\"Great Room\""), "{body}");
    assert!(!body.contains("Old Lamp"), "hidden: {body}");
    // A broken homes file on SIGHUP keeps the homes in use.
    std::fs::write(state.join("homes.json"), "{not json").unwrap();
    signal(&child, "HUP");
    let said = expect_log("homes file not reloaded");
    assert!(said.contains("not a valid homes file"), "{said}");
    assert!(http_get(&http, &state, "/api/devices").contains("Kitchen Pendant"));
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    // And refuses the next start, saying what to do.
    let out = Command::new(env!("CARGO_BIN_EXE_cyncd"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--plain",
        ])
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a valid homes file") && err.contains("homes.json.previous"),
        "{err}"
    );
}

/// A PUT request with a JSON body and the server's token; returns the whole answer.
fn http_put(addr: &str, state: &std::path::Path, path: &str, body: &str) -> String {
    let token = std::fs::read_to_string(state.join("api-token")).unwrap();
    let mut api = TcpStream::connect(addr).unwrap();
    api.write_all(
        format!(
            "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            token.trim(),
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut response = String::new();
    api.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn runtime_routing_survives_a_restart_until_the_configuration_changes() {
    let state = temp_dir("routing");
    std::fs::create_dir_all(&state).unwrap();
    let config = state.join("cyncd.toml");
    std::fs::write(&config, "[canary]\nmode = \"canary\"\npercent = 50.0\n").unwrap();
    let config_arg = config.to_str().unwrap();
    let args = ["--plain", "--log-level", "warn", "--config", config_arg];
    let (mut child, line) = serve(&state, &args, Stdio::null());
    let http = http_of(&line);
    let answer = http_put(
        &http,
        &state,
        "/api/canary",
        r#"{"percent": 20, "kill": true}"#,
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    let mode = std::fs::metadata(state.join("routing.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Same configuration: the change made at run time is still in force.
    let (mut child, line) = serve(&state, &args, Stdio::null());
    let canary = http_get(&http_of(&line), &state, "/api/canary");
    assert!(
        canary.contains(r#""mode":"canary","percent":20.0,"kill":true"#),
        "{canary}"
    );
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());

    // The configuration's routing edited: it wins.
    std::fs::write(&config, "[canary]\nmode = \"canary\"\npercent = 30.0\n").unwrap();
    let (mut child, line) = serve(&state, &args, Stdio::null());
    let canary = http_get(&http_of(&line), &state, "/api/canary");
    assert!(
        canary.contains(r#""mode":"canary","percent":30.0,"kill":false"#),
        "{canary}"
    );
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&state);
}

/// A TLS connection as devices make it (any certificate, TLS 1.2, the RSA CBC suites).
fn tls(addr: &str) -> openssl::ssl::SslStream<TcpStream> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder.set_verify(SslVerifyMode::NONE);
    builder
        .set_max_proto_version(Some(SslVersion::TLS1_2))
        .unwrap();
    builder
        .set_cipher_list("AES256-SHA256:AES128-SHA256:AES256-SHA:AES128-SHA")
        .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    builder.build().connect("cm.gelighting.com", tcp).unwrap()
}

fn hello_of(id: u32) -> Vec<u8> {
    let mut hello = vec![0x23, 0, 0, 0, 0x1a, 3];
    hello.extend(id.to_be_bytes());
    hello.extend([0, 0x10]);
    hello.extend(format!("{:016x}", u64::from(id) * 7919).as_bytes());
    hello.extend([0, 0, 0x3c]);
    hello
}

#[test]
fn a_garbage_flood_writes_under_a_tenth_of_a_log_byte_per_byte_in() {
    let state = temp_dir("flood");
    // The defaults a user runs with: TLS, info level, human-readable lines (and no mesh
    // requests, so the connections' answers are only the ones this test reads).
    let (mut child, line) = serve(&state, &["--no-discover-mesh"], Stdio::piped());
    let devices = line.split_whitespace().nth(3).unwrap().to_string();
    let mut stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut all = Vec::new();
        stderr.read_to_end(&mut all).unwrap();
        all
    });
    // A 4 KiB packet with a reserved header byte set: undecodable, answered by nothing, and
    // (before) one warning line with its whole hex.
    let mut bad = vec![0x43, 0x01, 0x00, 0x0f, 0xfb];
    bad.resize(4096, 0xa5);
    let mut sent = 0usize;
    let mut send = |s: &mut openssl::ssl::SslStream<TcpStream>, bytes: &[u8]| {
        s.write_all(bytes).unwrap();
        sent += bytes.len();
    };
    // One connection: 4 MiB of them.
    let mut one = tls(&devices);
    send(&mut one, &hello_of(0x7100_0000));
    for _ in 0..1024 {
        send(&mut one, &bad);
    }
    // Many connections: 50 with 64 KiB each, then 100 with one packet each.
    for (n, packets) in (0..50).map(|n| (n, 16)).chain((50..150).map(|n| (n, 1))) {
        let mut s = tls(&devices);
        send(&mut s, &hello_of(0x7200_0000 + n));
        for _ in 0..packets {
            send(&mut s, &bad);
        }
        send(&mut s, &[0xd3, 0, 0, 0, 0]);
        // Its answers (0x28, 0xD8) show the server read everything before this closes.
        let mut answer = [0u8; 12];
        s.read_exact(&mut answer).unwrap();
        assert_eq!(answer, [0x28, 0, 0, 0, 2, 0, 0, 0xd8, 0, 0, 0, 0]);
    }
    send(&mut one, &[0xd3, 0, 0, 0, 0]);
    let mut answer = [0u8; 12];
    one.read_exact(&mut answer).unwrap();
    assert_eq!(answer[7..], [0xd8, 0, 0, 0, 0]);
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    let logs = logs.join().unwrap();
    let ratio = logs.len() as f64 / sent as f64;
    eprintln!(
        "{} log bytes for {sent} bytes in: {ratio:.4} per byte",
        logs.len()
    );
    assert!(ratio < 0.1, "{ratio}");
    let text = String::from_utf8_lossy(&logs);
    assert!(text.contains("suppressed"), "{text}");
    assert!(text.contains("undecodable packet"));
    let _ = std::fs::remove_dir_all(&state);
}
