//! Relay mode under N relayed device connections: the latency a packet takes from a device
//! through `cyncd serve --relay` to the cloud, and the memory each relayed connection costs.
//!
//! The benchmark starts the real `cyncd` binary (ephemeral loopback ports, a fresh state
//! directory, `--log-level warn`, one event loop as by default) relaying to an upstream that
//! runs in this process: a TLS server with cyncd's own certificate code that frames what it
//! receives and timestamps it. Then:
//!
//! 1. **Ramp**: N TLS device connections (the devices' TLS profile, at most 200 handshakes in
//!    flight), each sending a 0x23 hello and waiting for the 0x28; the relay opens one upstream
//!    connection per device. The ramp ends when the upstream has N connections.
//! 2. **Window** (default 20 s): every device sends a 0x43 ping every `--period` seconds
//!    (default 1 s, first at a random offset), noting when it wrote it; the upstream notes
//!    when the whole packet arrived. Latency = arrival − write, both on one monotonic clock.
//!    The devices keep reading (and discarding) what cyncd answers.
//! 3. **Direct** (the same, without the relay): the devices connect straight to the upstream,
//!    which shows what the client and the loopback cost on their own.
//!
//! Before all that, the same devices and pings against cyncd in normal mode (no relay): its
//! memory per connection and its 0x48 answer times, for comparison.
//!
//! Also printed: each ping → cyncd's 0x48 answer back at the device, during the relay run.
//! It crosses cyncd's process once, as the relayed ping does, so it separates what relaying
//! adds from what any wake-up of the cyncd process costs on a busy machine.
//!
//! Memory: VmRSS of the cyncd process before the ramp and at the end of the window; their
//! difference over N is the memory per relayed connection (its device side and its upstream
//! side together). The client and the upstream run on one tokio worker in this process and
//! share the machine's cores with cyncd, so the latency includes their scheduling delays.
//!
//! ```text
//! cargo bench -p cyncd --bench relay -- [--n 1000] [--window 20] [--period 1]
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use anyhow::{Context as _, bail};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use std::collections::HashMap;
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_openssl::SslStream;

const HELLO_ACK: [u8; 7] = [0x28, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00];
const HANDSHAKES_IN_FLIGHT: usize = 200;
const CIPHERS: &str = "AES256-SHA256:AES128-SHA256:AES256-SHA:AES128-SHA";

struct Options {
    n: usize,
    window: Duration,
    period: Duration,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        n: 1000,
        window: Duration::from_secs(20),
        period: Duration::from_secs(1),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if !matches!(arg.as_str(), "--n" | "--window" | "--period") {
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--n" => o.n = value.parse().context("--n")?,
            "--window" => o.window = Duration::from_secs_f64(value.parse().context("--window")?),
            _ => o.period = Duration::from_secs_f64(value.parse().context("--period")?),
        }
    }
    if o.n == 0 || o.period.is_zero() {
        bail!("--n and --period must be positive");
    }
    Ok(o)
}

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

fn hello(id: u32) -> Vec<u8> {
    let mut p = vec![0x23, 0x00, 0x00, 0x00, 0x1a, 0x03];
    p.extend(id.to_be_bytes());
    p.extend([0x00, 0x10]);
    p.extend([b'0'; 16]);
    p.extend([0x00, 0x00, 0x3c]);
    p
}

/// A 0x43 ping from device `id`.
fn ping(id: u32) -> Vec<u8> {
    let mut p = vec![0x43, 0x00, 0x00, 0x00, 0x07];
    p.extend(id.to_be_bytes());
    p.extend([0x01, 0x01, 0x06]);
    p
}

/// When each device last wrote its ping, in nanoseconds since `base` (0: none pending).
struct Clock {
    base: Instant,
    sent: HashMap<[u8; 4], AtomicU64>,
    latencies: Mutex<Vec<u32>>,
    /// Ping → cyncd's 0x48 answer back at the device, in µs (relay run only).
    answers: Mutex<Vec<u32>>,
    upstream_conns: AtomicUsize,
}

