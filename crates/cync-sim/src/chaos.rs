//! Message-level chaos: seeded decisions about whole messages a simulated bridge sends or the
//! commands it receives. Faults never cut a message into arbitrary byte chunks, because TCP and
//! TLS never lose or reorder bytes; "one byte at a time" only changes how a whole message is
//! written.

use std::time::Duration;

/// The kinds of message a bridge sends that chaos can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Message {
    /// The 0x7B for a server 0x73.
    Ack,
    /// The `f9` result 0x73.
    Result,
    /// A 0x83 `fa db` report or a 0x43 status record.
    Report,
}

/// A delay before a message is sent.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Delay {
    /// Sent at once.
    #[default]
    None,
    /// Always this long.
    Fixed(Duration),
    /// Uniform between the two.
    Uniform(Duration, Duration),
}

impl Delay {
    fn sample(self, rng: &mut fastrand::Rng) -> Duration {
        match self {
            Self::None => Duration::ZERO,
            Self::Fixed(d) => d,
            Self::Uniform(lo, hi) if hi > lo => {
                let span = u64::try_from((hi - lo).as_micros()).unwrap_or(u64::MAX);
                lo + Duration::from_micros(rng.u64(0..=span))
            }
            Self::Uniform(lo, _) => lo,
        }
    }
}

/// What chaos does. Probabilities are 0.0–1.0 and apply per message (or per command).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chaos {
    /// Drop the 0x7B.
    pub drop_ack: f64,
    /// Drop the `f9` result.
    pub drop_result: f64,
    /// Drop the status report (0x83 and 0x43 record).
    pub drop_report: f64,
    /// Delay of the 0x7B.
    pub delay_ack: Delay,
    /// Delay of the result.
    pub delay_result: Delay,
    /// Delay of the report.
    pub delay_report: Delay,
    /// Send the result twice.
    pub dup_result: f64,
    /// Send the report twice.
    pub dup_report: f64,
    /// Refuse a command: a bare 0x7B and nothing else.
    pub reject: f64,
    /// Ignore a command entirely (no 0x7B either).
    pub ignore: f64,
    /// Stop reading for `stall_for` after a command (the server's writes back up).
    pub stall: f64,
    /// How long a stall lasts.
    pub stall_for: Duration,
    /// Close (reset) the connection right after receiving a command.
    pub reset: f64,
    /// Every bridge drops its connection and reconnects together, this often.
    pub storm_every: Option<Duration>,
    /// Write every message one byte at a time.
    pub byte_at_a_time: bool,
    /// Send a garbage packet with this probability per heartbeat.
    pub garbage: f64,
}

/// A command's fate, decided once when it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Handled normally (each answer still subject to drops, delays, duplicates).
    Apply,
    /// Bare 0x7B.
    Reject,
    /// No answer at all.
    Ignore,
    /// Connection closed.
    Reset,
}

/// What to do with one outgoing message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Send it at all.
    pub send: bool,
    /// Send it this many times (1 or 2).
    pub copies: u8,
    /// Wait this long first.
    pub delay: Duration,
}

/// A fault the chaos injected, for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// A dropped message.
    Dropped(Message),
    /// A duplicated message.
    Duplicated(Message),
    /// A delayed message.
    Delayed(Message),
    /// A rejected command.
    Rejected,
    /// An ignored command.
    Ignored,
    /// A stalled reader.
    Stalled,
    /// A connection reset mid-command.
    Reset,
    /// A garbage packet.
    Garbage,
    /// A reconnect storm.
    Storm,
}

impl Fault {
    /// A stable name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dropped(Message::Ack) => "drop_ack",
            Self::Dropped(Message::Result) => "drop_result",
            Self::Dropped(Message::Report) => "drop_report",
            Self::Duplicated(Message::Ack) => "dup_ack",
            Self::Duplicated(Message::Result) => "dup_result",
            Self::Duplicated(Message::Report) => "dup_report",
            Self::Delayed(Message::Ack) => "delay_ack",
            Self::Delayed(Message::Result) => "delay_result",
            Self::Delayed(Message::Report) => "delay_report",
            Self::Rejected => "reject",
            Self::Ignored => "ignore",
            Self::Stalled => "stall",
            Self::Reset => "reset",
            Self::Garbage => "garbage",
            Self::Storm => "storm",
        }
    }
}

