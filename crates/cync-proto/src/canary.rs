//! Canary routing between two command transports and the SLO monitor that judges it, sans I/O:
//! the caller passes the time in and acts on the decisions.
//!
//! **Routing** is per connection, decided when a hello reveals the connection id:
//! `stable_hash(conn_id) mod 10000 < percent × 100` puts the connection in the canary cohort
//! (the `reliable` transport); the rest are the control cohort (`legacy`). The decision is
//! made again for every new connection, so lowering the percentage moves devices back as they
//! reconnect (or at once, when the caller drains). A global kill switch is checked first.
//!
//! **SLOs** are computed per cohort from counters kept in time buckets (a ring as long as the
//! longest window, so memory is fixed): command success ratio, the share of commands slower
//! than the latency target, decode errors per packet, and queue-full outcomes per command.
//! A [`BurnRule`] fires when the error budget burns at least `factor` times faster than
//! sustainable over *both* its long and its short window, each with at least `min_events`
//! events — and only when the canary is worse than the control cohort over the long window.
//! A firing rule is a [`Breach`]: the caller rolls back (percentage to 0, latched until a person
//! re-enables it).

use crate::ConnId;
use std::collections::VecDeque;
use std::time::Duration;

/// FNV-1a (32-bit) of the connection id: stable across builds, platforms and restarts, so a
/// device keeps its cohort for a given percentage.
pub fn stable_hash(conn: ConnId) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in conn.0 {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Which command transport owns a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// One write, a 2 s drain timeout, no retry, no dedup, all-zero message ids; the outcome
    /// is "0x7B seen" or a timeout (the behaviour of the controllers cyncd replaces).
    Legacy,
    /// The reliable command service.
    Reliable,
}

impl Transport {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::Reliable => "reliable",
        }
    }
}

/// The rollout mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Every connection legacy.
    Legacy,
    /// Every connection legacy, with the reliable transport fed the same traffic passively.
    Shadow,
    /// `percent` of connections reliable, the rest legacy.
    Canary,
    /// Every connection reliable.
    Reliable,
}

impl Mode {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::Shadow => "shadow",
            Self::Canary => "canary",
            Self::Reliable => "reliable",
        }
    }

    /// Parses a name.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Legacy, Self::Shadow, Self::Canary, Self::Reliable]
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }
}

/// The routing policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Mode.
    pub mode: Mode,
    /// Canary share, 0–100 (used in [`Mode::Canary`]); hundredths of a percent count.
    pub percent: f64,
    /// Kill switch: every new connection legacy, whatever the mode.
    pub kill: bool,
}

/// A connection's route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The transport that sends its commands.
    pub transport: Transport,
    /// Whether the reliable transport shadows it (passively).
    pub shadow: bool,
}

impl Policy {
    /// The route of a new connection.
    pub fn route(&self, conn: ConnId) -> Route {
        let legacy = Route {
            transport: Transport::Legacy,
            shadow: false,
        };
        if self.kill {
            return legacy;
        }
        match self.mode {
            Mode::Legacy => legacy,
            Mode::Shadow => Route {
                shadow: true,
                ..legacy
            },
            Mode::Reliable => Route {
                transport: Transport::Reliable,
                shadow: false,
            },
            Mode::Canary => {
                let slot = stable_hash(conn) % 10_000;
                let cut = (self.percent.clamp(0.0, 100.0) * 100.0).round() as u32;
                if slot < cut {
                    Route {
                        transport: Transport::Reliable,
                        shadow: false,
                    }
                } else {
                    legacy
                }
            }
        }
    }
}

/// The cohort a measurement belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cohort {
    /// Connections on the reliable transport in canary mode.
    Canary,
    /// The rest.
    Control,
}

/// The SLOs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slo {
    /// Commands applied (superseded ones do not count).
    Success,
    /// Commands done within the latency target.
    Latency,
    /// Packets that decoded.
    Decode,
    /// Commands not refused by a full queue.
    QueueFull,
}

impl Slo {
    /// Every SLO.
    pub const ALL: [Slo; 4] = [Self::Success, Self::Latency, Self::Decode, Self::QueueFull];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Success => "command_success",
            Self::Latency => "command_latency",
            Self::Decode => "decode_errors",
            Self::QueueFull => "queue_full",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Success => 0,
            Self::Latency => 1,
            Self::Decode => 2,
            Self::QueueFull => 3,
        }
    }
}

