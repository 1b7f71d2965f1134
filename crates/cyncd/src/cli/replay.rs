//! `cyncd replay`: captured device connections played into a server, as the devices sent them.
//!
//! Reads the files `cyncd serve --capture` writes (one connection each; the parts of a
//! connection are joined by the connection named in their first line) and opens one connection
//! per captured one, writing every record the device sent (`DEV→CLOUD` without `[UPSTREAM]`)
//! byte for byte and in order. The server's side of the capture is not sent; it only says when
//! the device answered a request of the server's own: a record that followed the server's n-th
//! 0xA3 or n-th mesh-info request in the capture waits until the server being replayed into has
//! sent as many (the session takes mesh pages only while its request is open), for at most
//! `--wait-secs`. Connections of different bridges play at once, those of one bridge one after
//! the other, the earlier closed first, as a reconnecting device does.

use anyhow::Context as _;
use cync_proto::capture::{self, Direction, FileHeader};
use cync_proto::{ConnId, Framer, OversizePolicy, Packet};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Play captured device connections into a server, as the devices sent them.
///
/// Reads files written by `cyncd serve --capture` (one connection each, its parts joined in
/// order; a directory stands for every capture file in it) and, for each captured connection,
/// connects to --to over TLS as a device does (--plain for a plain server) and writes every
/// record the device sent, byte for byte and in order. A record the device sent after the
/// server's 0xA3 or mesh-info request waits until the server replayed into has sent the same,
/// so the replayed bridges list their mesh as they did. Different bridges play at once; the
/// connections of one bridge one after the other. Once everything is written the connections
/// close, or with --hold stay open until Ctrl-C or SIGTERM (the devices stay connected).
///
/// Auth codes masked in the capture are sent masked: replay into a server that pins bridges on
/// first use and has not pinned these ones (a fresh state directory).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Capture files or directories of them.
    #[arg(required = true, value_name = "FILE|DIR")]
    files: Vec<PathBuf>,
    /// The server's device address.
    #[arg(long, value_name = "HOST:PORT")]
    to: String,
    /// Plain TCP instead of TLS.
    #[arg(long)]
    plain: bool,
    /// Keep the recorded time between a connection's records [default: as fast as the server
    /// answers].
    #[arg(long)]
    realtime: bool,
    /// Keep the connections open once played, until Ctrl-C or SIGTERM.
    #[arg(long)]
    hold: bool,
    /// Longest wait for the server's request that a recorded answer follows, in seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    wait_secs: f64,
}

/// One captured connection, ready to play.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// The connection, as its files name it.
    pub key: String,
    /// Its bridge, from its hello.
    pub bridge: Option<ConnId>,
    /// What the device sent, in order.
    pub records: Vec<Sent>,
}

/// One record the device sent.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Its timestamp as written.
    pub ts: String,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// The server's requests sent before it on the captured connection.
    pub after: Requests,
}

/// Counts of the server's own requests on a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Requests {
    /// 0xA3 announces.
    pub announces: u32,
    /// Mesh-info requests (`f8 52`).
    pub mesh: u32,
}

impl Requests {
    /// Counts the server's requests among whole packets.
    fn count(&mut self, packet: &[u8]) {
        match packet.first() {
            Some(0xa3) => self.announces += 1,
            Some(0x73) => {
                if let Ok(p) = Packet::decode(packet) {
                    if p.frame().is_some_and(|f| {
                        f.opcode == 0x52 && f.dir == cync_proto::Direction::Request
                    }) {
                        self.mesh += 1;
                    }
                }
            }
            _ => {}
        }
    }

    fn reached(self, want: Self) -> bool {
        self.announces >= want.announces && self.mesh >= want.mesh
    }
}