impl Clock {
    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The upstream: accepts TLS, frames, timestamps every 0x43 ping that arrives.
async fn upstream(listener: TcpListener, acceptor: openssl::ssl::SslAcceptor, clock: Arc<Clock>) {
    let acceptor = Arc::new(acceptor);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, clock) = (acceptor.clone(), clock.clone());
        tokio::spawn(async move {
            let Ok(mut stream) = cyncd::devices::tls::accept(&acceptor, tcp).await else {
                return;
            };
            clock.upstream_conns.fetch_add(1, Ordering::Relaxed);
            let mut framer = cync_proto::Framer::default();
            let mut buf = vec![0u8; 2048];
            loop {
                let n = match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let arrived = clock.now();
                let mut input = &buf[..n];
                while !input.is_empty() {
                    let taken = framer.push(input);
                    input = &input[taken..];
                    while let Some(Ok(p)) = framer.next_packet() {
                        if p.first() != Some(&0x43) {
                            continue;
                        }
                        let Some(slot) = p.get(5..9).and_then(|id| clock.sent.get(id)) else {
                            continue;
                        };
                        let sent = slot.swap(0, Ordering::Relaxed);
                        if sent > 0 && arrived >= sent {
                            let us = (arrived - sent) / 1000;
                            clock
                                .latencies
                                .lock()
                                .unwrap()
                                .push(u32::try_from(us).unwrap_or(u32::MAX));
                        }
                    }
                    if taken == 0 {
                        break;
                    }
                }
            }
            clock.upstream_conns.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Connects device `id` to `addr`; with `greet`, sends the hello and waits for the 0x28.
async fn connect(
    addr: SocketAddr,
    connector: &SslConnector,
    slots: &Semaphore,
    id: u32,
    greet: bool,
) -> anyhow::Result<SslStream<TcpStream>> {
    let _slot = slots.acquire().await?;
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let ssl = connector
        .configure()?
        .verify_hostname(false)
        .into_ssl("cm.gelighting.com")?;
    let mut stream = SslStream::new(ssl, tcp)?;
    Pin::new(&mut stream).connect().await.context("TLS")?;
    stream.write_all(&hello(id)).await?;
    if greet {
        let mut ack = [0u8; 7];
        stream.read_exact(&mut ack).await.context("hello ACK")?;
        if ack != HELLO_ACK {
            bail!("unexpected answer to the hello: {ack:02x?}");
        }
    }
    Ok(stream)
}

/// Pings every `period` from `first` until `end`, reading (and discarding) what comes back.
async fn pinger(
    stream: SslStream<TcpStream>,
    id: u32,
    clock: Arc<Clock>,
    first: Instant,
    period: Duration,
    end: Instant,
) -> u64 {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let asked = Arc::new(AtomicU64::new(0));
    let reader = {
        let (asked, clock) = (asked.clone(), clock.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let mut framer = cync_proto::Framer::default();
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let arrived = clock.now();
                let mut input = &buf[..n];
                while !input.is_empty() {
                    let taken = framer.push(input);
                    input = &input[taken..];
                    while let Some(Ok(p)) = framer.next_packet() {
                        if p.first() != Some(&0x48) {
                            continue;
                        }
                        let sent = asked.swap(0, Ordering::Relaxed);
                        if sent > 0 && arrived >= sent {
                            let us = u32::try_from((arrived - sent) / 1000).unwrap_or(u32::MAX);
                            clock.answers.lock().unwrap().push(us);
                        }
                    }
                    if taken == 0 {
                        break;
                    }
                }
            }
        })
    };
    let probe = ping(id);
    let slot = &clock.sent[&id.to_be_bytes()];
    let mut next = first;
    let mut sent = 0;
    while next < end {
        sleep_until(next).await;
        let at = clock.now().max(1);
        slot.store(at, Ordering::Relaxed);
        asked.store(at, Ordering::Relaxed);
        if wr.write_all(&probe).await.is_err() {
            break;
        }
        sent += 1;
        next += period;
    }
    // Leave time for the last ping to arrive.
    sleep(Duration::from_millis(500)).await;
    reader.abort();
    sent
}

/// Runs the window over connected devices and returns (sent, latencies in µs).
async fn window(
    devices: Vec<(u32, SslStream<TcpStream>)>,
    clock: &Arc<Clock>,
    o: &Options,
) -> (u64, Vec<u32>) {
    clock.latencies.lock().unwrap().clear();
    clock.answers.lock().unwrap().clear();
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + o.window;
    let mut set = JoinSet::new();
    for (id, stream) in devices {
        let first = start + o.period.mul_f64(fastrand::f64());
        set.spawn(pinger(stream, id, clock.clone(), first, o.period, end));
    }
    let mut sent = 0;
    while let Some(r) = set.join_next().await {
        sent += r.unwrap_or(0);
    }
    let lat = std::mem::take(&mut *clock.latencies.lock().unwrap());
    (sent, lat)
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

async fn ramp(
    addr: SocketAddr,
    n: usize,
    greet: bool,
    connector: &Arc<SslConnector>,
) -> anyhow::Result<Vec<(u32, SslStream<TcpStream>)>> {
    let slots = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT));
    let mut set = JoinSet::new();
    for i in 0..n {
        let id = 0x2000_0000 + u32::try_from(i)?;
        let (connector, slots) = (connector.clone(), slots.clone());
        set.spawn(async move {
            let r = timeout(
                Duration::from_secs(60),
                connect(addr, &connector, &slots, id, greet),
            )
            .await;
            (id, r)
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(j) = set.join_next().await {
        let (id, r) = j?;
        match r {
            Ok(Ok(s)) => out.push((id, s)),
            Ok(Err(e)) => bail!("device {id:08x}: {e:#}"),
            Err(_) => bail!("device {id:08x}: timed out"),
        }
    }
    Ok(out)
}

struct Server {
    child: Child,
    dir: std::path::PathBuf,
    devices: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_server(upstream: Option<SocketAddr>) -> anyhow::Result<Server> {
    let dir = std::env::temp_dir().join(format!("cyncd-relay-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_cyncd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(&dir)
        .args(["--log-level", "warn"])
        .args(
            upstream
                .map(|u| ["--relay".to_string(), u.to_string()])
                .into_iter()
                .flatten(),
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting cyncd")?;
    let stdout = child.stdout.take().context("stdout")?;
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let mut reader = std::io::BufReader::new(stdout);
        let _ = reader.read_line(&mut line);
        // Keep the pipe open (cyncd writes one more line) for the life of the process.
        std::mem::forget(reader);
        line
    })
    .await?;
    let devices = line
        .split_once("devices on ")
        .and_then(|(_, rest)| rest.split_once(' '))
        .and_then(|(a, _)| a.parse().ok())
        .with_context(|| format!("unexpected first line {line:?}"))?;
    Ok(Server {
        child,
        dir,
        devices,
    })
}

fn report(what: &str, sent: u64, mut lat: Vec<u32>) {
    lat.sort_unstable();
    println!(
        "{what:>28}: {sent:>6} pings, {:>6} arrived, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        lat.len(),
        pct(&lat, 50.0),
        pct(&lat, 99.0),
        lat.last().map_or(f64::NAN, |m| f64::from(*m) / 1000.0),
    );
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dir = std::env::temp_dir().join(format!("cyncd-relay-bench-up-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let files = cyncd::devices::tls::ensure_certificate(&dir, None, None)?;
        let acceptor = cyncd::devices::tls::acceptor(&files, false)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let up_addr = listener.local_addr()?;
        let ids = (0..o.n).map(|i| (0x2000_0000 + u32::try_from(i).unwrap()).to_be_bytes());
        let clock = Arc::new(Clock {
            base: Instant::now(),
            sent: ids.map(|id| (id, AtomicU64::new(0))).collect(),
            latencies: Mutex::new(Vec::new()),
            answers: Mutex::new(Vec::new()),
            upstream_conns: AtomicUsize::new(0),
        });
        tokio::spawn(upstream(listener, acceptor, clock.clone()));

        let mut builder = SslConnector::builder(SslMethod::tls_client())?;
        builder.set_verify(SslVerifyMode::NONE);
        builder.set_max_proto_version(Some(SslVersion::TLS1_2))?;
        builder.set_cipher_list(CIPHERS)?;
        let connector = Arc::new(builder.build());

        // Normal mode first, the same devices and pings: what relaying adds to it.
        let server = start_server(None).await?;
        let pid = server.child.id();
        sleep(Duration::from_millis(300)).await;
        let base_rss0 = rss_kib(pid)?;
        eprintln!("normal mode: ramping up {} connections…", o.n);
        let devices = ramp(server.devices, o.n, true, &connector).await?;
        let (base_sent, _) = window(devices, &clock, &o).await;
        let base_answers = std::mem::take(&mut *clock.answers.lock().unwrap());
        let base_rss1 = rss_kib(pid)?;
        drop(server);

        let server = start_server(Some(up_addr)).await?;
        let pid = server.child.id();
        sleep(Duration::from_millis(300)).await;
        let rss0 = rss_kib(pid)?;
        eprintln!("relay: ramping up {} connections…", o.n);
        let t = Instant::now();
        let devices = ramp(server.devices, o.n, true, &connector).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while clock.upstream_conns.load(Ordering::Relaxed) < o.n {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {} upstream connections",
                    clock.upstream_conns.load(Ordering::Relaxed),
                    o.n
                );
            }
            sleep(Duration::from_millis(20)).await;
        }
        eprintln!("relay: {} relayed in {:.1} s; window…", o.n, t.elapsed().as_secs_f64());
        let (sent, lat) = window(devices, &clock, &o).await;
        let answers = std::mem::take(&mut *clock.answers.lock().unwrap());
        let rss1 = rss_kib(pid)?;
        drop(server);
        while clock.upstream_conns.load(Ordering::Relaxed) > 0 {
            sleep(Duration::from_millis(20)).await;
        }

        eprintln!("direct: ramping up {} connections…", o.n);
        let devices = ramp(up_addr, o.n, false, &connector).await?;
        let (dsent, dlat) = window(devices, &clock, &o).await;

        println!();
        println!(
            "N = {}, window {:.0} s, one 0x43 ping per device every {:.2} s",
            o.n,
            o.window.as_secs_f64(),
            o.period.as_secs_f64()
        );
        report("device → relay → upstream", sent, lat);
        report("device → cyncd → device (0x48)", sent, answers);
        report("normal mode: 0x48", base_sent, base_answers);
        report("device → upstream (direct)", dsent, dlat);
        println!(
            "cyncd RSS {:.1} MiB before, {:.1} MiB with {} relayed connections: {:.1} KiB per relayed connection",
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0,
            o.n,
            (rss1 as f64 - rss0 as f64) / o.n as f64
        );
        println!(
            "normal mode: {:.1} MiB before, {:.1} MiB with {} connections: {:.1} KiB per connection",
            base_rss0 as f64 / 1024.0,
            base_rss1 as f64 / 1024.0,
            o.n,
            (base_rss1 as f64 - base_rss0 as f64) / o.n as f64
        );
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
}
