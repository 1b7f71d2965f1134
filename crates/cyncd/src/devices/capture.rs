//! Captures: every device connection's traffic written to files in the captures' text format
//! ([`cync_proto::capture`]), which `cyncd decode` reads and `cyncd replay` plays back.
//!
//! A connection task (and, in relay mode, its upstream side) gets a [`Capture`] from
//! [`Captures::open`] and calls [`Capture::record`] with each read it made and each write it
//! made, in the order they happened, with the [`Dir`] the bytes went and the time. One record
//! is one read or one write, byte for byte; the only change is the hello's auth code, replaced
//! by as many `*` as it has bytes (marked `[MASKED]`) unless `secrets` is set.
//!
//! Files: one per connection, `cyncd-<opened>-<peer>-<bridge>-<part>.txt` in the capture
//! directory (`<opened>` the UTC time the connection opened, `<bridge>` the bridge id once its
//! hello is admitted, `unknown` before — the file is renamed then — and `<part>` 001, 002…),
//! each starting with a `# cyncd capture:` line naming the connection and the part. A file is
//! ended, and the next part started, at the first record past `max_file_bytes` that ends on a
//! packet boundary in every direction (so no packet is cut between two files; a file without
//! such a boundary is cut at twice the size anyway). The directory is created mode 0700 and
//! the files 0600: they hold device ids and states, and with `secrets` the auth codes.
//!
//! Bounds, and what happens when full:
//! - the queue to the writer holds at most [`QUEUE_RECORDS`] records and [`QUEUE_BYTES`] bytes;
//!   a record that does not fit is dropped and counted (`cyncd_capture_dropped_total{reason=
//!   "queue_full"}`), and the connection's next written record is marked `[GAP]`. Recording
//!   never waits: the connection task only copies the bytes and tries to queue them;
//! - the directory holds at most `max_files` files and `max_total_bytes` bytes of `cyncd-*.txt`
//!   files (those of earlier runs included): past either, the oldest file is deleted, whether
//!   its connection ended or not (a live connection then goes on in a new part), and counted
//!   (`cyncd_capture_files_deleted_total`).
//!
//! The writer appends a connection's new records to its file whenever the queue runs empty
//! (open, write, close): no file descriptor is held per connection.
//!
//! Errors: one dedicated thread does all the file work, so a slow or full disk never blocks a
//! connection. A failed create, write, flush or rename is logged once (then once more when
//! writing works again), its records are dropped and counted (`reason="write_error"`), and the
//! connection's next record, at most a second later, starts a new part marked `[GAP]`. Capture never stops `cyncd serve`.

use cync_proto::ConnId;
use cync_proto::capture::{Cursor, Direction, FileHeader, Record};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// Records queued for the writer at most.
pub const QUEUE_RECORDS: usize = 8192;
/// Bytes (of records) queued for the writer at most.
pub const QUEUE_BYTES: usize = 16 << 20;
/// How long after a failed create the next one is tried.
const RETRY: Duration = Duration::from_secs(1);
/// How often the writer forgets the connections that ended.
const SWEEP: Duration = Duration::from_millis(250);
/// Records taken from the queue between two flushes at most (a flush also follows every moment
/// the queue is empty).
const BATCH: usize = 1024;
/// How the files cyncd writes are named: a prefix and a suffix.
const PREFIX: &str = "cyncd-";
const SUFFIX: &str = ".txt";

/// Every `reason` of `cyncd_capture_dropped_total`.
pub const DROP_REASONS: [&str; 3] = ["queue_full", "write_error", "stopped"];

/// Which way a record's bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Read from the device (`DEV→CLOUD`).
    DeviceToCyncd,
    /// Written to the device (`CLOUD→DEV`).
    CyncdToDevice,
    /// Relay mode: written to the cloud (`DEV→CLOUD [UPSTREAM]`).
    CyncdToCloud,
    /// Relay mode: read from the cloud (`CLOUD→DEV [UPSTREAM]`).
    CloudToCyncd,
}

impl Dir {
    fn index(self) -> usize {
        match self {
            Self::DeviceToCyncd => 0,
            Self::CyncdToDevice => 1,
            Self::CyncdToCloud => 2,
            Self::CloudToCyncd => 3,
        }
    }

