//! Shared helpers for the daemon's integration tests: an in-process server on 127.0.0.1:0, a
//! TLS device client, a minimal HTTP GET, and the captures.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod broker;
pub mod canary;
pub mod cync_api;

use cyncd::config::Config;
use cyncd::serve::Running;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "cyncd-test-{name}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A config for tests: loopback, ephemeral ports, own state dir.
pub fn config(name: &str) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        http: "127.0.0.1:0".parse().unwrap(),
        state_dir: temp_dir(name),
        utc_offset: Some("-06:00".into()),
        ..Config::default()
    }
}

pub async fn start(config: Config) -> Running {
    cyncd::serve::start(config).await.unwrap()
}

/// Any device stream.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Connects as a device: TLS (any certificate accepted, TLS 1.2, the devices' RSA suites)
/// unless the server is plain.
pub async fn connect(server: &Running) -> Box<dyn Stream> {
    connect_to(server.devices, server.ctx.config.plain).await
}

/// As [`connect`], to a device address.
pub async fn connect_to(devices: std::net::SocketAddr, plain: bool) -> Box<dyn Stream> {
    let tcp = TcpStream::connect(devices).await.unwrap();
    if plain {
        return Box::new(tcp);
    }
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder.set_verify(SslVerifyMode::NONE);
    builder
        .set_max_proto_version(Some(openssl::ssl::SslVersion::TLS1_2))
        .unwrap();
    builder
        .set_cipher_list("AES256-SHA256:AES128-SHA256:AES256-SHA:AES128-SHA")
        .unwrap();
    let ssl = builder
        .build()
        .configure()
        .unwrap()
        .into_ssl("cm.gelighting.com")
        .unwrap();
    let mut stream = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
    Pin::new(&mut stream).connect().await.unwrap();
    Box::new(stream)
}

/// Reads exactly `n` bytes, failing after 10 s (a hung server must not hang the test).
pub async fn read_n(stream: &mut (impl AsyncRead + Unpin + ?Sized), n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut buf))
        .await
        .expect("timed out waiting for the server")
        .unwrap();
    buf
}

/// Reads whole packets until `want` packets that satisfy `keep` have arrived; others (our own
/// announce and mesh request) are skipped.
pub async fn read_packets(
    stream: &mut (impl AsyncRead + Unpin + ?Sized),
    want: usize,
    keep: impl Fn(&[u8]) -> bool,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while out.len() < want {
        let header = read_n(stream, 5).await;
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let mut packet = header;
        packet.extend(read_n(stream, len).await);
        if keep(&packet) {
            out.push(packet);
        }
    }
    out
}

/// Everything except the packets cyncd originates (0xA3 and 0x73 requests).
pub fn answers(p: &[u8]) -> bool {
    !matches!(p[0], 0xa3 | 0x73)
}

/// Waits for end of stream (the server closed), failing after `limit`.
pub async fn expect_closed(stream: &mut (impl AsyncRead + Unpin + ?Sized), limit: Duration) {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!("connection still open"),
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

pub async fn write(stream: &mut (impl AsyncWrite + Unpin + ?Sized), bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    stream.flush().await.unwrap();
}

/// The `Authorization` header line for the server's API token (empty without one).
pub fn auth(server: &Running) -> String {
    server
        .http_token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {}\r\n", t.token))
        .unwrap_or_default()
}

/// A plain HTTP/1.1 GET with the API token; returns (status, body).
pub async fn get(server: &Running, path: &str) -> (u16, String) {
    http(
        server,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\n{}Connection: close\r\n\r\n",
            auth(server)
        ),
    )
    .await
}

/// A plain HTTP/1.1 POST with a JSON body; returns (status, body).
pub async fn post(server: &Running, path: &str, body: &str) -> (u16, String) {
    send_json(server, "POST", path, body).await
}

/// A plain HTTP/1.1 DELETE with the API token; returns (status, body).
pub async fn delete(server: &Running, path: &str) -> (u16, String) {
    // With the token and a JSON content type, as every write to the API needs.
    send_json(server, "DELETE", path, "").await
}

/// A plain HTTP/1.1 PUT with a JSON body; returns (status, body).
pub async fn put(server: &Running, path: &str, body: &str) -> (u16, String) {
    send_json(server, "PUT", path, body).await
}

async fn send_json(server: &Running, method: &str, path: &str, body: &str) -> (u16, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        auth(server),
        body.len()
    );
    http(server, &request).await
}

/// Sends one request and reads the whole answer (the server closes); returns (status, body).
pub async fn http(server: &Running, request: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(server.http).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

pub fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|p| u8::from_str_radix(p, 16).unwrap())
        .collect()
}

/// A 0x83 status report of bridge `conn` about mesh device `mesh` (the template of §10.2 with
/// the id and checksum rewritten).
pub fn report(conn: u32, mesh: u16, counter: u16) -> Vec<u8> {
    let mut p = hex(
        "83 00 00 00 25 38 e8 cf 46 00 09 00 7e 1f 00 00 00 fa db 13 00 87 25 11 ee 00 ee 00 db 11 02 01 01 0a 0a ff ff ff 00 00 88 7e",
    );
    p[5..9].copy_from_slice(&conn.to_be_bytes());
    p[9..11].copy_from_slice(&counter.to_be_bytes());
    p[24..26].copy_from_slice(&mesh.to_le_bytes());
    p[26..28].copy_from_slice(&mesh.to_le_bytes());
    let sum = p[18..p.len() - 2]
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b));
    let at = p.len() - 2;
    p[at] = sum;
    p
}