/// A multi-window burn-rate rule.
#[derive(Debug, Clone, PartialEq)]
pub struct BurnRule {
    /// Name, for logs.
    pub name: String,
    /// Long window.
    pub long: Duration,
    /// Short window.
    pub short: Duration,
    /// Burn-rate threshold (1 = spending the budget exactly over the SLO period).
    pub factor: f64,
}

/// SLO targets and rules.
#[derive(Debug, Clone, PartialEq)]
pub struct SloConfig {
    /// Target share of applied commands (0.999).
    pub success_target: f64,
    /// The latency limit (1.5 s) …
    pub latency_limit: Duration,
    /// … met by this share of commands (0.99, i.e. p99).
    pub latency_target: f64,
    /// Target share of packets that decode (0.999).
    pub decode_target: f64,
    /// Target share of commands not refused by a full queue (0.99).
    pub queue_target: f64,
    /// The rules.
    pub rules: Vec<BurnRule>,
    /// Events a window needs before it counts.
    pub min_events: u64,
    /// Bucket width.
    pub bucket: Duration,
}

impl Default for SloConfig {
    fn default() -> Self {
        Self {
            success_target: 0.999,
            latency_limit: Duration::from_millis(1500),
            latency_target: 0.99,
            decode_target: 0.999,
            queue_target: 0.99,
            rules: vec![
                BurnRule {
                    name: "fast".into(),
                    long: Duration::from_secs(3600),
                    short: Duration::from_secs(300),
                    factor: 14.4,
                },
                BurnRule {
                    name: "slow".into(),
                    long: Duration::from_secs(6 * 3600),
                    short: Duration::from_secs(1800),
                    factor: 6.0,
                },
            ],
            // Below about 70 events a single failure reads as a 14× burn of a 0.1% budget.
            min_events: 100,
            bucket: Duration::from_secs(10),
        }
    }
}

impl SloConfig {
    /// The target of an SLO.
    pub fn target(&self, slo: Slo) -> f64 {
        match slo {
            Slo::Success => self.success_target,
            Slo::Latency => self.latency_target,
            Slo::Decode => self.decode_target,
            Slo::QueueFull => self.queue_target,
        }
    }

    fn longest(&self) -> Duration {
        self.rules
            .iter()
            .map(|r| r.long.max(r.short))
            .max()
            .unwrap_or(Duration::from_secs(3600))
    }
}

/// Most buckets kept per cohort, whatever the configuration (the bucket widens instead).
pub const MAX_BUCKETS: usize = 8640;

/// Good and total events of each SLO in one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    index: u64,
    good: [u64; 4],
    total: [u64; 4],
}

#[derive(Debug, Default)]
struct Series {
    buckets: VecDeque<Bucket>,
}

impl Series {
    /// The bucket for `index`: the newest one, after adding it when time moved on (a late
    /// sample lands in the newest bucket: the clock only moves forward).
    fn bucket(&mut self, index: u64, keep: usize) -> Option<&mut Bucket> {
        if self.buckets.back().is_none_or(|b| b.index < index) {
            self.buckets.push_back(Bucket {
                index,
                ..Bucket::default()
            });
            while self.buckets.len() > keep {
                self.buckets.pop_front();
            }
        }
        self.buckets.back_mut()
    }

    /// (good, total) of `slo` over the buckets newer than `from`.
    fn sum(&self, slo: Slo, from: u64) -> (u64, u64) {
        let i = slo.index();
        self.buckets
            .iter()
            .rev()
            .take_while(|b| b.index >= from)
            .fold((0, 0), |(g, t), b| {
                (
                    g + b.good.get(i).copied().unwrap_or(0),
                    t + b.total.get(i).copied().unwrap_or(0),
                )
            })
    }
}

/// A command's end, as the SLOs count it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CommandSample {
    /// Applied.
    pub applied: bool,
    /// Superseded by a newer command (not counted for success or latency).
    pub superseded: bool,
    /// Refused by a full queue.
    pub queue_full: bool,
    /// Submit → outcome.
    pub latency: Duration,
}

/// One SLO's numbers for one cohort over one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Good events.
    pub good: u64,
    /// All events.
    pub total: u64,
    /// Error ratio / error budget (1 − target); `None` below `min_events`.
    pub burn: Option<f64>,
}

impl Window {
    /// Error ratio, when there are events.
    pub fn error_ratio(&self) -> Option<f64> {
        (self.total > 0)
            .then(|| (self.total - self.good.min(self.total)) as f64 / self.total as f64)
    }
}

