//! The canary controller: which transport each new connection gets, the SLOs per cohort, and
//! the automatic rollback. The decisions are made by the pure [`cync_proto::canary`]; this
//! module holds the state behind a mutex, counts, and reports.
//!
//! Cohorts: connections on the reliable transport are the canary, legacy ones the control.
//! Packets are counted in per-cohort atomics on the hot path and fed to the SLO buckets at each
//! evaluation; commands are counted when they end.
//!
//! Rollback: when [`Canary::evaluate`] finds a broken rule while the mode is `canary`, the
//! percentage goes to 0 and is latched — nothing automatic raises it again; a person does, with
//! `PUT /api/canary` (which clears the latch and the canary's SLO history). [`evaluate_slos`]
//! runs the rules and drains the connections whose transport no longer matches;
//! [`apply_routing`] is the one way a person's change (the API, a reloaded file) is applied.
//! The routing in force and the latch are kept in the state directory ([`Canary::persist`],
//! [`super::routing_file`]), so a restart restores them.
//!
//! Bounds: the SLO buckets are a fixed ring ([`cync_proto::canary::MAX_BUCKETS`]); the last
//! [`DECISIONS`] evaluations that changed something are kept for `GET /api/slo`.

use super::Context;
use super::routing_file::{Restore, Routing, RoutingFile};
use cync_proto::ConnId;
use cync_proto::canary::{
    Breach, Cohort, CommandSample, Mode, Policy, Route, SloConfig, SloMonitor, Transport,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Decisions kept for the API.
pub const DECISIONS: usize = 32;

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Canary metrics.
#[derive(Debug, Clone, Default)]
pub struct CanaryMetrics {
    /// `tcp_comm_routing_decision_total{transport}`.
    pub routing: Family<Labels1, Counter>,
    /// `tcp_comm_canary_percentage`.
    pub percentage: Gauge<f64, AtomicU64>,
    /// `tcp_comm_slo_compliance{slo, cohort}`.
    pub compliance: Family<Labels2, Gauge<f64, AtomicU64>>,
    /// `tcp_comm_error_budget_remaining{slo, cohort}`.
    pub budget: Family<Labels2, Gauge<f64, AtomicU64>>,
    /// `tcp_comm_rollback_total`.
    pub rollbacks: Counter,
    /// `tcp_comm_shadow_diff_total{legacy, reliable}`: shadowed commands whose outcomes
    /// differ (legacy's outcome, the reliable transport's would-be outcome).
    pub shadow_diffs: Family<Labels2, Counter>,
    /// `tcp_comm_shadow_compared_total`.
    pub shadow_compared: Counter,
    /// `tcp_comm_shadow_skipped_total`: shadowed commands that could not be compared.
    pub shadow_skipped: Counter,
    /// `tcp_comm_drained_total`: connections closed so they reconnect under a new decision.
    pub drained: Counter,
}

impl CanaryMetrics {
    /// Creates and registers the metrics.
    pub fn new(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("tcp_comm");
        r.register(
            "routing_decision",
            "Transport chosen for new connections",
            m.routing.clone(),
        );
        r.register(
            "canary_percentage",
            "Share of new connections routed to the reliable transport in canary mode",
            m.percentage.clone(),
        );
        r.register(
            "slo_compliance",
            "Good share of each SLO over the longest window",
            m.compliance.clone(),
        );
        r.register(
            "error_budget_remaining",
            "Error budget left over the longest window (1 untouched, 0 spent)",
            m.budget.clone(),
        );
        r.register(
            "rollback",
            "Automatic canary rollbacks",
            m.rollbacks.clone(),
        );
        r.register(
            "shadow_diff",
            "Shadowed commands whose reliable outcome would differ from legacy's",
            m.shadow_diffs.clone(),
        );
        r.register(
            "shadow_compared",
            "Shadowed commands compared",
            m.shadow_compared.clone(),
        );
        r.register(
            "shadow_skipped",
            "Shadowed commands not comparable (held back or superseded by the reliable transport)",
            m.shadow_skipped.clone(),
        );
        r.register(
            "drained",
            "Connections closed to reconnect under a new routing decision",
            m.drained.clone(),
        );
        for t in [Transport::Legacy, Transport::Reliable] {
            let _ = m.routing.get_or_create(&[("transport", t.name())]);
        }
        // Every pair of differing outcomes starts at zero, so the family is there from the start.
        for legacy in super::legacy::OUTCOMES {
            for reliable in cync_proto::delivery::Outcome::ALL {
                if legacy != reliable.name() {
                    let _ = m
                        .shadow_diffs
                        .get_or_create(&[("legacy", legacy), ("reliable", reliable.name())]);
                }
            }
        }
        m
    }
}

/// A rollback, as the API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rollback {
    /// RFC 3339 time.
    pub at: String,
    /// The SLO.
    pub slo: String,
    /// The rule.
    pub rule: String,
    /// Why, with the numbers.
    pub reason: String,
    /// The percentage before.
    pub percent_before: f64,
}