/// A hello for `id` with a dummy auth code.
pub fn hello(id: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0x23, 0, 0, 0, 0x1a, 0x03];
    p.extend(id);
    p.extend([0, 0x10]);
    p.extend([b'0'; 16]);
    p.extend([0, 0, 0x3c]);
    p
}

pub fn captures() -> PathBuf {
    std::env::var_os("CYNC_CAPTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/captures"),
        PathBuf::from,
    )
}

/// Polls `check` each time the registry changes, failing after 10 s.
pub async fn until(server: &Running, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut changes = server.ctx.registry.watch();
    while !check() {
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            _ => panic!("condition not reached"),
        }
    }
}

/// A GET with the API token and extra header lines (each ending in `\r\n`); returns (status,
/// head, body).
pub async fn get_with(server: &Running, path: &str, headers: &str) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(server.http).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{}{headers}Connection: close\r\n\r\n",
        auth(server)
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// `GET /api/events` read as a browser's EventSource would: chunked body, events split on blank
/// lines, comments (keep-alives) skipped.
pub struct Events {
    tcp: TcpStream,
    /// Bytes read, not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked body, not yet split into events.
    body: Vec<u8>,
    chunked: bool,
    eof: bool,
}

/// Opens `GET /api/events`; returns the status, the head (lower case) and the stream.
pub async fn events(server: &Running) -> (u16, String, Events) {
    let mut tcp = TcpStream::connect(server.http).await.unwrap();
    tcp.write_all(
        format!(
            "GET /api/events HTTP/1.1\r\nHost: localhost\r\n{}Accept: text/event-stream\r\nConnection: close\r\n\r\n",
            auth(server)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut stream = Events {
        tcp,
        raw: Vec::new(),
        body: Vec::new(),
        chunked: false,
        eof: false,
    };
    let end = loop {
        if let Some(i) = find(&stream.raw, b"\r\n\r\n") {
            break i;
        }
        assert!(stream.read().await, "closed before the head");
    };
    let head = String::from_utf8_lossy(&stream.raw[..end]).to_ascii_lowercase();
    stream.raw.drain(..end + 4);
    stream.chunked = head.contains("transfer-encoding: chunked");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, stream)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Events {
    /// Reads more bytes (10 s at most); false at end of stream.
    async fn read(&mut self) -> bool {
        let mut buf = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), self.tcp.read(&mut buf))
            .await
            .expect("no bytes from the event stream within 10 s")
            .unwrap_or(0);
        self.raw.extend_from_slice(&buf[..n]);
        n > 0
    }

    /// Moves whole chunks from `raw` to `body`.
    fn dechunk(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        while let Some(line) = find(&self.raw, b"\r\n") {
            let size = usize::from_str_radix(
                std::str::from_utf8(&self.raw[..line])
                    .unwrap()
                    .split(';')
                    .next()
                    .unwrap()
                    .trim(),
                16,
            )
            .unwrap();
            if size == 0 {
                self.eof = true;
                self.raw.clear();
                return;
            }
            if self.raw.len() < line + 2 + size + 2 {
                return;
            }
            self.body
                .extend_from_slice(&self.raw[line + 2..line + 2 + size]);
            self.raw.drain(..line + 2 + size + 2);
        }
    }

    /// The next event as (name, data); `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<(String, String)> {
        loop {
            self.dechunk();
            while let Some(end) = find(&self.body, b"\n\n") {
                let block = String::from_utf8(self.body[..end].to_vec()).unwrap();
                self.body.drain(..end + 2);
                let mut name = String::from("message");
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim_start().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                    }
                }
                if !data.is_empty() {
                    return Some((name, data.join("\n")));
                }
            }
            if self.eof || !self.read().await {
                return None;
            }
        }
    }

    /// The next event's data as JSON, checking its name.
    pub async fn expect(&mut self, name: &str) -> serde_json::Value {
        let (got, data) = self.next().await.expect("the event stream ended");
        assert_eq!(got, name, "{data}");
        serde_json::from_str(&data).unwrap()
    }

    /// The rest of a non-streaming answer (the connection closes).
    pub async fn rest(mut self) -> String {
        while !self.eof && self.read().await {}
        self.dechunk();
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Says why a test cannot run here: fails under CI (the `CI` environment variable set), and
/// otherwise writes one line to the process's stderr directly, which the test harness does not
/// capture (its print macros are), so the skip shows without `--nocapture`.
pub fn skip(test: &str, why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set, and {test} cannot run: {why}"
    );
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// `cyncd decode --no-redact FILE…`: its JSON lines (a capture read back).
pub fn decode<P: AsRef<std::ffi::OsStr>>(files: &[P]) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cyncd"))
        .arg("decode")
        .arg("--no-redact")
        .args(files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `/api/devices` by id, without what a replayed capture cannot carry: when each device was
/// last seen and the last command this server sent it.
pub async fn device_states(
    server: &Running,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let (status, body) = get(server, "/api/devices").await;
    assert_eq!(status, 200, "{body}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    list.into_iter()
        .map(|mut d| {
            let fields = d.as_object_mut().unwrap();
            fields.remove("last_seen");
            fields.remove("last_command");
            (d["id"].as_str().unwrap().to_string(), d)
        })
        .collect()
}