    /// Who sent the bytes as the format says it, and whether they went upstream.
    fn format(self) -> (Direction, bool) {
        match self {
            Self::DeviceToCyncd => (Direction::Device, false),
            Self::CyncdToDevice => (Direction::Server, false),
            Self::CyncdToCloud => (Direction::Device, true),
            Self::CloudToCyncd => (Direction::Server, true),
        }
    }

    /// Whether the bytes are a device's packets (which carry its hello).
    fn carries_hello(self) -> bool {
        matches!(self, Self::DeviceToCyncd | Self::CyncdToCloud)
    }
}

/// The capture metrics.
#[derive(Debug, Clone, Default)]
pub struct CaptureMetrics {
    /// `cyncd_capture_records_total`: records written.
    pub records: Counter,
    /// `cyncd_capture_bytes_total`: bytes written to capture files.
    pub bytes: Counter,
    /// `cyncd_capture_files_total`: capture files created.
    pub files: Counter,
    /// `cyncd_capture_files_deleted_total`: capture files deleted to stay within the bounds.
    pub deleted: Counter,
    /// `cyncd_capture_dropped_total{reason}`: records not written.
    pub dropped: Family<[(&'static str, &'static str); 1], Counter>,
}

impl CaptureMetrics {
    /// Creates the metrics and registers them (whether capture is on or not, so the families
    /// are always there).
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("cyncd_capture");
        r.register("records", "Capture records written", m.records.clone());
        r.register("bytes", "Bytes written to capture files", m.bytes.clone());
        r.register("files", "Capture files created", m.files.clone());
        r.register(
            "files_deleted",
            "Capture files deleted to stay within max_files and max_total_bytes",
            m.deleted.clone(),
        );
        r.register(
            "dropped",
            "Capture records not written, by reason",
            m.dropped.clone(),
        );
        for reason in DROP_REASONS {
            let _ = m.dropped.get_or_create(&[("reason", reason)]);
        }
        m
    }

    fn lost(&self, reason: &'static str) {
        self.dropped.get_or_create(&[("reason", reason)]).inc();
    }
}

/// Where and how much to capture (the `[capture]` section, validated).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The directory.
    pub dir: PathBuf,
    /// Keep hello auth codes.
    pub secrets: bool,
    /// A file is ended past this size, at a packet boundary.
    pub max_file_bytes: u64,
    /// Most bytes of capture files in the directory.
    pub max_total_bytes: u64,
    /// Most capture files in the directory.
    pub max_files: usize,
}

impl Settings {
    /// The settings of a configuration that captures.
    pub fn of(config: &crate::config::CaptureConfig) -> Option<Self> {
        Some(Self {
            dir: config.dir.clone()?,
            secrets: config.secrets,
            max_file_bytes: config.max_file_bytes,
            max_total_bytes: config.max_total_bytes,
            max_files: config.max_files,
        })
    }
}

/// The process's capture: opens a [`Capture`] per connection and owns the writer thread.
#[derive(Clone)]
pub struct Captures {
    hub: Arc<Hub>,
}

impl std::fmt::Debug for Captures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captures")
            .field("dir", &self.hub.dir)
            .field("secrets", &self.hub.secrets)
            .finish_non_exhaustive()
    }
}

struct Hub {
    dir: PathBuf,
    tx: SyncSender<Msg>,
    /// Bytes of the records in the queue (shared with the writer, which holds nothing else of
    /// the hub: once every handle is gone, the queue disconnects and the writer ends).
    queued: Arc<AtomicUsize>,
    secrets: bool,
    next_conn: AtomicU64,
    metrics: CaptureMetrics,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

enum Msg {
    Record(Box<Item>),
    Stop,
}

struct Item {
    conn: Arc<Conn>,
    dir: Dir,
    at: SystemTime,
    bytes: Vec<u8>,
    masked: bool,
    gap: bool,
    /// Every direction of the connection ends on a packet boundary after this record.
    boundary: bool,
}

/// What a connection's [`Capture`] handles share with the writer. The writer forgets the
/// connection once it holds the last reference (every handle dropped, every record written).
struct Conn {
    id: u64,
    peer: SocketAddr,
    opened: SystemTime,
    bridge: OnceLock<ConnId>,
    state: Mutex<ConnState>,
}

#[derive(Default)]
struct ConnState {
    cursors: [Cursor; 4],
    /// A record was dropped since the last one queued.
    lost: bool,
}

/// One connection's capture. Cheap to clone: clones write to the same file, so the device side
/// and the upstream side of a relayed connection share one.
#[derive(Clone)]
pub struct Capture {
    conn: Arc<Conn>,
    hub: Arc<Hub>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("peer", &self.conn.peer)
            .finish_non_exhaustive()
    }
}