/// Reads capture files into connections, in the order they started.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Vec<Connection>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .map(|n| n.to_string_lossy())
                        .is_some_and(|n| n.starts_with("cyncd-") && n.ends_with(".txt"))
                })
                .collect();
            inside.sort();
            files.extend(inside);
        } else {
            files.push(path.clone());
        }
    }
    // Parts grouped by connection, in part order.
    let mut parts: BTreeMap<String, Vec<(u32, String)>> = BTreeMap::new();
    for path in &files {
        let text = read(path)?;
        let (key, part) = match FileHeader::of(&text) {
            Some(h) => (h.connection, h.part),
            // Not one of cyncd's files: taken as one connection.
            None => (path.display().to_string(), 1),
        };
        parts.entry(key).or_default().push((part, text));
    }
    let mut out = Vec::new();
    for (key, mut texts) in parts {
        texts.sort_by_key(|(part, _)| *part);
        let mut connection = Connection {
            key,
            ..Connection::default()
        };
        let mut server =
            Framer::new(cync_proto::DEFAULT_MAX_PACKET * 16).with_policy(OversizePolicy::Resync);
        let mut device =
            Framer::new(cync_proto::DEFAULT_MAX_PACKET * 16).with_policy(OversizePolicy::Resync);
        let mut requests = Requests::default();
        for (_, text) in &texts {
            for record in capture::parse(text).into_iter().filter_map(Result::ok) {
                if record.upstream {
                    continue;
                }
                match record.dir {
                    Direction::Server => {
                        for packet in packets(&mut server, &record.bytes) {
                            requests.count(&packet);
                        }
                    }
                    Direction::Device => {
                        if connection.bridge.is_none() {
                            connection.bridge = packets(&mut device, &record.bytes)
                                .iter()
                                .find_map(|p| match Packet::decode(p) {
                                    Ok(Packet::Hello(h)) => Some(h.conn_id),
                                    _ => None,
                                });
                        }
                        connection.records.push(Sent {
                            ts: record.ts,
                            bytes: record.bytes,
                            after: requests,
                        });
                    }
                }
            }
        }
        if !connection.records.is_empty() {
            out.push(connection);
        }
    }
    out.sort_by(|a, b| {
        let first = |c: &Connection| c.records.first().map(|r| r.ts.clone());
        first(a).cmp(&first(b)).then_with(|| a.key.cmp(&b.key))
    });
    Ok(out)
}

fn read(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The whole packets `bytes` completes.
fn packets(framer: &mut Framer, mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let taken = framer.push(bytes);
        bytes = bytes.get(taken..).unwrap_or_default();
        while let Some(next) = framer.next_packet() {
            if let Ok(p) = next {
                out.push(p.to_vec());
            }
        }
        if bytes.is_empty() || taken == 0 {
            return out;
        }
    }
}

/// How to play.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server's device address.
    pub to: String,
    /// Plain TCP.
    pub plain: bool,
    /// Keep the recorded gaps.
    pub realtime: bool,
    /// Longest wait for a request.
    pub wait: Duration,
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Played {
    /// Connections opened.
    pub connections: AtomicU64,
    /// Records written.
    pub records: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
    /// Records written after waiting `wait` for a request that did not come.
    pub waits_expired: AtomicU64,
}

type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// An open replayed connection: what is left of it once played.
pub struct Open {
    writer: Writer,
    reader: tokio::task::JoinHandle<()>,
}

impl Open {
    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.shutdown()).await;
        self.reader.abort();
    }
}

