//! `cyncd serve` under N concurrent TLS device connections that heartbeat.
//!
//! For each size N the benchmark starts a fresh server process (the real `cyncd` binary, on
//! ephemeral loopback ports, a fresh state directory, `--log-level warn`) and then:
//!
//! 1. **Ramp**: opens N TLS 1.2 connections as devices would (RSA key exchange, CBC suites, no
//!    certificate check; at most 200 handshakes in flight), each sending a 0x23 hello with its
//!    own device id and waiting for the 0x28 hello ACK. Reported as handshakes per second
//!    (TLS plus hello, over the whole ramp).
//! 2. **Window** (default 20 s): every connection sends a 0xD3 heartbeat every `--hb` seconds
//!    (default 2 s, first one at a uniformly random offset so the load is spread) and times
//!    the 0xD8 ACK. Replies are framed by the 5-byte header; the server's own 0xA3 and 0x73
//!    packets are skipped. An ACK that takes more than 5 s, or never comes, counts as lost and
//!    is left out of the percentiles.
//! 3. **Stop**: SIGTERM with every connection still open; the server should exit 0 within 5 s.
//!
//! Server figures come from `/proc/<pid>`: VmRSS before the ramp and at the end of the window
//! (their difference over N is the memory per connection) and utime+stime over the window
//! (CPU %, where 100 % is one core). The client runs in this process on a tokio runtime with
//! one worker thread, on the same machine: client and server share the cores, and the
//! heartbeat latency includes the client's own scheduling delay.
//!
//! Run (needs `ulimit -n` of at least N + 100):
//!
//! ```text
//! cargo bench -p cyncd --bench connections -- [--sizes 1000,10000] [--window 20] [--hb 2] [--capture]
//! ```
//!
//! `--capture` runs the server with `--capture` into a directory beside its state, to measure
//! what writing every connection's traffic costs.
//!
//! Prints a table and writes `target/connections-bench.json`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use anyhow::{Context as _, bail};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use serde_json::json;
use std::collections::VecDeque;
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_openssl::SslStream;

/// The hello ACK: type 0x28, length 2.
const HELLO_ACK: [u8; 7] = [0x28, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00];
/// A device heartbeat: type 0xD3, empty body.
const HEARTBEAT: [u8; 5] = [0xd3, 0x00, 0x00, 0x00, 0x00];
/// The type byte of the server's heartbeat ACK.
const HEARTBEAT_ACK: u8 = 0xd8;
/// A heartbeat not answered within this long is lost.
const LOST_AFTER: Duration = Duration::from_secs(5);
/// Most TLS handshakes in flight during the ramp, like a house of devices after a power cut.
const HANDSHAKES_IN_FLIGHT: usize = 200;
/// One connection's ramp (queueing for a handshake slot included) must finish within this.
const CONNECT_LIMIT: Duration = Duration::from_secs(60);
/// How long the server may take to exit after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(5);
/// The client's suites: the RSA key exchange CBC suites every device offers.
const CIPHERS: &str = "AES256-SHA256:AES128-SHA256:AES256-SHA:AES128-SHA";

struct Options {
    sizes: Vec<usize>,
    window: Duration,
    hb: Duration,
    /// Run the server with `--capture` (every connection's traffic written to files).
    capture: bool,
}

/// Parses our flags from the command line; cargo's own (`--bench`) and unknown ones are ignored.
fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        sizes: vec![1000, 10_000],
        window: Duration::from_secs(20),
        hb: Duration::from_secs(2),
        capture: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--capture" {
            o.capture = true;
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg, None),
        };
        if !matches!(name.as_str(), "--sizes" | "--window" | "--hb") {
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .with_context(|| format!("{name} needs a value"))?,
        };
        match name.as_str() {
            "--sizes" => {
                o.sizes = value
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--sizes {value}: expected e.g. 1000,10000"))?;
            }
            "--window" => o.window = seconds(&name, &value)?,
            _ => o.hb = seconds(&name, &value)?,
        }
    }
    if o.sizes.is_empty() || o.sizes.contains(&0) {
        bail!("--sizes: every size must be at least 1");
    }
    Ok(o)
}