impl Captures {
    /// Creates the directory (mode 0700) if needed, takes stock of the capture files already in
    /// it (deleting the oldest beyond the bounds) and starts the writer thread.
    pub fn start(settings: Settings, metrics: CaptureMetrics) -> std::io::Result<Self> {
        let (captures, writer, rx) = Self::prepare(settings, metrics)?;
        captures.spawn(writer, rx)?;
        Ok(captures)
    }

    /// Everything but the writer thread.
    fn prepare(
        settings: Settings,
        metrics: CaptureMetrics,
    ) -> std::io::Result<(Self, Writer, Receiver<Msg>)> {
        create_dir(&settings.dir)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_RECORDS);
        let queued = Arc::new(AtomicUsize::new(0));
        let hub = Arc::new(Hub {
            dir: settings.dir.clone(),
            tx,
            queued: queued.clone(),
            secrets: settings.secrets,
            next_conn: AtomicU64::new(1),
            metrics: metrics.clone(),
            thread: Mutex::new(None),
        });
        let mut writer = Writer::new(settings, metrics, queued);
        writer.take_stock()?;
        Ok((Self { hub }, writer, rx))
    }

    fn spawn(&self, writer: Writer, rx: Receiver<Msg>) -> std::io::Result<()> {
        let handle = std::thread::Builder::new()
            .name("cyncd-capture".into())
            .spawn(move || writer.run(&rx))?;
        *lock(&self.hub.thread) = Some(handle);
        Ok(())
    }

    /// A capture for a new connection from `peer`; its file is created with its first record.
    pub fn open(&self, peer: SocketAddr) -> Capture {
        Capture {
            conn: Arc::new(Conn {
                id: self.hub.next_conn.fetch_add(1, Ordering::Relaxed),
                peer,
                opened: SystemTime::now(),
                bridge: OnceLock::new(),
                state: Mutex::new(ConnState::default()),
            }),
            hub: self.hub.clone(),
        }
    }

    /// The capture directory.
    pub fn dir(&self) -> &Path {
        &self.hub.dir
    }

    /// Whether hello auth codes are kept.
    pub fn secrets(&self) -> bool {
        self.hub.secrets
    }

    /// Writes every record queued so far, closes the files and stops the writer thread; blocks
    /// until it has (call it from a blocking context). Records made afterwards are dropped and
    /// counted (`reason="stopped"`).
    pub fn close(&self) {
        let Some(handle) = lock(&self.hub.thread).take() else {
            return;
        };
        // Behind every record already queued; waits only while the writer works.
        let _ = self.hub.tx.send(Msg::Stop);
        let _ = handle.join();
    }
}

impl Capture {
    /// Records `bytes` that went `dir` at `at` (one read or one write). Never waits: when the
    /// writer's queue is full the record is dropped and counted.
    pub fn record(&self, dir: Dir, at: SystemTime, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.record_vec(dir, at, bytes.to_vec());
        }
    }

    /// As [`Capture::record`], taking the bytes (no copy).
    pub fn record_vec(&self, dir: Dir, at: SystemTime, mut bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let hub = &self.hub;
        let mut state = lock(&self.conn.state);
        let mask = dir.carries_hello() && !hub.secrets;
        let masked = state
            .cursors
            .get_mut(dir.index())
            .is_some_and(|c| c.advance(&mut bytes, mask));
        let boundary = state.cursors.iter().all(Cursor::at_boundary);
        let len = bytes.len();
        if hub.queued.fetch_add(len, Ordering::Relaxed) + len > QUEUE_BYTES {
            hub.queued.fetch_sub(len, Ordering::Relaxed);
            hub.metrics.lost("queue_full");
            state.lost = true;
            return;
        }
        let item = Item {
            conn: self.conn.clone(),
            dir,
            at,
            bytes,
            masked,
            gap: state.lost,
            boundary,
        };
        match hub.tx.try_send(Msg::Record(Box::new(item))) {
            Ok(()) => state.lost = false,
            Err(e) => {
                hub.queued.fetch_sub(len, Ordering::Relaxed);
                state.lost = true;
                hub.metrics.lost(match e {
                    TrySendError::Full(_) => "queue_full",
                    TrySendError::Disconnected(_) => "stopped",
                });
            }
        }
    }

    /// The connection's bridge id, once its hello is admitted: the file is renamed to carry it.
    pub fn bridge(&self, id: ConnId) {
        let _ = self.conn.bridge.set(id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn create_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir)?.permissions().mode();
            if mode & 0o077 != 0 {
                warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o777), "the capture directory can be read by other users; capture files are created 0600, but consider chmod 700");
            }
        }
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// A capture file in the directory, oldest first in [`Writer::files`].
struct Kept {
    path: PathBuf,
    size: u64,
}