#[derive(Debug)]
struct State {
    policy: Policy,
    latched: Option<Rollback>,
    monitor: SloMonitor,
    decisions: VecDeque<Value>,
    fed_packets: [u64; 2],
    fed_errors: [u64; 2],
}

/// The canary controller.
#[derive(Debug)]
pub struct Canary {
    state: Mutex<State>,
    start: Instant,
    packets: [AtomicU64; 2],
    errors: [AtomicU64; 2],
    /// Its metrics.
    pub metrics: CanaryMetrics,
    /// Where the routing is kept across restarts, once [`Canary::persist`] was called.
    file: std::sync::OnceLock<RoutingFile>,
}

fn slot(t: Transport) -> usize {
    match t {
        Transport::Legacy => 0,
        Transport::Reliable => 1,
    }
}

/// The cohort of a transport.
pub fn cohort(t: Transport) -> Cohort {
    match t {
        Transport::Legacy => Cohort::Control,
        Transport::Reliable => Cohort::Canary,
    }
}

fn cohort_name(c: Cohort) -> &'static str {
    match c {
        Cohort::Canary => "canary",
        Cohort::Control => "control",
    }
}

/// A change asked for through the API or a reloaded configuration.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// New mode.
    pub mode: Option<String>,
    /// New percentage.
    pub percent: Option<f64>,
    /// Kill switch.
    pub kill: Option<bool>,
    /// Close the connections whose transport no longer matches, so they reconnect under the
    /// new decision.
    #[serde(default)]
    pub drain: bool,
}

impl Canary {
    /// A controller with `policy` and `slo`.
    pub fn new(policy: Policy, slo: SloConfig, metrics: CanaryMetrics) -> Self {
        metrics.percentage.set(policy.percent);
        let canary = Self {
            state: Mutex::new(State {
                policy,
                latched: None,
                monitor: SloMonitor::new(slo),
                decisions: VecDeque::new(),
                fed_packets: [0; 2],
                fed_errors: [0; 2],
            }),
            start: Instant::now(),
            packets: [AtomicU64::new(0), AtomicU64::new(0)],
            errors: [AtomicU64::new(0), AtomicU64::new(0)],
            metrics,
            file: std::sync::OnceLock::new(),
        };
        // Compliance and budgets are in /metrics from the start, not from the first evaluation.
        canary.export(&canary.lock(), Duration::ZERO);
        canary
    }

    /// Keeps the routing and the rollback latch in `file` from now on, starting from what it
    /// saved when the configuration's routing is unchanged since (see
    /// [`super::routing_file`]). Returns what was found. Called once, at start.
    pub fn persist(&self, file: RoutingFile) -> Restore {
        let found = file.restore();
        let mut state = self.lock();
        if let Restore::Saved(policy, latched) = &found {
            state.policy = *policy;
            state.latched = latched.clone();
            self.metrics.percentage.set(policy.percent);
        }
        let _ = self.file.set(file);
        self.save(&state);
        found
    }

    /// Records the configuration's routing after a reload (SIGHUP), so the next start compares
    /// against it.
    pub fn reloaded(&self, config: Routing) {
        let state = self.lock();
        if let Some(file) = self.file.get() {
            file.reloaded(config);
        }
        self.save(&state);
    }

