//! Log set-up and correlation ids.
//!
//! Every packet event carries a `corr_id`: 12 hex digits of Unix milliseconds then 8 of a
//! process-wide counter, so ids sort by time and never repeat within a process.

use crate::config::LogFormat;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing_subscriber::EnvFilter;

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

#[cfg(test)]
mod tests {
    use super::*;

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