/// A connection the writer has seen.
struct Open {
    conn: Arc<Conn>,
    /// `<opened>-<peer>`, computed once.
    key: String,
    /// The part the next file gets.
    part: u32,
    file: Option<Current>,
    /// The last record written ended on a packet boundary in every direction.
    at_boundary: bool,
    /// Records were lost since the last one written.
    gap: bool,
}

/// The file a connection writes to now. It is not kept open: its records collect in
/// `pending` and are appended (open, write, close) at every flush, so capture holds no file
/// descriptor per connection.
struct Current {
    /// Its key in [`Writer::files`].
    seq: u64,
    path: PathBuf,
    /// Its size with `pending` written.
    size: u64,
    named_bridge: bool,
    pending: String,
    /// Records in `pending`.
    pending_records: u64,
}

/// Pending bytes of one file that make the writer append them at once.
const PENDING: usize = 64 << 10;

struct Writer {
    settings: Settings,
    metrics: CaptureMetrics,
    queued: Arc<AtomicUsize>,
    conns: HashMap<u64, Open>,
    files: BTreeMap<u64, Kept>,
    next_file: u64,
    total: u64,
    /// A failure was logged and nothing has worked since.
    failing: bool,
    /// No file is created before this time, after a failure.
    retry_at: Option<SystemTime>,
}

impl Writer {
    fn new(settings: Settings, metrics: CaptureMetrics, queued: Arc<AtomicUsize>) -> Self {
        Self {
            settings,
            metrics,
            queued,
            conns: HashMap::new(),
            files: BTreeMap::new(),
            next_file: 0,
            total: 0,
            failing: false,
            retry_at: None,
        }
    }