fn seconds(name: &str, value: &str) -> anyhow::Result<Duration> {
    let s: f64 = value
        .parse()
        .with_context(|| format!("{name} {value}: expected seconds"))?;
    if !(s > 0.0 && s < 86_400.0) {
        bail!("{name} {value}: expected a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

/// This process's soft limit on open files, from `/proc/self/limits`.
fn open_files_limit() -> anyhow::Result<Option<u64>> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no 'Max open files' in /proc/self/limits")?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()
        .context("no soft limit")?;
    Ok(soft.parse().ok()) // "unlimited" → None
}

/// Clock ticks per second for `/proc/<pid>/stat` times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces; fields resume after its closing parenthesis, with
    // field 3 (state) first, so utime (14) and stime (15) are at 11 and 12.
    let rest = &stat[stat.rfind(')').context("stat format")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

/// A 0x23 hello for device id `id`, with a dummy 16-byte auth code.
fn hello(id: u32) -> Vec<u8> {
    let mut p = vec![0x23, 0x00, 0x00, 0x00, 0x1a, 0x03];
    p.extend(id.to_be_bytes());
    p.extend([0x00, 0x10]);
    p.extend([b'0'; 16]);
    p.extend([0x00, 0x00, 0x3c]);
    p
}

/// Removes whole packets from the front of `buf` (5-byte header: type, 0, 0, u16 BE length)
/// and returns their type bytes.
fn take_packets(buf: &mut Vec<u8>, types: &mut Vec<u8>) {
    let mut at = 0;
    while buf.len() - at >= 5 {
        let len = 5 + usize::from(u16::from_be_bytes([buf[at + 3], buf[at + 4]]));
        if buf.len() - at < len {
            break;
        }
        types.push(buf[at]);
        at += len;
    }
    buf.drain(..at);
}

/// One connected device: its stream and any bytes read past the hello ACK.
struct Device {
    stream: SslStream<TcpStream>,
    buf: Vec<u8>,
}

/// Connects device `id`: TCP, TLS, hello, hello ACK.
async fn connect(
    addr: SocketAddr,
    connector: &SslConnector,
    slots: &Semaphore,
    id: u32,
) -> anyhow::Result<Device> {
    let _slot = slots.acquire().await?;
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let ssl = connector
        .configure()?
        .verify_hostname(false)
        .into_ssl("cm.gelighting.com")?;
    let mut stream = SslStream::new(ssl, tcp)?;
    Pin::new(&mut stream)
        .connect()
        .await
        .context("TLS handshake")?;
    stream
        .write_all(&hello(id))
        .await
        .context("writing hello")?;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    let mut types = Vec::new();
    loop {
        let n = stream.read(&mut chunk).await.context("reading hello ACK")?;
        if n == 0 {
            bail!("closed before the hello ACK");
        }
        buf.extend_from_slice(&chunk[..n]);
        // The ACK is the first thing the server sends; compare its bytes, then keep the rest.
        if buf.len() >= HELLO_ACK.len() {
            if buf[..HELLO_ACK.len()] != HELLO_ACK {
                bail!(
                    "unexpected reply to hello: {:02x?}",
                    &buf[..HELLO_ACK.len()]
                );
            }
            buf.drain(..HELLO_ACK.len());
            take_packets(&mut buf, &mut types);
            return Ok(Device { stream, buf });
        }
    }
}

/// What one connection saw during the window.
#[derive(Default)]
struct Tally {
    /// Heartbeat → ACK, in microseconds, for ACKs within [`LOST_AFTER`].
    latencies: Vec<u32>,
    sent: u64,
    lost: u64,
    unexpected_acks: u64,
    error: Option<String>,
}

/// Heartbeats from `first` every `hb` until `end`, then waits up to [`LOST_AFTER`] for the
/// last ACKs. Returns the stream too, so the connection stays open until the server stops.
async fn heartbeat(mut dev: Device, first: Instant, hb: Duration, end: Instant) -> (Device, Tally) {
    let mut tally = Tally::default();
    let mut pending: VecDeque<Instant> = VecDeque::new();
    let mut next = first;
    let mut chunk = [0u8; 1024];
    let mut types = Vec::new();
    loop {
        let sending = next < end;
        let wake = match (sending, pending.back()) {
            (true, _) => next,
            (false, Some(last)) => *last + LOST_AFTER,
            (false, None) => break,
        };
        tokio::select! {
            read = dev.stream.read(&mut chunk) => {
                let n = match read {
                    Ok(0) => {
                        tally.error = Some("closed by the server".into());
                        break;
                    }
                    Ok(n) => n,
                    Err(e) => {
                        tally.error = Some(format!("read: {e}"));
                        break;
                    }
                };
                let now = Instant::now();
                dev.buf.extend_from_slice(&chunk[..n]);
                types.clear();
                take_packets(&mut dev.buf, &mut types);
                for _ in types.iter().filter(|t| **t == HEARTBEAT_ACK) {
                    // The server answers in order on one stream, so ACKs match sends FIFO.
                    let Some(sent) = pending.pop_front() else {
                        tally.unexpected_acks += 1;
                        continue;
                    };
                    let took = now - sent;
                    if took > LOST_AFTER {
                        tally.lost += 1;
                    } else {
                        tally.latencies.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                    }
                }
            }
            () = sleep_until(wake) => {
                if !sending {
                    break;
                }
                let at = Instant::now();
                if let Err(e) = dev.stream.write_all(&HEARTBEAT).await {
                    tally.error = Some(format!("write: {e}"));
                    break;
                }
                pending.push_back(at);
                tally.sent += 1;
                // Keep the schedule even when woken late, so the offered load stays fixed.
                next += hb;
            }
        }
    }
    tally.lost += pending.len() as u64;
    (dev, tally)
}

/// The `p`-quantile (nearest rank) of sorted microseconds, in milliseconds.
fn quantile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

/// The server child process, killed if still running when dropped (an error path).
struct Server {
    child: Child,
    devices: SocketAddr,
    http: SocketAddr,
    log: PathBuf,
    dir: PathBuf,
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Server {
    async fn start(n: usize, capture: bool) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "cyncd-bench-{}-{n}-{:x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir)?;
        // The log goes beside the state dir, not into it: the server owns that directory.
        let log = dir.with_extension("log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_cyncd"))
            .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(&dir)
            .args(["--log-level", "warn"])
            .args(if capture {
                vec!["--capture".into(), dir.join("captures").into_os_string()]
            } else {
                Vec::new()
            })
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting cyncd")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let read = tokio::task::spawn_blocking(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let n = reader.read_line(&mut line);
            (n.map(|_| line), reader)
        });
        let started = timeout(Duration::from_secs(30), read).await;
        let Ok(Ok((Ok(line), stdout))) = started else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "cyncd did not print its addresses; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let (devices, http) = parse_banner(&line).with_context(|| {
            format!(
                "unexpected first line {line:?}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        Ok(Self {
            child,
            devices,
            http,
            log,
            dir,
            _stdout: stdout,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits up to [`STOP_LIMIT`]; returns (seconds taken, exit code), or
    /// `None` for the time if it had to be killed.
    async fn stop(&mut self) -> anyhow::Result<(Option<f64>, Option<i32>)> {
        let signalled = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid());
        }
        while signalled.elapsed() < STOP_LIMIT {
            if let Some(exit) = self.child.try_wait()? {
                return Ok((Some(signalled.elapsed().as_secs_f64()), exit.code()));
            }
            sleep(Duration::from_millis(10)).await;
        }
        self.child.kill()?;
        let exit = self.child.wait()?;
        Ok((None, exit.code()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Parses `cyncd: devices on A (TLS), HTTP on http://B (…)`.
fn parse_banner(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let devices = line.split_once("devices on ")?.1.split_once(' ')?.0;
    let http = line.split_once("http://")?.1.split_once(' ')?.0;
    Some((devices.parse().ok()?, http.parse().ok()?))
}

/// A plain HTTP/1.1 GET; returns the body.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    timeout(Duration::from_secs(10), tcp.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response).into_owned();
    Ok(text
        .split_once("\r\n\r\n")
        .map_or(text.as_str(), |(_, b)| b)
        .to_string())
}

/// The value of an unlabelled metric in a Prometheus text body.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Warning and error lines in the server log: (count, first few distinct messages).
fn log_problems(log: &Path) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut count = 0;
    let mut samples: Vec<String> = Vec::new();
    for line in text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
    {
        count += 1;
        // Drop the timestamp so repeats of one message collapse.
        let message = line
            .split_once(' ')
            .map_or(line, |(_, m)| m)
            .trim()
            .to_string();
        if samples.len() < 5 && !samples.contains(&message) {
            samples.push(message);
        }
    }
    (count, samples)
}

/// Runs one size against a fresh server and returns its JSON record.
async fn run_size(
    n: usize,
    o: &Options,
    ticks: f64,
    seed: u64,
) -> anyhow::Result<serde_json::Value> {
    let mut server = Server::start(n, o.capture).await?;
    let pid = server.pid();
    sleep(Duration::from_millis(300)).await;
    let rss_before = rss_kib(pid)?;

    let mut builder = SslConnector::builder(SslMethod::tls_client())?;
    builder.set_verify(SslVerifyMode::NONE);
    builder.set_max_proto_version(Some(SslVersion::TLS1_2))?;
    builder.set_cipher_list(CIPHERS)?;
    let connector = Arc::new(builder.build());
    let slots = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT));

    eprintln!("N={n}: ramping up {n} connections…");
    let ramp_cpu0 = cpu_ticks(pid)?;
    let ramp_start = Instant::now();
    let mut ramp = JoinSet::new();
    for i in 0..n {
        let (connector, slots, addr) = (connector.clone(), slots.clone(), server.devices);
        let id = 0x1000_0000 + u32::try_from(i)?;
        ramp.spawn(async move {
            timeout(CONNECT_LIMIT, connect(addr, &connector, &slots, id))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        });
    }
    let mut devices = Vec::with_capacity(n);
    let mut connect_errors: Vec<String> = Vec::new();
    let mut failed = 0usize;
    while let Some(joined) = ramp.join_next().await {
        match joined? {
            Ok(d) => devices.push(d),
            Err(e) => {
                failed += 1;
                if connect_errors.len() < 5 {
                    connect_errors.push(format!("{e:#}"));
                }
            }
        }
    }
    let ramp_secs = ramp_start.elapsed().as_secs_f64();
    let ramp_cpu = (cpu_ticks(pid)? - ramp_cpu0) as f64 / ticks;
    let rss_ramp = rss_kib(pid)?;
    let connected = devices.len();
    let handshakes_per_sec = connected as f64 / ramp_secs;
    eprintln!(
        "N={n}: {connected} connected ({failed} failed) in {ramp_secs:.2} s; window of {:.0} s…",
        o.window.as_secs_f64()
    );

    // Staggered start: each connection's first heartbeat at a uniform offset within one period.
    let mut rng = fastrand::Rng::with_seed(seed);
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + o.window;
    let mut window = JoinSet::new();
    for dev in devices {
        let first = start + o.hb.mul_f64(rng.f64());
        window.spawn(heartbeat(dev, first, o.hb, end));
    }
    sleep_until(start).await;
    let cpu0 = cpu_ticks(pid)?;
    sleep_until(end).await;
    let window_secs = start.elapsed().as_secs_f64();
    let window_cpu = (cpu_ticks(pid)? - cpu0) as f64 / ticks;
    let rss_after = rss_kib(pid)?;
    let metrics = http_get(server.http, "/metrics").await.unwrap_or_default();
    let server_open = metric(&metrics, "cyncd_connections_open");

    let mut latencies = Vec::new();
    let (mut sent, mut lost, mut unexpected, mut closed) = (0u64, 0u64, 0u64, 0usize);
    let mut conn_errors: Vec<String> = Vec::new();
    let mut kept = Vec::with_capacity(connected);
    while let Some(joined) = window.join_next().await {
        let (dev, tally) = joined?;
        latencies.extend(tally.latencies);
        sent += tally.sent;
        lost += tally.lost;
        unexpected += tally.unexpected_acks;
        if let Some(e) = tally.error {
            closed += 1;
            if conn_errors.len() < 5 {
                conn_errors.push(e);
            }
        }
        kept.push(dev);
    }
    latencies.sort_unstable();

    // Stop with every connection still open: shutdown has to close them all.
    let (stop_secs, exit_code) = server.stop().await?;
    drop(kept);
    let (log_lines, log_samples) = log_problems(&server.log);

    let p50 = quantile_ms(&latencies, 0.50);
    let p99 = quantile_ms(&latencies, 0.99);
    let max = latencies
        .last()
        .map_or(f64::NAN, |m| f64::from(*m) / 1000.0);
    Ok(json!({
        "connections": n,
        "connected": connected,
        "connect_failures": failed,
        "connect_errors": connect_errors,
        "ramp_seconds": ramp_secs,
        "handshakes_per_second": handshakes_per_sec,
        "ramp_server_cpu_percent": ramp_cpu / ramp_secs * 100.0,
        "heartbeats_sent": sent,
        "acks": latencies.len(),
        "lost": lost,
        "unexpected_acks": unexpected,
        "connections_closed_in_window": closed,
        "connection_errors": conn_errors,
        "latency_ms": { "p50": p50, "p99": p99, "max": max },
        "rss_kib": { "before": rss_before, "after_ramp": rss_ramp, "after_window": rss_after },
        "rss_per_connection_kib": (rss_after as f64 - rss_before as f64) / n as f64,
        "window_seconds": window_secs,
        "window_server_cpu_seconds": window_cpu,
        "window_server_cpu_percent": window_cpu / window_secs * 100.0,
        "server_connections_open": server_open,
        "shutdown_seconds": stop_secs,
        "exit_code": exit_code,
        "server_log_warnings": log_lines,
        "server_log_samples": log_samples,
    }))
}