/// A rule broken by the canary.
#[derive(Debug, Clone, PartialEq)]
pub struct Breach {
    /// The SLO.
    pub slo: Slo,
    /// The rule.
    pub rule: String,
    /// The canary over the long window.
    pub long: Window,
    /// The canary over the short window.
    pub short: Window,
    /// The control cohort over the long window.
    pub control: Window,
    /// The rule's factor.
    pub factor: f64,
}

impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |w: &Window| {
            w.error_ratio()
                .map_or("n/a".to_string(), |r| format!("{:.2}%", r * 100.0))
        };
        write!(
            f,
            "{} broke rule {:?}: burn {:.1}× (long) and {:.1}× (short) ≥ {}×; canary errors {} of {} ({}), control {} of {} ({})",
            self.slo.name(),
            self.rule,
            self.long.burn.unwrap_or(0.0),
            self.short.burn.unwrap_or(0.0),
            self.factor,
            self.long.total - self.long.good.min(self.long.total),
            self.long.total,
            pct(&self.long),
            self.control.total - self.control.good.min(self.control.total),
            self.control.total,
            pct(&self.control),
        )
    }
}

/// The SLO monitor: counters per cohort in time buckets, burn-rate evaluation.
#[derive(Debug)]
pub struct SloMonitor {
    config: SloConfig,
    width: Duration,
    keep: usize,
    canary: Series,
    control: Series,
}