    /// The capture files of earlier runs count towards the bounds, oldest (by name: they start
    /// with their time) first.
    fn take_stock(&mut self) -> std::io::Result<()> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.settings.dir)? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with(PREFIX) && name.ends_with(SUFFIX)) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_file() {
                found.push((name, entry.path(), meta.len()));
            }
        }
        found.sort();
        for (_, path, size) in found {
            self.keep(path, size);
        }
        self.enforce_bounds();
        Ok(())
    }

    /// Counts a file towards the bounds.
    fn keep(&mut self, path: PathBuf, size: u64) {
        self.files.insert(self.next_file, Kept { path, size });
        self.next_file += 1;
        self.total += size;
    }

    fn run(mut self, rx: &Receiver<Msg>) {
        let mut last_sweep = SystemTime::now();
        loop {
            match rx.recv_timeout(SWEEP) {
                Ok(msg) => {
                    let mut next = Some(msg);
                    let mut n = 0;
                    while let Some(msg) = next.take() {
                        match msg {
                            Msg::Record(item) => self.write(*item),
                            Msg::Stop => {
                                self.finish();
                                return;
                            }
                        }
                        n += 1;
                        if n < BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    self.flush_all();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.finish();
                    return;
                }
            }
            let now = SystemTime::now();
            if now.duration_since(last_sweep).unwrap_or(SWEEP) >= SWEEP {
                last_sweep = now;
                self.sweep();
            }
        }
    }

    /// Forgets the connections that ended (no handle left, every record written).
    fn sweep(&mut self) {
        let ended: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, open)| Arc::strong_count(&open.conn) == 1)
            .map(|(id, _)| *id)
            .collect();
        for id in ended {
            self.flush(id);
            self.conns.remove(&id);
        }
    }

    fn finish(&mut self) {
        self.flush_all();
        self.conns.clear();
    }

    fn flush_all(&mut self) {
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, o)| o.file.as_ref().is_some_and(|f| !f.pending.is_empty()))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.flush(id);
        }
    }

    /// Appends a connection's pending records to its file. On failure they are dropped and
    /// counted, and the connection goes on in a new part.
    fn flush(&mut self, id: u64) {
        let Some(open) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(file) = open.file.as_mut().filter(|f| !f.pending.is_empty()) else {
            return;
        };
        let appended = std::fs::OpenOptions::new()
            .append(true)
            .open(&file.path)
            .and_then(|mut f| f.write_all(file.pending.as_bytes()));
        match appended {
            Ok(()) => {
                self.metrics.records.inc_by(file.pending_records);
                self.metrics.bytes.inc_by(file.pending.len() as u64);
                file.pending.clear();
                file.pending_records = 0;
                self.recovered();
            }
            Err(e) => {
                let lost = file.pending_records;
                let path = file.path.clone();
                open.file = None;
                open.part += 1;
                open.gap = true;
                self.metrics
                    .dropped
                    .get_or_create(&[("reason", "write_error")])
                    .inc_by(lost);
                self.failed("writing", &path, &e);
            }
        }
    }

    fn recovered(&mut self) {
        if self.failing {
            self.failing = false;
            self.retry_at = None;
            info!(dir = %self.settings.dir.display(), "capture: writing again");
        }
    }

    fn write(&mut self, item: Item) {
        self.queued.fetch_sub(item.bytes.len(), Ordering::Relaxed);
        let id = item.conn.id;
        let open = self.conns.entry(id).or_insert_with(|| Open {
            key: connection_key(&item.conn),
            conn: item.conn.clone(),
            part: 1,
            file: None,
            at_boundary: true,
            gap: false,
        });
        let (dir, upstream) = item.dir.format();
        let mut record = Record::new(timestamp(item.at), dir, item.bytes);
        record.upstream = upstream;
        record.masked = item.masked;
        record.gap = item.gap || open.gap;
        let mut text = String::new();
        record.write_to(&mut text);
        // A full file ends before this record when the last one ended on a packet boundary
        // (or at twice the size whatever the boundary).
        let max = self.settings.max_file_bytes;
        let full = open
            .file
            .as_ref()
            .is_some_and(|f| (f.size >= max && open.at_boundary) || f.size >= max * 2);
        if full {
            self.flush(id);
            if let Some(open) = self.conns.get_mut(&id) {
                if open.file.take().is_some() {
                    open.part += 1;
                }
            }
        }
        if !self.ensure_file(id) {
            self.metrics.lost("write_error");
            return;
        }
        let Some(open) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(file) = open.file.as_mut() else {
            return;
        };
        let mut rename_failed = None;
        if !file.named_bridge {
            if let Some(bridge) = open.conn.bridge.get() {
                file.named_bridge = true;
                let to = self
                    .settings
                    .dir
                    .join(file_name(&open.key, Some(*bridge), open.part));
                match std::fs::rename(&file.path, &to) {
                    Ok(()) => {
                        file.path.clone_from(&to);
                        if let Some(kept) = self.files.get_mut(&file.seq) {
                            kept.path = to;
                        }
                    }
                    Err(e) => rename_failed = Some((file.path.clone(), e)),
                }
            }
        }
        let n = text.len() as u64;
        file.pending.push_str(&text);
        file.pending_records += 1;
        file.size += n;
        let flush_now = file.pending.len() >= PENDING;
        if let Some(kept) = self.files.get_mut(&file.seq) {
            kept.size += n;
        }
        open.at_boundary = item.boundary;
        open.gap = false;
        self.total += n;
        if let Some((path, e)) = rename_failed {
            self.failed("renaming", &path, &e);
        }
        if flush_now {
            self.flush(id);
        }
        self.enforce_bounds();
    }

    /// Makes sure the connection has a file, creating its next part; false when it cannot.
    fn ensure_file(&mut self, id: u64) -> bool {
        let Some(open) = self.conns.get_mut(&id) else {
            return false;
        };
        if open.file.is_some() {
            return true;
        }
        if self.retry_at.is_some_and(|t| SystemTime::now() < t) {
            open.gap = true;
            return false;
        }
        let bridge = open.conn.bridge.get().copied();
        let name = file_name(&open.key, bridge, open.part);
        let header = FileHeader {
            connection: open.key.clone(),
            peer: open.conn.peer.to_string(),
            part: open.part,
        }
        .line();
        match create(&self.settings.dir, &name, &header) {
            Ok(path) => {
                let size = header.len() as u64;
                let seq = self.next_file;
                self.next_file += 1;
                self.files.insert(
                    seq,
                    Kept {
                        path: path.clone(),
                        size,
                    },
                );
                self.total += size;
                self.metrics.files.inc();
                self.metrics.bytes.inc_by(size);
                open.file = Some(Current {
                    seq,
                    path,
                    size,
                    named_bridge: bridge.is_some(),
                    pending: String::new(),
                    pending_records: 0,
                });
                true
            }
            Err(e) => {
                open.gap = true;
                self.retry_at = Some(SystemTime::now() + RETRY);
                let path = self.settings.dir.join(&name);
                self.failed("creating", &path, &e);
                false
            }
        }
    }

    /// Deletes the oldest files while the directory is over a bound (never the last one).
    fn enforce_bounds(&mut self) {
        while (self.total > self.settings.max_total_bytes
            || self.files.len() > self.settings.max_files)
            && self.files.len() > 1
        {
            let Some((seq, kept)) = self.files.pop_first() else {
                return;
            };
            self.total = self.total.saturating_sub(kept.size);
            // A live connection's current file: written out, then it goes on in a new part.
            let live = self
                .conns
                .iter()
                .find(|(_, o)| o.file.as_ref().is_some_and(|f| f.seq == seq))
                .map(|(id, _)| *id);
            if let Some(id) = live {
                self.flush(id);
                if let Some(open) = self.conns.get_mut(&id) {
                    if open.file.take().is_some() {
                        open.part += 1;
                    }
                }
            }
            match std::fs::remove_file(&kept.path) {
                Ok(()) => {
                    self.metrics.deleted.inc();
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => self.failed("deleting", &kept.path, &e),
            }
        }
    }

    /// Logs a failure once, until writing works again.
    fn failed(&mut self, what: &str, path: &Path, e: &std::io::Error) {
        if !self.failing {
            self.failing = true;
            warn!(file = %path.display(), error = %e, "capture: {what} a capture file failed; its records are dropped (cyncd_capture_dropped_total) until writing works again, tried again at most every second");
        }
    }
}