/// Plays every connection; returns the ones left open (the last of each bridge).
pub async fn play(
    connections: Vec<Connection>,
    options: &Options,
    played: &Arc<Played>,
) -> anyhow::Result<Vec<Open>> {
    let connector = if options.plain {
        None
    } else {
        Some(Arc::new(cync_sim::fleet::connector()?))
    };
    // One queue per bridge (a connection without a hello is its own).
    let mut queues: Vec<Vec<Connection>> = Vec::new();
    let mut of_bridge: BTreeMap<ConnId, usize> = BTreeMap::new();
    for c in connections {
        match c.bridge.and_then(|b| of_bridge.get(&b).copied()) {
            Some(i) => {
                if let Some(q) = queues.get_mut(i) {
                    q.push(c);
                }
            }
            None => {
                if let Some(b) = c.bridge {
                    of_bridge.insert(b, queues.len());
                }
                queues.push(vec![c]);
            }
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for queue in queues {
        let options = options.clone();
        let played = played.clone();
        let connector = connector.clone();
        tasks.spawn(async move {
            let mut open: Option<Open> = None;
            for c in queue {
                if let Some(previous) = open.take() {
                    previous.close().await;
                }
                open = Some(play_one(&c, &options, connector.as_deref(), &played).await?);
            }
            anyhow::Ok(open)
        });
    }
    let mut out = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Some(open) = done.context("a replay task failed")?? {
            out.push(open);
        }
    }
    Ok(out)
}

async fn play_one(
    c: &Connection,
    options: &Options,
    connector: Option<&openssl::ssl::SslConnector>,
    played: &Played,
) -> anyhow::Result<Open> {
    let tcp = TcpStream::connect(&options.to)
        .await
        .with_context(|| format!("connecting to {}", options.to))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Stream> = match connector {
        None => Box::new(tcp),
        Some(connector) => {
            let ssl = connector
                .configure()?
                .into_ssl("cm.gelighting.com")
                .context("TLS set-up")?;
            let mut tls = tokio_openssl::SslStream::new(ssl, tcp)?;
            Pin::new(&mut tls)
                .connect()
                .await
                .with_context(|| format!("TLS handshake with {}", options.to))?;
            Box::new(tls)
        }
    };
    played.connections.fetch_add(1, Ordering::Relaxed);
    let (mut rd, wr) = tokio::io::split(stream);
    let mut writer: Writer = Box::new(wr);
    let (seen_tx, mut seen) = watch::channel(Requests::default());
    // The server's packets: counted, never answered (the capture holds the answers).
    let reader = tokio::spawn(async move {
        let mut framer =
            Framer::new(cync_proto::DEFAULT_MAX_PACKET * 16).with_policy(OversizePolicy::Resync);
        let mut buf = vec![0u8; 4096];
        let mut requests = Requests::default();
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    for p in packets(&mut framer, buf.get(..n).unwrap_or_default()) {
                        requests.count(&p);
                    }
                    seen_tx.send_replace(requests);
                }
            }
        }
    });
    let start = tokio::time::Instant::now();
    let first = c.records.first().and_then(|r| parse_ts(&r.ts));
    for record in &c.records {
        if options.realtime {
            if let (Some(first), Some(at)) = (first, parse_ts(&record.ts)) {
                let offset = (at - first).to_std().unwrap_or_default();
                tokio::time::sleep_until(start + offset).await;
            }
        }
        let reached = seen.borrow().reached(record.after);
        if !reached {
            let wait = seen.wait_for(|s| s.reached(record.after));
            if !matches!(tokio::time::timeout(options.wait, wait).await, Ok(Ok(_))) {
                played.waits_expired.fetch_add(1, Ordering::Relaxed);
            }
        }
        writer
            .write_all(&record.bytes)
            .await
            .with_context(|| format!("writing to {} (connection {})", options.to, c.key))?;
        writer.flush().await?;
        played.records.fetch_add(1, Ordering::Relaxed);
        played
            .bytes
            .fetch_add(record.bytes.len() as u64, Ordering::Relaxed);
    }
    Ok(Open { writer, reader })
}

fn parse_ts(ts: &str) -> Option<chrono::NaiveDateTime> {
    chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%dT%H:%M:%S%.f").ok()
}

/// A device connection, TLS or plain.
pub trait Stream: tokio::io::AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Runs `cyncd replay`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.wait_secs.is_finite() && args.wait_secs >= 0.0,
        "--wait-secs must be a number of seconds"
    );
    let connections = load(&args.files)?;
    anyhow::ensure!(
        !connections.is_empty(),
        "no record a device sent in {}",
        args.files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let bridges = connections
        .iter()
        .filter_map(|c| c.bridge)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let options = Options {
        to: args.to.clone(),
        plain: args.plain,
        realtime: args.realtime,
        wait: Duration::from_secs_f64(args.wait_secs),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Before anything is played, so an interrupt is never lost to the default action.
        let mut interrupts = crate::cli::sim::Interrupts::install()?;
        let played = Arc::new(Played::default());
        let count = connections.len();
        let open = play(connections, &options, &played).await?;
        let expired = played.waits_expired.load(Ordering::Relaxed);
        println!(
            "cyncd replay: {count} connections ({bridges} bridges), {} records, {} bytes written to {}{}",
            played.records.load(Ordering::Relaxed),
            played.bytes.load(Ordering::Relaxed),
            options.to,
            if expired > 0 {
                format!("; {expired} records sent after waiting --wait-secs for a request the server did not send")
            } else {
                String::new()
            }
        );
        if args.hold {
            use std::io::Write as _;
            println!("cyncd replay: holding {} connections open (Ctrl-C to end)", open.len());
            let _ = std::io::stdout().flush();
            interrupts.until(None).await;
        }
        for o in open {
            o.close().await;
        }
        anyhow::Ok(())
    })
}