impl SloMonitor {
    /// A monitor with no events.
    pub fn new(config: SloConfig) -> Self {
        let longest = config.longest();
        let mut width = config.bucket.max(Duration::from_millis(100));
        while longest.as_secs_f64() / width.as_secs_f64() > MAX_BUCKETS as f64 {
            width *= 2;
        }
        let keep = (longest.as_secs_f64() / width.as_secs_f64()).ceil() as usize + 1;
        Self {
            config,
            width,
            keep,
            canary: Series::default(),
            control: Series::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SloConfig {
        &self.config
    }

    fn index(&self, now: Duration) -> u64 {
        (now.as_nanos() / self.width.as_nanos().max(1)) as u64
    }

    fn series(&mut self, cohort: Cohort) -> &mut Series {
        match cohort {
            Cohort::Canary => &mut self.canary,
            Cohort::Control => &mut self.control,
        }
    }

    fn add(&mut self, cohort: Cohort, now: Duration, slo: Slo, good: u64, total: u64) {
        let (index, keep) = (self.index(now), self.keep);
        let i = slo.index();
        if let Some(bucket) = self.series(cohort).bucket(index, keep) {
            if let (Some(g), Some(t)) = (bucket.good.get_mut(i), bucket.total.get_mut(i)) {
                *g += good;
                *t += total;
            }
        }
    }

    /// Counts a finished command.
    pub fn command(&mut self, cohort: Cohort, now: Duration, sample: CommandSample) {
        self.add(
            cohort,
            now,
            Slo::QueueFull,
            u64::from(!sample.queue_full),
            1,
        );
        if sample.superseded {
            return;
        }
        self.add(cohort, now, Slo::Success, u64::from(sample.applied), 1);
        let fast = sample.latency <= self.config.latency_limit;
        self.add(cohort, now, Slo::Latency, u64::from(fast), 1);
    }

    /// Counts packets received and how many did not decode.
    pub fn packets(&mut self, cohort: Cohort, now: Duration, packets: u64, errors: u64) {
        self.add(
            cohort,
            now,
            Slo::Decode,
            packets.saturating_sub(errors),
            packets,
        );
    }

    /// One SLO of one cohort over the window ending now.
    pub fn window(&self, cohort: Cohort, slo: Slo, now: Duration, span: Duration) -> Window {
        let series = match cohort {
            Cohort::Canary => &self.canary,
            Cohort::Control => &self.control,
        };
        // Whole buckets after the one holding the window's start (all of them early on).
        let from = match now.checked_sub(span) {
            _ if span.is_zero() => self.index(now),
            Some(start) => self.index(start).saturating_add(1),
            None => 0,
        };
        let (good, total) = series.sum(slo, from);
        let budget = 1.0 - self.config.target(slo);
        let burn = (total >= self.config.min_events && total > 0 && budget > 0.0).then(|| {
            let ratio = (total - good.min(total)) as f64 / total as f64;
            ratio / budget
        });
        Window { good, total, burn }
    }

    /// The first rule the canary breaks now, if any.
    pub fn evaluate(&self, now: Duration) -> Option<Breach> {
        for rule in &self.config.rules {
            for slo in Slo::ALL {
                let long = self.window(Cohort::Canary, slo, now, rule.long);
                let short = self.window(Cohort::Canary, slo, now, rule.short);
                let (Some(lb), Some(sb)) = (long.burn, short.burn) else {
                    continue;
                };
                if lb < rule.factor || sb < rule.factor {
                    continue;
                }
                let control = self.window(Cohort::Control, slo, now, rule.long);
                // Worse than control: control has no verdict of its own, or errs less.
                let worse = match (control.burn, control.error_ratio(), long.error_ratio()) {
                    (Some(_), Some(c), Some(k)) => k > c,
                    _ => true,
                };
                if worse {
                    return Some(Breach {
                        slo,
                        rule: rule.name.clone(),
                        long,
                        short,
                        control,
                        factor: rule.factor,
                    });
                }
            }
        }
        None
    }

    /// Compliance (good share) and error budget left (1 = untouched, 0 = spent) of each SLO
    /// for a cohort over the longest window.
    pub fn budgets(&self, cohort: Cohort, now: Duration) -> Vec<(Slo, Window, f64, f64)> {
        let span = self.config.longest();
        Slo::ALL
            .into_iter()
            .map(|slo| {
                let w = self.window(cohort, slo, now, span);
                let compliance = if w.total == 0 {
                    1.0
                } else {
                    w.good as f64 / w.total as f64
                };
                let budget = 1.0 - self.config.target(slo);
                let left = if budget <= 0.0 {
                    0.0
                } else {
                    (1.0 - (1.0 - compliance) / budget).clamp(0.0, 1.0)
                };
                (slo, w, compliance, left)
            })
            .collect()
    }

    /// Buckets held (for bounds checks).
    pub fn buckets(&self) -> usize {
        self.canary.buckets.len() + self.control.buckets.len()
    }

    /// Forgets the canary's history (after a rollback, so a re-enabled canary starts clean).
    pub fn reset_canary(&mut self) {
        self.canary.buckets.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn conn(n: u32) -> ConnId {
        ConnId(n.to_be_bytes())
    }

    #[test]
    fn the_hash_is_stable_and_spreads() {
        assert_eq!(stable_hash(ConnId([0, 0, 0, 0])), 0x4b95_f515);
        let mut slots = [0u32; 10];
        for n in 0..10_000 {
            slots[(stable_hash(conn(0x3000_0000 + n)) % 10_000 / 1000) as usize] += 1;
        }
        for s in slots {
            assert!((800..1200).contains(&s), "{slots:?}");
        }
    }

    #[test]
    fn routing_follows_mode_percent_and_kill_switch() {
        let ids: Vec<ConnId> = (0..10_000).map(|n| conn(0x5100_0000 + n)).collect();
        let share = |p: &Policy| {
            ids.iter()
                .filter(|c| p.route(**c).transport == Transport::Reliable)
                .count()
        };
        let mut p = Policy {
            mode: Mode::Canary,
            percent: 10.0,
            kill: false,
        };
        let ten = share(&p);
        assert!((900..1100).contains(&ten), "{ten}");
        // Lowering the percentage only moves canary connections back, never the reverse.
        let before: Vec<bool> = ids
            .iter()
            .map(|c| p.route(*c).transport == Transport::Reliable)
            .collect();
        p.percent = 5.0;
        for (c, was) in ids.iter().zip(&before) {
            if p.route(*c).transport == Transport::Reliable {
                assert!(was);
            }
        }
        p.percent = 0.0;
        assert_eq!(share(&p), 0);
        p.percent = 100.0;
        assert_eq!(share(&p), 10_000);
        p.kill = true;
        assert_eq!(share(&p), 0);
        p.kill = false;
        p.mode = Mode::Shadow;
        assert_eq!(share(&p), 0);
        assert!(p.route(ids[0]).shadow);
        p.mode = Mode::Reliable;
        assert_eq!(share(&p), 10_000);
        assert_eq!(Mode::from_name("CANARY"), Some(Mode::Canary));
        assert_eq!(Mode::from_name("blue"), None);
    }

    fn sample(applied: bool, ms: u64) -> CommandSample {
        CommandSample {
            applied,
            superseded: false,
            queue_full: false,
            latency: Duration::from_millis(ms),
        }
    }

    #[test]
    fn a_failing_canary_breaks_the_fast_rule_within_its_short_window() {
        let mut m = SloMonitor::new(SloConfig::default());
        let mut now = Duration::from_secs(0);
        let mut fired = None;
        // One command per cohort per second: the canary fails 5% (50× the budget).
        for s in 0..3600u64 {
            now = Duration::from_secs(s);
            m.command(Cohort::Control, now, sample(true, 80));
            m.command(Cohort::Canary, now, sample(s % 20 != 0, 80));
            if let Some(b) = m.evaluate(now) {
                fired = Some((s, b));
                break;
            }
        }
        let (at, breach) = fired.expect("the canary should break the fast rule");
        assert_eq!((breach.slo, breach.rule.as_str()), (Slo::Success, "fast"));
        assert!(at <= 300, "detected after {at} s");
        assert!(breach.to_string().contains("command_success"), "{breach}");
        assert_eq!(breach.control.good, breach.control.total);
        let _ = now;
    }

    #[test]
    fn a_healthy_canary_or_one_no_worse_than_control_never_fires() {
        let mut m = SloMonitor::new(SloConfig::default());
        for s in 0..7200u64 {
            let now = Duration::from_secs(s);
            // Both cohorts fail alike (an outage of the devices, not of the canary).
            let ok = s % 10 != 0;
            m.command(Cohort::Control, now, sample(ok, 80));
            m.command(Cohort::Canary, now, sample(ok, 80));
            m.packets(Cohort::Canary, now, 10, 0);
            assert_eq!(m.evaluate(now), None, "at {s}");
        }
        // Too few events never count, however bad.
        let mut m = SloMonitor::new(SloConfig::default());
        for s in 0..99u64 {
            m.command(Cohort::Canary, Duration::from_secs(s), sample(false, 80));
        }
        assert_eq!(m.evaluate(Duration::from_secs(99)), None);
        m.command(Cohort::Canary, Duration::from_secs(99), sample(false, 80));
        assert!(m.evaluate(Duration::from_secs(99)).is_some());
    }

    #[test]
    fn latency_decode_and_queue_full_slos() {
        let mut m = SloMonitor::new(SloConfig::default());
        let now = Duration::from_secs(100);
        for _ in 0..100 {
            m.command(Cohort::Canary, now, sample(true, 2000));
            m.command(Cohort::Control, now, sample(true, 100));
        }
        assert_eq!(m.evaluate(now).map(|b| b.slo), Some(Slo::Latency));
        let mut m = SloMonitor::new(SloConfig::default());
        m.packets(Cohort::Canary, now, 1000, 50);
        m.packets(Cohort::Control, now, 1000, 0);
        assert_eq!(m.evaluate(now).map(|b| b.slo), Some(Slo::Decode));
        let mut m = SloMonitor::new(SloConfig::default());
        for i in 0..100 {
            m.command(
                Cohort::Canary,
                now,
                CommandSample {
                    applied: i % 2 == 0,
                    superseded: false,
                    queue_full: i % 2 == 1,
                    latency: Duration::ZERO,
                },
            );
        }
        let b = m.evaluate(now).unwrap();
        assert_eq!(b.slo, Slo::Success, "success is checked first");
        let budgets = m.budgets(Cohort::Canary, now);
        let queue = budgets.iter().find(|b| b.0 == Slo::QueueFull).unwrap();
        assert!((queue.2 - 0.5).abs() < 1e-9 && queue.3 == 0.0, "{queue:?}");
        // Superseded commands count for neither success nor latency.
        let mut m = SloMonitor::new(SloConfig::default());
        for _ in 0..100 {
            m.command(
                Cohort::Canary,
                now,
                CommandSample {
                    applied: false,
                    superseded: true,
                    queue_full: false,
                    latency: Duration::from_secs(9),
                },
            );
        }
        assert_eq!(m.evaluate(now), None);
    }

    #[test]
    fn old_events_leave_the_windows_and_memory_is_bounded() {
        let mut m = SloMonitor::new(SloConfig::default());
        for _ in 0..100 {
            m.command(Cohort::Canary, Duration::from_secs(10), sample(false, 80));
        }
        assert!(m.evaluate(Duration::from_secs(10)).is_some());
        // Seven hours later nothing is in any window.
        let later = Duration::from_secs(7 * 3600);
        assert_eq!(m.evaluate(later), None);
        for s in 0..(10 * 3600u64) {
            m.command(Cohort::Canary, Duration::from_secs(s), sample(true, 1));
        }
        assert!(m.buckets() <= MAX_BUCKETS + 1, "{}", m.buckets());
        let w = m.window(
            Cohort::Canary,
            Slo::Success,
            Duration::from_secs(10 * 3600),
            Duration::from_secs(300),
        );
        // Whole buckets only: the one holding the window's start is left out.
        assert!((290..=300).contains(&w.total), "{w:?}");
        m.reset_canary();
        assert_eq!(m.buckets(), 0);
    }
}