/// Creates a capture file (mode 0600) that did not exist, with its header line.
fn create(dir: &Path, name: &str, header: &str) -> std::io::Result<PathBuf> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut path = dir.join(name);
    let mut n = 1;
    let mut file = loop {
        match options.open(&path) {
            Ok(file) => break file,
            // A name taken (a clock set back): another one beside it.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => {
                n += 1;
                let stem = name.strip_suffix(SUFFIX).unwrap_or(name);
                path = dir.join(format!("{stem}-{n}{SUFFIX}"));
            }
            Err(e) => return Err(e),
        }
    };
    file.write_all(header.as_bytes())?;
    Ok(path)
}

/// `<opened>-<peer>`: the UTC time the connection opened and its address, in characters safe
/// in a file name.
fn connection_key(conn: &Conn) -> String {
    let opened = chrono::DateTime::<chrono::Utc>::from(conn.opened)
        .format("%Y%m%dT%H%M%S%.6fZ")
        .to_string();
    let peer: String = format!("{}_{}", conn.peer.ip(), conn.peer.port())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{opened}-{peer}")
}

fn file_name(key: &str, bridge: Option<ConnId>, part: u32) -> String {
    let bridge = bridge.map_or_else(|| "unknown".to_string(), |b| b.to_string());
    format!("{PREFIX}{key}-{bridge}-{part:03}{SUFFIX}")
}