impl Chaos {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// A named profile, or `key=value,…` settings (keys are the field names; durations in ms;
    /// delays as `N` or `LO-HI` ms). Profiles: `none`, `lossy-ack`, `lossy-result`,
    /// `lossy-report`, `dup`, `slow`, `reject`, `stall`, `reset`, `storm`, `bytewise`,
    /// `garbage`, `mixed`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let ms = Duration::from_millis;
        let profile = match text.trim() {
            "" | "none" => Some(Self::none()),
            "lossy-ack" => Some(Self {
                drop_ack: 0.2,
                ..Self::none()
            }),
            "lossy-result" => Some(Self {
                drop_result: 0.2,
                ..Self::none()
            }),
            "lossy-report" => Some(Self {
                drop_report: 0.2,
                ..Self::none()
            }),
            "dup" => Some(Self {
                dup_result: 0.5,
                dup_report: 0.5,
                ..Self::none()
            }),
            "slow" => Some(Self {
                delay_ack: Delay::Uniform(ms(10), ms(300)),
                delay_result: Delay::Uniform(ms(10), ms(300)),
                delay_report: Delay::Uniform(ms(50), ms(1000)),
                ..Self::none()
            }),
            "reject" => Some(Self {
                reject: 0.2,
                ..Self::none()
            }),
            "stall" => Some(Self {
                stall: 0.05,
                stall_for: ms(3000),
                ..Self::none()
            }),
            "reset" => Some(Self {
                reset: 0.05,
                ..Self::none()
            }),
            "storm" => Some(Self {
                storm_every: Some(Duration::from_secs(10)),
                ..Self::none()
            }),
            "bytewise" => Some(Self {
                byte_at_a_time: true,
                ..Self::none()
            }),
            "garbage" => Some(Self {
                garbage: 0.1,
                ..Self::none()
            }),
            "mixed" => Some(Self {
                drop_ack: 0.1,
                drop_result: 0.1,
                dup_result: 0.2,
                dup_report: 0.2,
                delay_report: Delay::Uniform(ms(0), ms(200)),
                ..Self::none()
            }),
            _ => None,
        };
        if let Some(p) = profile {
            return Ok(p);
        }
        let mut chaos = Self::none();
        for pair in text.split(',') {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                format!("unknown chaos profile {text:?} (or give key=value pairs)")
            })?;
            let prob = || -> Result<f64, String> {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .ok_or_else(|| format!("{key}: expected a probability 0-1, got {value:?}"))
            };
            let millis = || -> Result<Duration, String> {
                value
                    .parse()
                    .map(ms)
                    .map_err(|_| format!("{key}: expected milliseconds"))
            };
            let delay = || -> Result<Delay, String> {
                match value.split_once('-') {
                    Some((lo, hi)) => match (lo.parse(), hi.parse()) {
                        (Ok(lo), Ok(hi)) => Ok(Delay::Uniform(ms(lo), ms(hi))),
                        _ => Err(format!("{key}: expected LO-HI milliseconds")),
                    },
                    None => millis().map(Delay::Fixed),
                }
            };
            match key.trim() {
                "drop_ack" => chaos.drop_ack = prob()?,
                "drop_result" => chaos.drop_result = prob()?,
                "drop_report" => chaos.drop_report = prob()?,
                "delay_ack" => chaos.delay_ack = delay()?,
                "delay_result" => chaos.delay_result = delay()?,
                "delay_report" => chaos.delay_report = delay()?,
                "dup_result" => chaos.dup_result = prob()?,
                "dup_report" => chaos.dup_report = prob()?,
                "reject" => chaos.reject = prob()?,
                "ignore" => chaos.ignore = prob()?,
                "stall" => chaos.stall = prob()?,
                "stall_for" => chaos.stall_for = millis()?,
                "reset" => chaos.reset = prob()?,
                "storm_every" => chaos.storm_every = Some(millis()?),
                "byte_at_a_time" => chaos.byte_at_a_time = value == "true" || value == "1",
                "garbage" => chaos.garbage = prob()?,
                other => return Err(format!("unknown chaos key {other:?}")),
            }
        }
        Ok(chaos)
    }

    /// Decides a command's fate.
    pub fn fate(&self, rng: &mut fastrand::Rng) -> Fate {
        if hit(rng, self.reset) {
            Fate::Reset
        } else if hit(rng, self.ignore) {
            Fate::Ignore
        } else if hit(rng, self.reject) {
            Fate::Reject
        } else {
            Fate::Apply
        }
    }

    /// Plans one outgoing message.
    pub fn plan(&self, message: Message, rng: &mut fastrand::Rng) -> Plan {
        let (drop, dup, delay) = match message {
            Message::Ack => (self.drop_ack, 0.0, self.delay_ack),
            Message::Result => (self.drop_result, self.dup_result, self.delay_result),
            Message::Report => (self.drop_report, self.dup_report, self.delay_report),
        };
        Plan {
            send: !hit(rng, drop),
            copies: if hit(rng, dup) { 2 } else { 1 },
            delay: delay.sample(rng),
        }
    }

    /// Whether to stall the reader after a command.
    pub fn stall_now(&self, rng: &mut fastrand::Rng) -> bool {
        hit(rng, self.stall)
    }

    /// Whether to send garbage now.
    pub fn garbage_now(&self, rng: &mut fastrand::Rng) -> bool {
        hit(rng, self.garbage)
    }
}

fn hit(rng: &mut fastrand::Rng, p: f64) -> bool {
    p > 0.0 && rng.f64() < p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_and_settings_parse() {
        assert_eq!(Chaos::parse("lossy-ack").unwrap().drop_ack, 0.2);
        let c = Chaos::parse("drop_result=0.3,delay_report=10-20,byte_at_a_time=true").unwrap();
        assert_eq!(c.drop_result, 0.3);
        assert_eq!(
            c.delay_report,
            Delay::Uniform(Duration::from_millis(10), Duration::from_millis(20))
        );
        assert!(c.byte_at_a_time);
        assert!(Chaos::parse("drop_ack=2").is_err());
        assert!(
            Chaos::parse("bogus")
                .unwrap_err()
                .contains("unknown chaos profile")
        );
        assert!(
            Chaos::parse("nope=1")
                .unwrap_err()
                .contains("unknown chaos key")
        );
    }

    #[test]
    fn decisions_follow_the_seed_and_the_rates() {
        let chaos = Chaos::parse("drop_ack=0.2").unwrap();
        let run = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..10_000)
                .filter(|_| !chaos.plan(Message::Ack, &mut rng).send)
                .count()
        };
        assert_eq!(run(7), run(7));
        let dropped = run(7);
        assert!((1700..2300).contains(&dropped), "{dropped}");
        let mut rng = fastrand::Rng::with_seed(1);
        assert!((0..1000).all(|_| Chaos::none().fate(&mut rng) == Fate::Apply));
    }
}
