//! A bounded, time-limited set of recently seen packets, for dropping byte-identical repeats.
//!
//! Bound: `capacity` entries; when full the oldest entry is evicted (a repeat older than that
//! is treated as new, which for absolute-state packets is harmless). Entries also expire after
//! `ttl`. [`Dedup::first_seen`] checks and inserts in one step, so there is no window between
//! the check and the insert.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Recently seen packet fingerprints.
#[derive(Debug, Clone)]
pub struct Dedup {
    seen: HashMap<u64, Duration>,
    order: VecDeque<(u64, Duration)>,
    capacity: usize,
    ttl: Duration,
}

impl Dedup {
    /// A set of at most `capacity` entries, each kept for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            seen: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// Records `bytes` at `now`; returns false if the same bytes were seen within the TTL.
    pub fn first_seen(&mut self, bytes: &[u8], now: Duration) -> bool {
        self.expire(now);
        let key = fingerprint(bytes);
        match self.seen.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(now);
                self.order.push_back((key, now));
                if self.order.len() > self.capacity {
                    if let Some((old, _)) = self.order.pop_front() {
                        self.seen.remove(&old);
                    }
                }
                true
            }
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn expire(&mut self, now: Duration) {
        while let Some(&(key, at)) = self.order.front() {
            if now < at + self.ttl {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&key);
        }
    }
}

/// 64-bit FNV-1a.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_window_are_caught() {
        let mut d = Dedup::new(4, Duration::from_secs(5));
        assert!(d.first_seen(b"a", Duration::ZERO));
        assert!(!d.first_seen(b"a", Duration::from_secs(1)));
        assert!(d.first_seen(b"b", Duration::from_secs(1)));
        // Expired: seen again as new.
        assert!(d.first_seen(b"a", Duration::from_secs(5)));
    }

    #[test]
    fn the_bound_evicts_the_oldest() {
        let mut d = Dedup::new(2, Duration::from_secs(60));
        for k in [b"1", b"2", b"3"] {
            assert!(d.first_seen(k, Duration::ZERO));
        }
        assert_eq!(d.len(), 2);
        assert!(d.first_seen(b"1", Duration::ZERO), "evicted, so new again");
        assert!(!d.first_seen(b"3", Duration::ZERO));
    }
}