fn print_table(results: &[serde_json::Value]) {
    println!();
    println!(
        "{:>6} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>6} {:>10} {:>10} {:>9} {:>7} {:>7}",
        "N",
        "hs/s",
        "ramp s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "acks",
        "lost",
        "RSS0 MiB",
        "RSS1 MiB",
        "KiB/conn",
        "CPU %",
        "stop s"
    );
    for r in results {
        let f = |path: &[&str]| {
            let mut v = r;
            for key in path {
                v = &v[*key];
            }
            v.as_f64().unwrap_or(f64::NAN)
        };
        println!(
            "{:>6} {:>8.0} {:>7.2} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>6} {:>10.1} {:>10.1} {:>9.1} {:>7.1} {:>7}",
            r["connections"].as_u64().unwrap_or(0),
            f(&["handshakes_per_second"]),
            f(&["ramp_seconds"]),
            f(&["latency_ms", "p50"]),
            f(&["latency_ms", "p99"]),
            f(&["latency_ms", "max"]),
            r["acks"].as_u64().unwrap_or(0),
            r["lost"].as_u64().unwrap_or(0),
            f(&["rss_kib", "before"]) / 1024.0,
            f(&["rss_kib", "after_window"]) / 1024.0,
            f(&["rss_per_connection_kib"]),
            f(&["window_server_cpu_percent"]),
            r["shutdown_seconds"]
                .as_f64()
                .map_or_else(|| "KILLED".to_string(), |s| format!("{s:.2}")),
        );
    }
    println!();
    println!(
        "hs/s: TLS handshake + hello per second over the ramp ({HANDSHAKES_IN_FLIGHT} in flight). \
         p50/p99/max: heartbeat → ACK. lost: no ACK within {} s.",
        LOST_AFTER.as_secs()
    );
    println!(
        "RSS0/RSS1: server VmRSS before the ramp / at the end of the window; KiB/conn = \
         (RSS1 - RSS0) / N. CPU %: server CPU over the window (100 = one core)."
    );
    for r in results {
        let problems = [
            (
                "connect failures",
                r["connect_failures"].as_u64().unwrap_or(0),
            ),
            (
                "connections closed in the window",
                r["connections_closed_in_window"].as_u64().unwrap_or(0),
            ),
            (
                "unexpected ACKs",
                r["unexpected_acks"].as_u64().unwrap_or(0),
            ),
            (
                "server log warnings/errors",
                r["server_log_warnings"].as_u64().unwrap_or(0),
            ),
        ];
        for (what, count) in problems.iter().filter(|(_, c)| *c > 0) {
            println!("N={}: {count} {what}", r["connections"]);
        }
        if r["exit_code"].as_i64() != Some(0) || r["shutdown_seconds"].is_null() {
            println!(
                "N={}: server did not exit 0 within {} s of SIGTERM (exit code {}, took {})",
                r["connections"],
                STOP_LIMIT.as_secs(),
                r["exit_code"],
                r["shutdown_seconds"]
            );
        }
        for key in ["connect_errors", "connection_errors", "server_log_samples"] {
            for s in r[key].as_array().into_iter().flatten() {
                println!(
                    "N={}: {key}: {}",
                    r["connections"],
                    s.as_str().unwrap_or_default()
                );
            }
        }
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    )
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    let largest = o.sizes.iter().copied().max().unwrap_or(0);
    if let Some(limit) = open_files_limit()? {
        let need = largest as u64 + 100;
        if limit < need {
            bail!(
                "the open files limit is {limit}, but {largest} connections need at least {need}: \
                 raise it with `ulimit -n {need}` (or more) in this shell, or pass smaller --sizes"
            );
        }
    }
    let ticks = clock_ticks();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let seed = std::env::var("BENCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!(
        "cyncd connections bench: sizes {:?}, window {:.0} s, heartbeat every {:.1} s, seed {seed} \
         (BENCH_SEED to repeat)",
        o.sizes,
        o.window.as_secs_f64(),
        o.hb.as_secs_f64()
    );
    println!(
        "client (1 tokio worker thread) and server share this machine's {cores} cores: \
         latencies include client scheduling, and figures are noisy if anything else is running."
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    for &n in &o.sizes {
        let r = runtime.block_on(run_size(n, &o, ticks, seed))?;
        results.push(r);
    }
    print_table(&results);

    let report = json!({
        "bench": "connections",
        "cores": cores,
        "client_worker_threads": 1,
        "handshakes_in_flight": HANDSHAKES_IN_FLIGHT,
        "window_seconds": o.window.as_secs_f64(),
        "heartbeat_seconds": o.hb.as_secs_f64(),
        "capture": o.capture,
        "lost_after_seconds": LOST_AFTER.as_secs_f64(),
        "seed": seed,
        "results": results,
    });
    let dir = target_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.canonicalize()?.join("connections-bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", path.display());
    Ok(())
}