    /// Writes the routing in force and the latch, when persisted. Called with the state locked,
    /// so writes land in the order of the changes (they are rare: a person or a rollback).
    fn save(&self, state: &State) {
        let Some(file) = self.file.get() else { return };
        if let Err(e) = file.save(&state.policy, state.latched.as_ref()) {
            error!(file = %file.path().display(), error = %e, "could not save the routing: a restart would not keep it");
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now(&self) -> Duration {
        Instant::now().duration_since(self.start)
    }

    /// The current policy.
    pub fn policy(&self) -> Policy {
        self.lock().policy
    }

    /// The route of a new connection (counted).
    pub fn route(&self, conn: ConnId) -> Route {
        let route = self.lock().policy.route(conn);
        self.metrics
            .routing
            .get_or_create(&[("transport", route.transport.name())])
            .inc();
        route
    }

    /// Counts a received packet of a connection on `transport` (lock-free).
    pub fn packet(&self, transport: Transport, decode_error: bool) {
        let i = slot(transport);
        if let Some(p) = self.packets.get(i) {
            p.fetch_add(1, Ordering::Relaxed);
        }
        if decode_error {
            if let Some(e) = self.errors.get(i) {
                e.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts a finished command of `transport`.
    pub fn command(&self, transport: Transport, sample: CommandSample) {
        let now = self.now();
        self.lock().monitor.command(cohort(transport), now, sample);
    }

    /// Applies a change; a person raising the percentage or changing the mode clears a
    /// rollback latch.
    pub fn update(&self, update: &Update) -> Result<Policy, String> {
        let mut state = self.lock();
        let mut policy = state.policy;
        if let Some(mode) = &update.mode {
            policy.mode = Mode::from_name(mode).ok_or_else(|| {
                format!("mode must be legacy, shadow, canary or reliable, got {mode:?}")
            })?;
        }
        if let Some(p) = update.percent {
            if !(p.is_finite() && (0.0..=100.0).contains(&p)) {
                return Err(format!("percent must be 0-100, got {p}"));
            }
            policy.percent = p;
        }
        if let Some(k) = update.kill {
            policy.kill = k;
        }
        if state.latched.is_some() && (update.percent.is_some() || update.mode.is_some()) {
            info!(
                mode = policy.mode.name(),
                percent = policy.percent,
                "canary re-enabled by hand: rollback latch cleared"
            );
            state.latched = None;
            state.monitor.reset_canary();
        }
        if policy != state.policy {
            info!(
                mode = policy.mode.name(),
                percent = policy.percent,
                kill = policy.kill,
                "routing policy changed"
            );
            let record = json!({
                "at": now_rfc3339(),
                "decision": "policy",
                "mode": policy.mode.name(),
                "percent": policy.percent,
                "kill": policy.kill,
            });
            push(&mut state.decisions, record);
        }
        state.policy = policy;
        self.metrics.percentage.set(policy.percent);
        self.save(&state);
        Ok(policy)
    }

    /// Feeds the packet counters and evaluates the rules; returns the rollback when one
    /// happened now.
    pub fn evaluate(&self) -> Option<Rollback> {
        let now = self.now();
        let mut guard = self.lock();
        let state = &mut *guard;
        for t in [Transport::Legacy, Transport::Reliable] {
            let i = slot(t);
            let packets = self.packets.get(i).map_or(0, |a| a.load(Ordering::Relaxed));
            let errors = self.errors.get(i).map_or(0, |a| a.load(Ordering::Relaxed));
            let (dp, de) = match (state.fed_packets.get_mut(i), state.fed_errors.get_mut(i)) {
                (Some(fp), Some(fe)) => {
                    let d = (packets.saturating_sub(*fp), errors.saturating_sub(*fe));
                    *fp = packets;
                    *fe = errors;
                    d
                }
                _ => (0, 0),
            };
            if dp > 0 {
                state.monitor.packets(cohort(t), now, dp, de.min(dp));
            }
        }
        self.export(state, now);
        if state.policy.mode != Mode::Canary
            || state.latched.is_some()
            || state.policy.percent <= 0.0
        {
            return None;
        }
        let breach = state.monitor.evaluate(now)?;
        let rollback = self.roll_back(state, &breach);
        Some(rollback)
    }

    fn roll_back(&self, state: &mut State, breach: &Breach) -> Rollback {
        let rollback = Rollback {
            at: now_rfc3339(),
            slo: breach.slo.name().to_string(),
            rule: breach.rule.clone(),
            reason: breach.to_string(),
            percent_before: state.policy.percent,
        };
        error!(
            slo = %rollback.slo,
            rule = %rollback.rule,
            percent_before = rollback.percent_before,
            reason = %rollback.reason,
            "canary rolled back to 0%: the reliable transport broke an SLO rule (latched until re-enabled by hand)"
        );
        state.policy.percent = 0.0;
        state.latched = Some(rollback.clone());
        self.metrics.percentage.set(0.0);
        self.metrics.rollbacks.inc();
        let record = json!({
            "at": rollback.at,
            "decision": "rollback",
            "slo": rollback.slo,
            "rule": rollback.rule,
            "reason": rollback.reason,
            "percent_before": rollback.percent_before,
            "canary_long": window_json(&breach.long),
            "canary_short": window_json(&breach.short),
            "control_long": window_json(&breach.control),
        });
        push(&mut state.decisions, record);
        self.save(state);
        rollback
    }

    fn export(&self, state: &State, now: Duration) {
        for c in [Cohort::Canary, Cohort::Control] {
            for (slo, _, compliance, left) in state.monitor.budgets(c, now) {
                let labels = [("slo", slo.name()), ("cohort", cohort_name(c))];
                self.metrics
                    .compliance
                    .get_or_create(&labels)
                    .set(compliance);
                self.metrics.budget.get_or_create(&labels).set(left);
            }
        }
    }

    /// `GET /api/canary`.
    pub fn status(&self) -> Value {
        let state = self.lock();
        json!({
            "mode": state.policy.mode.name(),
            "percent": state.policy.percent,
            "kill": state.policy.kill,
            "latched": state.latched.is_some(),
            "last_rollback": state.latched,
        })
    }

    /// The rollback latch, when set.
    pub fn latched(&self) -> Option<Rollback> {
        self.lock().latched.clone()
    }

    /// `GET /api/slo`.
    pub fn report(&self) -> Value {
        let now = self.now();
        let state = self.lock();
        let config = state.monitor.config().clone();
        let mut slos = Vec::new();
        for c in [Cohort::Canary, Cohort::Control] {
            for (slo, window, compliance, left) in state.monitor.budgets(c, now) {
                let rules: Vec<Value> = config
                    .rules
                    .iter()
                    .map(|r| {
                        let long = state.monitor.window(c, slo, now, r.long);
                        let short = state.monitor.window(c, slo, now, r.short);
                        json!({
                            "rule": r.name,
                            "factor": r.factor,
                            "long_secs": r.long.as_secs_f64(),
                            "short_secs": r.short.as_secs_f64(),
                            "long": window_json(&long),
                            "short": window_json(&short),
                        })
                    })
                    .collect();
                slos.push(json!({
                    "name": slo.name(),
                    "cohort": cohort_name(c),
                    "target": config.target(slo),
                    "compliance": compliance,
                    "budget_remaining": left,
                    "events": window.total,
                    "rules": rules,
                }));
            }
        }
        json!({
            "mode": state.policy.mode.name(),
            "percent": state.policy.percent,
            "latched": state.latched.is_some(),
            "min_events": config.min_events,
            "latency_limit_ms": config.latency_limit.as_millis() as u64,
            "slos": slos,
            "decisions": state.decisions.iter().rev().cloned().collect::<Vec<_>>(),
            "last_rollback": state.latched,
        })
    }
}

fn window_json(w: &cync_proto::canary::Window) -> Value {
    json!({ "good": w.good, "total": w.total, "burn": w.burn, "error_ratio": w.error_ratio() })
}

fn push(list: &mut VecDeque<Value>, v: Value) {
    if list.len() >= DECISIONS {
        list.pop_front();
    }
    list.push_back(v);
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Evaluates the SLO rules every `canary.evaluate_secs`; a rollback drains the canary's
/// connections so their devices reconnect on the legacy transport.
pub async fn evaluate_slos(ctx: Arc<Context>, cancel: CancellationToken) {
    let every = Duration::from_secs_f64(ctx.config.canary.evaluate_secs.max(0.01));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if ctx.canary.evaluate().is_some() {
            drain(&ctx, ctx.canary.policy());
        }
    }
}

/// Applies a routing change (from the API or a reloaded configuration) and, when asked,
/// drains the connections whose transport no longer matches. Returns the policy and the
/// number of connections closed.
pub fn apply_routing(
    ctx: &Context,
    update: &Update,
) -> Result<(cync_proto::canary::Policy, usize), String> {
    let policy = ctx.canary.update(update)?;
    let drained = if update.drain { drain(ctx, policy) } else { 0 };
    Ok((policy, drained))
}

/// Closes the connections whose transport `policy` no longer gives them, so their devices
/// reconnect under it; counts and logs them.
fn drain(ctx: &Context, policy: cync_proto::canary::Policy) -> usize {
    let n = ctx.registry.drain(&policy);
    ctx.canary.metrics.drained.inc_by(n as u64);
    info!(
        drained = n,
        "connections closed to reconnect under the current routing"
    );
    n
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use cync_proto::canary::BurnRule;

    fn fast_slo() -> SloConfig {
        SloConfig {
            rules: vec![BurnRule {
                name: "fast".into(),
                long: Duration::from_secs(60),
                short: Duration::from_secs(10),
                factor: 10.0,
            }],
            bucket: Duration::from_secs(1),
            min_events: 20,
            ..SloConfig::default()
        }
    }

    fn sample(applied: bool) -> CommandSample {
        CommandSample {
            applied,
            superseded: false,
            queue_full: false,
            latency: Duration::from_millis(50),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_breaking_canary_is_rolled_back_and_latched_until_a_person_re_enables_it() {
        let canary = Canary::new(
            Policy {
                mode: Mode::Canary,
                percent: 30.0,
                kill: false,
            },
            fast_slo(),
            CanaryMetrics::default(),
        );
        let mut rolled = None;
        for s in 0..60 {
            for _ in 0..5 {
                canary.command(Transport::Reliable, sample(s % 2 == 0));
                canary.command(Transport::Legacy, sample(true));
            }
            if let Some(r) = canary.evaluate() {
                rolled = Some((s, r));
                break;
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let (at, rollback) = rolled.expect("rolled back");
        assert!(at <= 10, "after {at} s");
        assert_eq!(
            (rollback.slo.as_str(), rollback.percent_before),
            ("command_success", 30.0)
        );
        assert_eq!(canary.policy().percent, 0.0);
        assert_eq!(canary.metrics.rollbacks.get(), 1);
        // Latched: nothing further happens automatically, whatever the numbers.
        for _ in 0..5 {
            canary.command(Transport::Reliable, sample(false));
        }
        assert_eq!(canary.evaluate(), None);
        assert_eq!(canary.status()["latched"], true);
        let report = canary.report();
        assert_eq!(report["decisions"][0]["decision"], "rollback");
        // A person re-enables it: latch and canary history cleared.
        canary
            .update(&Update {
                percent: Some(5.0),
                ..Update::default()
            })
            .unwrap();
        assert!(canary.latched().is_none());
        assert_eq!(canary.policy().percent, 5.0);
        assert_eq!(canary.evaluate(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn outside_canary_mode_nothing_rolls_back_and_bad_updates_are_refused() {
        let canary = Canary::new(
            Policy {
                mode: Mode::Reliable,
                percent: 0.0,
                kill: false,
            },
            fast_slo(),
            CanaryMetrics::default(),
        );
        for _ in 0..100 {
            canary.command(Transport::Reliable, sample(false));
        }
        assert_eq!(canary.evaluate(), None);
        for bad in [
            Update {
                mode: Some("blue".into()),
                ..Update::default()
            },
            Update {
                percent: Some(101.0),
                ..Update::default()
            },
            Update {
                percent: Some(f64::NAN),
                ..Update::default()
            },
        ] {
            assert!(canary.update(&bad).is_err());
        }
        assert_eq!(canary.policy().mode, Mode::Reliable);
        // Decode errors come in through the packet counters.
        let canary = Canary::new(
            Policy {
                mode: Mode::Canary,
                percent: 50.0,
                kill: false,
            },
            fast_slo(),
            CanaryMetrics::default(),
        );
        for i in 0..1000 {
            canary.packet(Transport::Reliable, i % 10 == 0);
            canary.packet(Transport::Legacy, false);
        }
        assert_eq!(
            canary.evaluate().map(|r| r.slo).as_deref(),
            Some("decode_errors")
        );
    }
}