/// The format's timestamps: UTC, ISO 8601 with microseconds, no zone letter.
fn timestamp(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at)
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, max_file: u64, max_total: u64, max_files: usize) -> Settings {
        Settings {
            dir: dir.to_path_buf(),
            secrets: false,
            max_file_bytes: max_file,
            max_total_bytes: max_total,
            max_files,
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cyncd-capture-unit-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        out.sort();
        out
    }

    const HEARTBEAT: [u8; 5] = [0xd3, 0, 0, 0, 0];

    #[test]
    fn a_full_directory_loses_its_oldest_files_first() {
        let dir = temp("bounds");
        std::fs::create_dir_all(&dir).unwrap();
        // Two files of an earlier run, and one that is not a capture.
        std::fs::write(dir.join("cyncd-20200101T000000.000000Z-a.txt"), [b'x'; 600]).unwrap();
        std::fs::write(dir.join("cyncd-20200101T000001.000000Z-b.txt"), [b'x'; 600]).unwrap();
        std::fs::write(dir.join("notes.txt"), [b'x'; 5000]).unwrap();
        let captures =
            Captures::start(settings(&dir, 1024, 2000, 3), CaptureMetrics::default()).unwrap();
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let capture = captures.open(peer);
        capture.bridge(ConnId([1, 2, 3, 4]));
        for _ in 0..200 {
            capture.record(Dir::DeviceToCyncd, SystemTime::now(), &HEARTBEAT);
        }
        drop(capture);
        captures.close();
        let left = files(&dir);
        let names: Vec<String> = left
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        // The earlier run's files went first; the capture's newest parts stay within bounds.
        assert!(names.contains(&"notes.txt".to_string()), "{names:?}");
        assert!(
            !names.iter().any(|n| n.starts_with("cyncd-2020")),
            "{names:?}"
        );
        let ours: Vec<&PathBuf> = left
            .iter()
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(PREFIX))
            .collect();
        assert!(!ours.is_empty() && ours.len() <= 3, "{names:?}");
        let total: u64 = ours
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(total <= 2000, "{total}");
        assert!(
            names
                .iter()
                .all(|n| n == "notes.txt" || n.contains("-01020304-")),
            "{names:?}"
        );
        // The last part holds the last heartbeat.
        let last = std::fs::read_to_string(ours.last().unwrap()).unwrap();
        assert!(last.ends_with("d3 00 00 00 00\n\n"), "{last}");
        assert!(captures.hub.metrics.deleted.get() >= 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_directory_drops_and_counts_and_recovers() {
        let dir = temp("unwritable");
        let captures = Captures::start(
            settings(&dir, 1 << 20, 1 << 30, 100),
            CaptureMetrics::default(),
        )
        .unwrap();
        // The directory disappears under the writer: every create fails.
        std::fs::remove_dir_all(&dir).unwrap();
        let capture = captures.open("127.0.0.1:4001".parse().unwrap());
        capture.record(Dir::DeviceToCyncd, SystemTime::now(), &HEARTBEAT);
        drop(capture);
        captures.close();
        let dropped = captures
            .hub
            .metrics
            .dropped
            .get_or_create(&[("reason", "write_error")])
            .get();
        assert_eq!(dropped, 1);
        // After close, records are dropped as stopped, never a panic.
        captures.open("127.0.0.1:4002".parse().unwrap()).record(
            Dir::DeviceToCyncd,
            SystemTime::now(),
            &HEARTBEAT,
        );
        let stopped = captures
            .hub
            .metrics
            .dropped
            .get_or_create(&[("reason", "stopped")])
            .get();
        assert_eq!(stopped, 1);
    }

    #[test]
    fn a_full_queue_drops_never_waits_and_the_next_record_says_gap() {
        let dir = temp("full");
        let metrics = CaptureMetrics::default();
        let (captures, writer, rx) =
            Captures::prepare(settings(&dir, 1 << 20, 1 << 30, 100), metrics.clone()).unwrap();
        // No writer yet: the queue fills, and what does not fit is dropped at once.
        let capture = captures.open("127.0.0.1:4003".parse().unwrap());
        for _ in 0..QUEUE_RECORDS + 10 {
            capture.record(Dir::DeviceToCyncd, SystemTime::now(), &HEARTBEAT);
        }
        let queue_full = || {
            metrics
                .dropped
                .get_or_create(&[("reason", "queue_full")])
                .get()
        };
        assert_eq!(queue_full(), 10);
        captures.spawn(writer, rx).unwrap();
        // Once the writer took the queue, the next record goes in, marked.
        let deadline = SystemTime::now() + Duration::from_secs(10);
        while metrics.records.get() < QUEUE_RECORDS as u64 {
            assert!(SystemTime::now() < deadline, "the writer did not drain");
            std::thread::yield_now();
        }
        capture.record(Dir::CyncdToDevice, SystemTime::now(), &[0xd8, 0, 0, 0, 0]);
        drop(capture);
        captures.close();
        assert_eq!(queue_full(), 10);
        assert_eq!(metrics.records.get(), QUEUE_RECORDS as u64 + 1);
        let text = std::fs::read_to_string(&files(&dir)[0]).unwrap();
        let records = cync_proto::capture::parse(&text);
        assert_eq!(records.len(), QUEUE_RECORDS + 1);
        let last = records.last().unwrap().as_ref().unwrap();
        assert!(last.gap && last.dir == Direction::Server, "{last:?}");
        assert!(
            records
                .iter()
                .rev()
                .skip(1)
                .all(|r| !r.as_ref().unwrap().gap)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
