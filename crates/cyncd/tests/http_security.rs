//! The HTTP server against a hostile client on real sockets, with a simulated home whose
//! device-side truth shows that refused requests send nothing: the API token, the page's
//! session cookie, foreign `Host` names (DNS rebinding), cross-site writes (CSRF), the body
//! limit, short echoes and the connection cap. (Slow clients: `tests/http_slow.rs`.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;
use cync_sim::{Fleet, FleetConfig};
use cyncd::serve::Running;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Sends raw bytes and reads until the server closes; returns (status, head, body). Status 0
/// when the server closed without answering.
async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before the whole request is written (body limit).
    let _ = tcp.write_all(request).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut response))
        .await
        .expect("the server neither answered nor closed");
    let text = String::from_utf8_lossy(&response).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return (0, text, String::new());
    };
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn request(method: &str, path: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A server with one simulated bridge of 3 devices, all seen.
async fn home(name: &str, tweak: impl FnOnce(&mut cyncd::config::Config)) -> (Running, Fleet) {
    let mut cfg = config(name);
    tweak(&mut cfg);
    let server = start(cfg).await;
    let fleet = Fleet::start(FleetConfig {
        server: server.devices.to_string(),
        bridges: 1,
        devices_per_bridge: 3,
        homes: Some(1),
        seed: 5,
        heartbeat: Duration::from_secs(10),
        firmware_delay: Duration::from_millis(50),
        id_base: 0x6600_0000,
        ..FleetConfig::default()
    })
    .unwrap();
    until(&server, || server.ctx.registry.device_count() == 3).await;
    (server, fleet)
}

/// Commands the simulated devices have applied, in total.
fn applied(fleet: &Fleet) -> usize {
    fleet
        .devices()
        .iter()
        .map(|d| d.applied_commands.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_the_token_and_refuses_foreign_hosts_and_cross_site_writes() {
    let (server, fleet) = home("http-auth", |_| {}).await;
    let addr = server.http;
    let token = server.http_token.as_ref().unwrap().token.clone();
    let bearer = format!("Authorization: Bearer {token}\r\n");
    let json = "Content-Type: application/json\r\n";
    let on = r#"{"on": true}"#;
    let path = "/api/devices/default:2/state";

    // No token: 401 on every API route, with the way to authenticate; nothing sent.
    for (method, p, body) in [
        ("GET", "/api/devices", ""),
        ("GET", "/api/connections", ""),
        ("GET", "/api/events", ""),
        ("GET", "/api/canary", ""),
        ("PUT", "/api/canary", r#"{"kill": true}"#),
        ("POST", path, on),
        ("POST", "/api/devices/default:2/toggle", ""),
        ("GET", "/api/nothing-here", ""),
    ] {
        let (status, head, answer) = raw(
            addr,
            &request(method, p, &format!("Host: 127.0.0.1\r\n{json}"), body),
        )
        .await;
        assert_eq!(status, 401, "{method} {p}: {answer}");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        assert!(answer.contains("API token"), "{answer}");
    }
    let wrong = "Authorization: Bearer 0000000000000000000000000000000000000000000000000000000000000000\r\n";
    let (status, _, _) = raw(
        addr,
        &request(
            "POST",
            path,
            &format!("Host: 127.0.0.1\r\n{wrong}{json}"),
            on,
        ),
    )
    .await;
    assert_eq!(status, 401);
    assert!(!server.ctx.canary.status()["kill"].as_bool().unwrap());

    // Open without the token: health, the page's static files, metrics from loopback.
    for p in [
        "/healthz",
        "/",
        "/app.js",
        "/style.css",
        "/favicon.svg",
        "/metrics",
    ] {
        let (status, _, _) = raw(addr, &request("GET", p, "Host: 127.0.0.1\r\n", "")).await;
        assert_eq!(status, 200, "{p}");
    }

    // A foreign Host (a page that rebound its DNS name to us) is refused even with the token.
    for host in [
        "attacker.test",
        "attacker.test:8080",
        "127.0.0.1.attacker.test",
    ] {
        let (status, _, answer) = raw(
            addr,
            &request("POST", path, &format!("Host: {host}\r\n{bearer}{json}"), on),
        )
        .await;
        assert_eq!(status, 403, "{host}: {answer}");
        let (status, _, _) = raw(
            addr,
            &request(
                "GET",
                "/api/devices",
                &format!("Host: {host}\r\n{bearer}"),
                "",
            ),
        )
        .await;
        assert_eq!(status, 403, "{host}");
    }
    // Cross-site writes: a form's text/plain, a foreign Origin, a cross-site fetch.
    for headers in [
        format!("Host: 127.0.0.1\r\n{bearer}Content-Type: text/plain\r\n"),
        format!("Host: 127.0.0.1\r\n{bearer}"),
        format!("Host: 127.0.0.1\r\n{bearer}{json}Origin: http://attacker.test\r\n"),
        format!("Host: 127.0.0.1\r\n{bearer}{json}Origin: null\r\n"),
        format!("Host: 127.0.0.1\r\n{bearer}{json}Sec-Fetch-Site: cross-site\r\n"),
    ] {
        let (status, _, answer) = raw(addr, &request("POST", path, &headers, on)).await;
        assert!(
            status == 403 || status == 415,
            "{headers}: {status} {answer}"
        );
    }
    assert_eq!(applied(&fleet), 0, "a refused request reached a device");

    // The same request, as the page or a client sends it, is applied.
    for origin in [
        "",
        "Origin: http://127.0.0.1\r\nSec-Fetch-Site: same-origin\r\n",
    ] {
        let origin = origin.replace("127.0.0.1", &addr.to_string());
        let (status, _, answer) = raw(
            addr,
            &request(
                "POST",
                path,
                &format!("Host: {addr}\r\n{bearer}{json}{origin}"),
                on,
            ),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    assert!(fleet.device("home0", 2).unwrap().on);
    assert!(applied(&fleet) >= 1);
    fleet.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_signs_in_once_with_an_http_only_same_site_cookie() {
    let server = start(config("http-login")).await;
    let addr = server.http;
    let token = server.http_token.as_ref().unwrap().token.clone();
    let json = "Host: 127.0.0.1\r\nContent-Type: application/json\r\n";
    let (status, _, _) = raw(
        addr,
        &request("GET", "/api/session", "Host: 127.0.0.1\r\n", ""),
    )
    .await;
    assert_eq!(status, 401);
    let (status, head, _) = raw(
        addr,
        &request("POST", "/api/session", json, r#"{"token": "guess"}"#),
    )
    .await;
    assert_eq!(status, 401);
    assert!(!head.contains("set-cookie"), "{head}");
    let (status, head, _) = raw(
        addr,
        &request(
            "POST",
            "/api/session",
            json,
            &format!(r#"{{"token": "{token}"}}"#),
        ),
    )
    .await;
    assert_eq!(status, 204, "{head}");
    let cookie_line = head
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap()
        .to_string();
    assert!(cookie_line.contains("httponly"), "{cookie_line}");
    assert!(cookie_line.contains("samesite=strict"), "{cookie_line}");
    assert!(!cookie_line.contains(&token), "the cookie is the token");
    // The cookie (case as sent) authenticates the page's calls, and nothing else is needed.
    let pair = cookie_line
        .trim_start_matches("set-cookie:")
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (status, _, body) = raw(
        addr,
        &request(
            "GET",
            "/api/session",
            &format!("Host: 127.0.0.1\r\nCookie: {pair}\r\n"),
            "",
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = raw(
        addr,
        &request(
            "GET",
            "/api/devices",
            &format!("Host: 127.0.0.1\r\nCookie: {pair}\r\n"),
            "",
        ),
    )
    .await;
    assert_eq!(status, 200);
    // A form posting the token cross-site cannot sign a browser in.
    let (status, _, _) = raw(
        addr,
        &request(
            "POST",
            "/api/session",
            "Host: 127.0.0.1\r\nContent-Type: text/plain\r\n",
            &format!(r#"{{"token": "{token}"}}"#),
        ),
    )
    .await;
    assert_eq!(status, 415);
    // Signing out clears the cookie.
    let (status, head, _) = raw(addr, &request("DELETE", "/api/session", json, "")).await;
    assert_eq!(status, 401, "signing out needs to be signed in: {head}");
    let (status, head, _) = raw(
        addr,
        &request(
            "DELETE",
            "/api/session",
            &format!("{json}Cookie: {pair}\r\n"),
            "",
        ),
    )
    .await;
    assert_eq!(status, 204);
    assert!(head.contains("max-age=0"), "{head}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_less_mode_on_loopback_still_refuses_cross_site_writes() {
    let (server, fleet) = home("http-open", |c| c.http_no_auth = true).await;
    assert!(server.http_token.is_none());
    let addr = server.http;
    let (status, _, _) = raw(
        addr,
        &request("GET", "/api/devices", "Host: localhost\r\n", ""),
    )
    .await;
    assert_eq!(status, 200);
    // What a web page in the user's browser can send without a preflight.
    for headers in [
        "Host: 127.0.0.1\r\nContent-Type: text/plain\r\n",
        "Host: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n",
        "Host: 127.0.0.1\r\nContent-Type: application/json\r\nOrigin: http://attacker.test\r\n",
        "Host: attacker.test\r\nContent-Type: application/json\r\n",
    ] {
        let (status, _, _) = raw(
            addr,
            &request(
                "POST",
                "/api/devices/default:3/state",
                headers,
                r#"{"on": true}"#,
            ),
        )
        .await;
        assert!(status == 403 || status == 415, "{headers}: {status}");
    }
    assert_eq!(applied(&fleet), 0);
    fleet.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_bounded_and_refusals_echo_only_a_prefix() {
    let server = start(config("http-body")).await;
    let addr = server.http;
    let headers = format!(
        "Host: 127.0.0.1\r\n{}Content-Type: application/json\r\n",
        auth(&server)
    );
    // 2 MB in: refused from its declared length, with a short answer.
    let big = format!(r#"{{"effect": "{}"}}"#, "A".repeat(2_000_000));
    let started = Instant::now();
    let (status, _, answer) = raw(
        addr,
        &request("POST", "/api/devices/default:1/state", &headers, &big),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer.len() < 300, "{} bytes echoed", answer.len());
    assert!(started.elapsed() < Duration::from_secs(5));
    // Chunked (no declared length): cut at the limit.
    let chunked = format!(
        "POST /api/devices/default:1/state HTTP/1.1\r\n{headers}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let (status, _, answer) = raw(addr, chunked.as_bytes()).await;
    assert_eq!(status, 413, "{answer}");
    // Within the limit but refused: the message quotes a short prefix only.
    let long = format!(r#"{{"effect": "{}"}}"#, "B".repeat(60_000));
    let (status, _, answer) = raw(
        addr,
        &request("POST", "/api/devices/default:1/state", &headers, &long),
    )
    .await;
    assert!(status == 400 || status == 404, "{status}");
    assert!(
        answer.len() < 400,
        "{} bytes echoed: {answer}",
        answer.len()
    );
    let (status, _, answer) = raw(
        addr,
        &request(
            "PUT",
            "/api/canary",
            &headers,
            &format!(r#"{{"mode": "{}"}}"#, "C".repeat(60_000)),
        ),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer.len() < 400,
        "{} bytes echoed: {answer}",
        answer.len()
    );
    let (status, _, answer) = raw(
        addr,
        &request(
            "GET",
            &format!("/api/trace/{}", "D".repeat(8_000)),
            &headers,
            "",
        ),
    )
    .await;
    assert!(
        answer.len() < 400,
        "{status}: {} bytes echoed",
        answer.len()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_once_and_the_cap_frees_up() {
    let server = start({
        let mut c = config("http-cap");
        c.http_max_connections = 8;
        c
    })
    .await;
    let addr = server.http;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // The server has accepted all eight before it sees the ninth (a request on each proves it).
    for tcp in &mut held {
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    let (status, _, _) = raw(addr, &request("GET", "/healthz", "Host: 127.0.0.1\r\n", "")).await;
    assert_eq!(status, 0, "a ninth connection was served");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) =
            raw(addr, &request("GET", "/healthz", "Host: 127.0.0.1\r\n", "")).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the cap never freed up");
        tokio::task::yield_now().await;
    }
    let (_, metrics) = get(&server, "/metrics").await;
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cyncd_http_connections_refused_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(refused >= 1, "{metrics}");
    server.shutdown().await;
}
