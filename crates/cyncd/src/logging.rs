//! Log set-up, correlation ids, and rate limits on log lines a peer can cause.
//!
//! Every packet event carries a `corr_id`: 12 hex digits of Unix milliseconds then 8 of a
//! process-wide counter, so ids sort by time and never repeat within a process.
//!
//! # Rate limits
//!
//! A device (or anyone on the LAN) decides how often cyncd has something to complain about, so
//! every line a peer's input causes goes through [`LogLimits`]: a token bucket per connection
//! ([`PeerLog`]: [`PEER_BURST`] lines, then one per `1 / PEER_PER_SEC` s) and one over the whole
//! process ([`GLOBAL_BURST`], then [`GLOBAL_PER_SEC`] a second). Lines over a limit are dropped
//! and counted; the next line that passes is preceded by one `suppressed` line with the count
//! (also written when a connection ends). Connection lifecycle lines (hello, disconnect) have a
//! process-wide bucket of their own ([`LIFECYCLE_BURST`], [`LIFECYCLE_PER_SEC`]), so a loop of
//! reconnects cannot fill the disk either. The bounds keep the log bytes written per byte a
//! hostile peer sends far below 0.1.

use crate::config::LogFormat;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::time::Instant;
use tracing_subscriber::EnvFilter;

/// Peer-caused warnings one connection may write at once.
pub const PEER_BURST: f64 = 5.0;
/// … then this many a second (one per 10 s).
pub const PEER_PER_SEC: f64 = 0.1;
/// Peer-caused warnings all connections together may write at once.
pub const GLOBAL_BURST: f64 = 50.0;
/// … then this many a second.
pub const GLOBAL_PER_SEC: f64 = 5.0;
/// Lifecycle lines (hello, disconnect, firmware, mesh) all connections together may write at
/// once: a large home reconnecting after a restart (a few hundred bridges, three or four lines
/// each) is logged in full; a reconnect loop is not.
pub const LIFECYCLE_BURST: f64 = 1_000.0;
/// … then this many a second.
pub const LIFECYCLE_PER_SEC: f64 = 20.0;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A new time-sortable correlation id.
pub fn corr_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:012x}{n:08x}", ms & 0xffff_ffff_ffff)
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`.
pub fn init(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))
}

/// Hex of `bytes` with a 0x23 hello's auth code replaced by `*` pairs, for logs.
pub fn redacted_hex(bytes: &[u8]) -> String {
    let hello = matches!(bytes.first(), Some(0x23 | 0x13));
    let code_len = bytes
        .get(10..12)
        .and_then(|l| <[u8; 2]>::try_from(l).ok())
        .map_or(0, |l| usize::from(u16::from_be_bytes(l)));
    let mut out = String::with_capacity(bytes.len() * 2);
    for (i, b) in bytes.iter().enumerate() {
        if hello && i >= 12 && i < 12 + code_len {
            out.push_str("**");
        } else {
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

/// A token bucket: `burst` at once, refilled at `per_sec`, on tokio's clock.
#[derive(Debug, Clone)]
pub struct Bucket {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    /// A full bucket.
    pub fn new(burst: f64, per_sec: f64) -> Self {
        Self {
            burst,
            per_sec,
            tokens: burst,
            last: None,
        }
    }

    /// Takes one token when there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.per_sec;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The process-wide log limits (see the module documentation). One per process, shared by
/// every connection; the lock is taken only when a line is about to be written.
#[derive(Debug)]
pub struct LogLimits {
    peer: Mutex<Bucket>,
    lifecycle: Mutex<Bucket>,
    /// Peer-caused lines dropped and not yet reported.
    suppressed: AtomicU64,
    /// Lifecycle lines dropped and not yet reported.
    lifecycle_suppressed: AtomicU64,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            peer: Mutex::new(Bucket::new(GLOBAL_BURST, GLOBAL_PER_SEC)),
            lifecycle: Mutex::new(Bucket::new(LIFECYCLE_BURST, LIFECYCLE_PER_SEC)),
            suppressed: AtomicU64::new(0),
            lifecycle_suppressed: AtomicU64::new(0),
        }
    }
}

fn take(bucket: &Mutex<Bucket>) -> bool {
    bucket
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take(Instant::now())
}

impl LogLimits {
    /// Whether a connection lifecycle line (hello, disconnect) may be written now; writes the
    /// `suppressed` line first when some were dropped.
    pub fn lifecycle(&self) -> bool {
        if !take(&self.lifecycle) {
            self.lifecycle_suppressed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let n = self.lifecycle_suppressed.swap(0, Ordering::Relaxed);
        if n > 0 {
            tracing::info!(
                suppressed = n,
                "connection lines suppressed by the log rate limit"
            );
        }
        true
    }

    /// Writes the `suppressed` line for what is still unreported, when the global bucket allows
    /// one more line (at the end of a connection, so the count of a flood that stopped is not
    /// left unsaid).
    pub fn report_pending(&self) {
        if self.suppressed() > 0 && take(&self.peer) {
            self.report();
        }
    }

    /// Peer-caused lines dropped so far and not yet reported.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }

    /// Passes the global bucket; reports what was suppressed before when it does.
    fn peer(&self) -> bool {
        if !take(&self.peer) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.report();
        true
    }

    fn report(&self) {
        let n = self.suppressed.swap(0, Ordering::Relaxed);
        if n > 0 {
            tracing::warn!(
                suppressed = n,
                "peer-caused warnings suppressed by the log rate limit"
            );
        }
    }
}

/// One connection's limit on the warnings its peer causes.
#[derive(Debug, Clone)]
pub struct PeerLog {
    bucket: Bucket,
}

impl Default for PeerLog {
    fn default() -> Self {
        Self {
            bucket: Bucket::new(PEER_BURST, PEER_PER_SEC),
        }
    }
}

impl PeerLog {
    /// Whether a warning this peer caused may be written now (its bucket and the global one);
    /// a dropped one is counted for the next `suppressed` line.
    pub fn allow(&mut self, limits: &LogLimits) -> bool {
        if !self.bucket.take(Instant::now()) {
            limits.suppressed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        limits.peer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn buckets_allow_a_burst_then_their_rate() {
        let mut b = Bucket::new(3.0, 2.0);
        let t = Instant::now();
        assert_eq!((0..5).filter(|_| b.take(t)).count(), 3);
        // Half a second refills one token at 2 a second.
        assert!(b.take(t + Duration::from_millis(500)));
        assert!(!b.take(t + Duration::from_millis(500)));
        // Never more than the burst, however long the pause.
        let later = t + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flooding_peer_is_limited_and_its_drops_are_counted() {
        let limits = LogLimits::default();
        let mut flood = PeerLog::default();
        let written = (0..1000).filter(|_| flood.allow(&limits)).count();
        assert_eq!(written, PEER_BURST as usize);
        assert_eq!(limits.suppressed(), 1000 - PEER_BURST as u64);
        // Another connection still gets its lines through, and reports the drops first.
        let mut quiet = PeerLog::default();
        assert!(quiet.allow(&limits));
        assert_eq!(limits.suppressed(), 0);
        // Many connections at once: the global bucket caps them together.
        let mut total = 0;
        for _ in 0..1000 {
            let mut p = PeerLog::default();
            total += usize::from(p.allow(&limits));
        }
        assert!(total < GLOBAL_BURST as usize, "{total}");
        tokio::time::advance(Duration::from_secs(10)).await;
        limits.report_pending();
        assert_eq!(limits.suppressed(), 0, "reported at the end");
    }

    #[test]
    fn corr_ids_sort_by_time_and_are_unique() {
        let a = corr_id();
        let b = corr_id();
        assert_eq!(a.len(), 20);
        assert!(a < b);
    }

    #[test]
    fn hello_auth_code_is_redacted() {
        let hello: Vec<u8> = [0x23, 0, 0, 0, 0x1a, 3, 0x32, 0x5d, 0x53, 0x17, 0, 16]
            .into_iter()
            .chain(*b"1e07d8cdf4f53c50")
            .chain([0, 0, 0x3c])
            .collect();
        let text = redacted_hex(&hello);
        assert!(!text.contains("3165"), "{text}");
        assert!(text.starts_with("230000001a03325d53170010****"));
        assert!(text.ends_with("00003c"));
        assert_eq!(redacted_hex(&[0xd3, 0, 0, 0, 0]), "d300000000");
    }
}
