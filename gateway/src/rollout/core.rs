//! The rollout state machine: plain data and transitions with the clock passed in, no
//! I/O. The runtime ([`super::runtime`]) loads a [`RolloutState`] from the store, feeds
//! it the interval's figures, commands and webhook verdicts, and stores it back.
//!
//! States: `progressing` (stepping; `waiting` says why it is not judging or moving),
//! `paused`, and the ends `promoted`, `rolled_back` and `aborted`.
//!
//! At each step, when an interval has passed the canary's figures in it are judged
//! ([`judge`]): fewer than `min_requests` waits (neither pass nor fail); a pass moves
//! to the next step (after the `pre_step` webhooks agree) or, at the last step,
//! promotes; a failure counts, and `failed_checks` failures roll the canary back to 0%.
//! Each judged interval starts the next one.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_config::rollout::{OnPromote, RolloutConfig, WebhookEvent};
use sluice_core::split::StatsSample;

/// Decisions kept in [`RolloutState::history`].
pub const HISTORY: usize = 50;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Stepping through the steps.
    Progressing,
    /// Held by an operator: the weight stays, nothing is judged.
    Paused,
    /// Every step passed (or an operator promoted it).
    Promoted,
    /// Failed analyses sent the canary back to 0%.
    RolledBack,
    /// An operator stopped it; the canary is back at 0%.
    Aborted,
}

impl Phase {
    /// Every phase, for metric labels.
    pub const ALL: [Phase; 5] = [
        Phase::Progressing,
        Phase::Paused,
        Phase::Promoted,
        Phase::RolledBack,
        Phase::Aborted,
    ];

    /// The name used in the API and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled_back",
            Phase::Aborted => "aborted",
        }
    }

    /// Whether the rollout has ended (only `resume` restarts it).
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack | Phase::Aborted)
    }
}

/// An operator's command (admin API or CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Hold the current weight; stop judging.
    Pause,
    /// Continue a paused rollout with a fresh interval; restart an ended one
    /// (rolled back, aborted or promoted) from its first step.
    Resume,
    /// Promote now, skipping the remaining steps.
    Promote,
    /// Stop, with the canary back at 0%.
    Abort,
}

impl Command {
    /// The name used in the API path.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Promote => "promote",
            Command::Abort => "abort",
        }
    }

    /// The command named `s`.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            "promote" => Command::Promote,
            "abort" => Command::Abort,
            _ => return None,
        })
    }

    /// Why `self` does not apply in `phase`, if it does not.
    pub fn refused_in(self, phase: Phase) -> Option<String> {
        let ok = match self {
            Command::Pause => phase == Phase::Progressing,
            Command::Resume => phase != Phase::Progressing,
            Command::Promote => phase != Phase::Promoted,
            Command::Abort => !phase.is_final(),
        };
        (!ok).then(|| format!("cannot {} a rollout that is {}", self.as_str(), phase.as_str()))
    }
}

/// What an analysis concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every check held.
    Pass,
    /// A check failed.
    Fail,
    /// Too little canary traffic to judge.
    Wait,
}

impl Verdict {
    /// Every verdict, for metric labels.
    pub const ALL: [Verdict; 3] = [Verdict::Pass, Verdict::Fail, Verdict::Wait];

    /// The name used in the API and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Wait => "wait",
        }
    }
}

/// One backend's figures over an interval, as shown and judged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Requests answered.
    pub requests: u64,
    /// Of which failed (5xx or no answer).
    pub errors: u64,
    /// Share that did not fail (`None` with no request).
    pub success_rate: Option<f64>,
    /// p99 latency in milliseconds, to the histogram's bucket (`None` with no request).
    pub p99_ms: Option<f64>,
}

impl Figures {
    /// The figures of an interval's sample.
    pub fn of(s: &StatsSample) -> Figures {
        Figures {
            requests: s.requests,
            errors: s.errors,
            success_rate: s.success_rate(),
            p99_ms: s.quantile(0.99).map(|d| d.as_secs_f64() * 1000.0),
        }
    }
}

/// An interval's judgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// When it was made (Unix milliseconds).
    pub at_ms: u64,
    /// The step index it judged.
    pub step: usize,
    /// The canary's weight in that interval, percent.
    pub weight: u32,
    /// The conclusion.
    pub verdict: Verdict,
    /// Why (the failed checks, or what was waited for, or `all checks passed`).
    pub reason: String,
    /// The canary's figures.
    pub canary: Figures,
    /// The other backends' figures together.
    pub stable: Figures,
}

/// One decision in a rollout's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// When (Unix milliseconds).
    pub at_ms: u64,
    /// `start`, `step`, `hold`, `promote`, `rollback`, `pause`, `resume`, `abort`.
    pub action: String,
    /// The canary's weight after it, percent.
    pub weight: u32,
    /// Why.
    pub reason: String,
}

/// A side effect for the runtime to carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Emit a `RolloutStep` event.
    Event {
        /// `step`, `promote`, `rollback`, `pause`, `resume`, `abort` or `hold`.
        action: String,
        /// The canary's weight after it.
        weight: u32,
        /// Why.
        detail: String,
    },
    /// Call the `pre_step` webhooks for moving to step `step` (weight `weight`), then
    /// report with [`RolloutState::gate_result`].
    Gate {
        /// Target step index.
        step: usize,
        /// Its weight.
        weight: u32,
    },
    /// Tell the webhooks subscribed to `event` (a notification; the answer is logged).
    Notify {
        /// `rollback` or `promote`.
        event: WebhookEvent,
    },
}

/// A rollout's whole state, stored as JSON through the [`super::store::RolloutStore`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    /// The hash of the spec (and the route's backends) it runs; a different one
    /// restarts the rollout.
    pub spec_hash: String,
    /// Where it stands.
    pub phase: Phase,
    /// Current step index into the spec's steps (before the first step passes its
    /// gate: 0 with `weight` 0).
    pub step: usize,
    /// The canary's weight served now, percent. `None` after a `restore_base`
    /// promotion: the configured weights are served.
    pub weight: Option<u32>,
    /// When it started (Unix milliseconds).
    pub started_ms: u64,
    /// When the current step started.
    pub step_started_ms: u64,
    /// When the interval being counted started.
    pub interval_started_ms: u64,
    /// Failed analyses so far.
    pub failed: u32,
    /// Why a progressing rollout is not moving, if it is not: waiting for traffic, or
    /// for a webhook.
    pub waiting: Option<String>,
    /// A step whose `pre_step` webhooks have to agree before it is served.
    pub gate: Option<usize>,
    /// The last judged interval.
    pub last_analysis: Option<Analysis>,
    /// Decisions, oldest first, at most [`HISTORY`].
    pub history: VecDeque<Decision>,
    /// A command written by the admin API (any replica), for the leader to carry out.
    pub command: Option<Command>,
    /// Each replica's cumulative figures (per backend, in backend order) when the
    /// current interval started, for diffing.
    #[serde(default)]
    pub baseline: Vec<(String, Vec<StatsSample>)>,
    /// The replica that last decided (the leader then).
    #[serde(default)]
    pub leader: Option<String>,
}

/// The interval's figures of the canary and of the other backends together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntervalFigures {
    /// The canary's.
    pub canary: StatsSample,
    /// The others' (stable).
    pub stable: StatsSample,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Judges one interval's figures against the spec's analysis.
pub fn judge(spec: &RolloutConfig, f: &IntervalFigures) -> (Verdict, String) {
    let a = &spec.analysis;
    if f.canary.requests < a.min_requests {
        return (
            Verdict::Wait,
            format!(
                "waiting for traffic: {} canary requests of the {} needed",
                f.canary.requests, a.min_requests
            ),
        );
    }
    let mut failed = Vec::new();
    let canary_sr = f.canary.success_rate().unwrap_or(1.0);
    let stable_sr = f.stable.success_rate();
    if let Some(sr) = &a.success_rate {
        if let Some(min) = sr.min {
            if canary_sr < min {
                failed.push(format!("success rate {canary_sr:.4} below {min}"));
            }
        }
        if let (Some(drop), Some(stable)) = (sr.max_drop_vs_stable, stable_sr) {
            if stable - canary_sr > drop {
                failed.push(format!(
                    "success rate {canary_sr:.4} more than {drop} below stable's {stable:.4}"
                ));
            }
        }
    }
    if let Some(l) = &a.latency_p99 {
        let p99 = f.canary.quantile(0.99);
        if let (Some(max), Some(p99)) = (l.max, p99) {
            if p99 > max {
                failed.push(format!("p99 {}ms above {}ms", p99.as_millis(), max.as_millis()));
            }
        }
        if let (Some(ratio), Some(p99), Some(stable)) = (l.max_ratio_vs_stable, p99, f.stable.quantile(0.99))
        {
            if p99.as_secs_f64() > ratio * stable.as_secs_f64() {
                failed.push(format!(
                    "p99 {}ms more than {ratio}× stable's {}ms",
                    p99.as_millis(),
                    stable.as_millis()
                ));
            }
        }
    }
    if failed.is_empty() {
        (Verdict::Pass, "all checks passed".into())
    } else {
        (Verdict::Fail, failed.join("; "))
    }
}

impl RolloutState {
    /// A new rollout of `spec` (whose hash is `spec_hash`) at `now_ms`: its first step
    /// waits for the `pre_step` webhooks when there are any, else is served at once.
    pub fn start(spec: &RolloutConfig, spec_hash: &str, now_ms: u64) -> (RolloutState, Vec<Effect>) {
        let mut s = RolloutState {
            spec_hash: spec_hash.to_string(),
            phase: Phase::Progressing,
            step: 0,
            weight: Some(0),
            started_ms: now_ms,
            step_started_ms: now_ms,
            interval_started_ms: now_ms,
            failed: 0,
            waiting: None,
            gate: None,
            last_analysis: None,
            history: VecDeque::new(),
            command: None,
            baseline: Vec::new(),
            leader: None,
        };
        s.record(now_ms, "start", "rollout started".into());
        let mut effects = Vec::new();
        s.move_to(spec, 0, now_ms, &mut effects);
        (s, effects)
    }

    /// The canary's weight to serve, percent (`None`: serve the configured weights).
    pub fn canary_weight(&self) -> Option<u32> {
        self.weight
    }

    fn record(&mut self, now_ms: u64, action: &str, reason: String) {
        self.history.push_back(Decision {
            at_ms: now_ms,
            action: action.into(),
            weight: self.weight.unwrap_or(100),
            reason,
        });
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }

    fn event(&mut self, now_ms: u64, action: &str, reason: String, effects: &mut Vec<Effect>) {
        effects.push(Effect::Event {
            action: action.into(),
            weight: self.weight.unwrap_or(100),
            detail: reason.clone(),
        });
        self.record(now_ms, action, reason);
    }

    fn has_hook(spec: &RolloutConfig, event: WebhookEvent) -> bool {
        spec.webhooks.iter().any(|w| w.on.contains(&event))
    }

    /// Moves to `step`: through the gate when `pre_step` webhooks exist.
    fn move_to(&mut self, spec: &RolloutConfig, step: usize, now_ms: u64, effects: &mut Vec<Effect>) {
        let weight = spec.steps.get(step).copied().unwrap_or(100);
        if Self::has_hook(spec, WebhookEvent::PreStep) {
            self.gate = Some(step);
            self.waiting = Some(format!("waiting for the pre_step webhooks to allow {weight}%"));
            effects.push(Effect::Gate { step, weight });
        } else {
            self.enter(spec, step, now_ms, effects);
        }
    }

    fn enter(&mut self, spec: &RolloutConfig, step: usize, now_ms: u64, effects: &mut Vec<Effect>) {
        let weight = spec.steps.get(step).copied().unwrap_or(100);
        self.gate = None;
        self.waiting = None;
        self.step = step;
        self.weight = Some(weight);
        self.step_started_ms = now_ms;
        self.interval_started_ms = now_ms;
        self.event(
            now_ms,
            "step",
            format!("step {} of {}: canary at {weight}%", step + 1, spec.steps.len()),
            effects,
        );
    }

    fn promote(&mut self, spec: &RolloutConfig, now_ms: u64, reason: String, effects: &mut Vec<Effect>) {
        self.phase = Phase::Promoted;
        self.gate = None;
        self.waiting = None;
        self.weight = match spec.on_promote {
            OnPromote::KeepCanaryAt100 => Some(100),
            OnPromote::RestoreBase => None,
        };
        self.event(now_ms, "promote", reason, effects);
        effects.push(Effect::Notify {
            event: WebhookEvent::Promote,
        });
    }

    fn fall_to_zero(
        &mut self,
        phase: Phase,
        action: &str,
        now_ms: u64,
        reason: String,
        effects: &mut Vec<Effect>,
    ) {
        self.phase = phase;
        self.gate = None;
        self.waiting = None;
        self.weight = Some(0);
        self.event(now_ms, action, reason, effects);
        if phase == Phase::RolledBack {
            effects.push(Effect::Notify {
                event: WebhookEvent::Rollback,
            });
        }
    }

    /// Whether the interval being counted has ended at `now_ms` (and is to be judged).
    pub fn interval_due(&self, spec: &RolloutConfig, now_ms: u64) -> bool {
        self.phase == Phase::Progressing
            && self.gate.is_none()
            && now_ms.saturating_sub(self.interval_started_ms) >= ms(spec.interval)
    }

    /// Judges the interval that ended (`figures` are its counts) when one is due, and
    /// moves on. Returns whether an interval was judged (so a new one starts: the caller
    /// takes a new baseline) and the effects.
    pub fn tick(
        &mut self,
        spec: &RolloutConfig,
        now_ms: u64,
        figures: &IntervalFigures,
    ) -> (bool, Vec<Effect>) {
        let mut effects = Vec::new();
        if !self.interval_due(spec, now_ms) {
            return (false, effects);
        }
        if self.weight == Some(0) {
            // The first step was held by a webhook: nothing runs at 0% to judge, so the
            // webhooks are asked again.
            self.interval_started_ms = now_ms;
            self.move_to(spec, 0, now_ms, &mut effects);
            return (true, effects);
        }
        let weight = self.weight.unwrap_or(100);
        let (verdict, reason) = judge(spec, figures);
        self.last_analysis = Some(Analysis {
            at_ms: now_ms,
            step: self.step,
            weight,
            verdict,
            reason: reason.clone(),
            canary: Figures::of(&figures.canary),
            stable: Figures::of(&figures.stable),
        });
        self.interval_started_ms = now_ms;
        match verdict {
            Verdict::Wait => {
                self.waiting = Some(reason);
            }
            Verdict::Fail => {
                self.waiting = None;
                self.failed += 1;
                let limit = spec.analysis.failed_checks;
                if self.failed >= limit {
                    self.fall_to_zero(
                        Phase::RolledBack,
                        "rollback",
                        now_ms,
                        format!(
                            "{} failed analyses of {limit} allowed; last: {reason}",
                            self.failed
                        ),
                        &mut effects,
                    );
                } else {
                    self.event(
                        now_ms,
                        "hold",
                        format!("analysis failed ({} of {limit}): {reason}", self.failed),
                        &mut effects,
                    );
                }
            }
            Verdict::Pass => {
                self.waiting = None;
                if self.step + 1 >= spec.steps.len() {
                    self.promote(
                        spec,
                        now_ms,
                        format!("every step passed; last at {weight}%"),
                        &mut effects,
                    );
                } else {
                    self.move_to(spec, self.step + 1, now_ms, &mut effects);
                }
            }
        }
        (true, effects)
    }

    /// The `pre_step` webhooks' answer for the pending gate: `allowed` serves the step;
    /// a refusal holds the current one for another interval, after which the analysis
    /// runs again and, on a pass, the webhooks are asked again. Ignored with no gate.
    pub fn gate_result(
        &mut self,
        spec: &RolloutConfig,
        now_ms: u64,
        allowed: bool,
        detail: String,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        let Some(step) = self.gate else {
            return effects;
        };
        if self.phase != Phase::Progressing {
            self.gate = None;
            return effects;
        }
        if allowed {
            self.enter(spec, step, now_ms, &mut effects);
        } else {
            self.gate = None;
            self.interval_started_ms = now_ms;
            self.waiting = Some(format!("held by a pre_step webhook: {detail}"));
            let weight = spec.steps.get(step).copied().unwrap_or(100);
            self.event(
                now_ms,
                "hold",
                format!("a pre_step webhook refused {weight}%: {detail}"),
                &mut effects,
            );
        }
        effects
    }

    /// Carries out an operator's command; a refused one (see [`Command::refused_in`])
    /// is recorded and changes nothing. Returns whether a new interval starts.
    pub fn apply(&mut self, spec: &RolloutConfig, now_ms: u64, command: Command) -> (bool, Vec<Effect>) {
        let mut effects = Vec::new();
        if let Some(why) = command.refused_in(self.phase) {
            self.record(now_ms, "refused", why);
            return (false, effects);
        }
        match command {
            Command::Pause => {
                self.phase = Phase::Paused;
                self.event(now_ms, "pause", "paused by an operator".into(), &mut effects);
                (false, effects)
            }
            Command::Resume if self.phase == Phase::Paused => {
                self.phase = Phase::Progressing;
                self.interval_started_ms = now_ms;
                self.event(now_ms, "resume", "resumed by an operator".into(), &mut effects);
                if let Some(step) = self.gate {
                    // Paused while the webhooks were being asked: ask again.
                    let weight = spec.steps.get(step).copied().unwrap_or(100);
                    effects.push(Effect::Gate { step, weight });
                }
                (true, effects)
            }
            Command::Resume => {
                self.phase = Phase::Progressing;
                self.failed = 0;
                self.weight = Some(0);
                self.step = 0;
                self.interval_started_ms = now_ms;
                self.event(
                    now_ms,
                    "resume",
                    "restarted from the first step by an operator".into(),
                    &mut effects,
                );
                self.move_to(spec, 0, now_ms, &mut effects);
                (true, effects)
            }
            Command::Promote => {
                self.promote(spec, now_ms, "promoted by an operator".into(), &mut effects);
                (false, effects)
            }
            Command::Abort => {
                self.fall_to_zero(
                    Phase::Aborted,
                    "abort",
                    now_ms,
                    "aborted by an operator".into(),
                    &mut effects,
                );
                (false, effects)
            }
        }
    }
}

/// The weights to serve for a canary at `percent` on a route with `base` weights: the
/// canary (index `canary`) gets `percent`% and the others share the rest by their base
/// weights, in units of 1/10000 of the traffic (rounded; the others never all 0 while
/// the canary is below 100%).
pub fn split_weights(base: &[u32], canary: usize, percent: u32) -> Vec<u32> {
    const SCALE: u64 = 10_000;
    let percent = u64::from(percent.min(100));
    let rest = SCALE - percent * 100;
    let others: u64 = base
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != canary)
        .map(|(_, &w)| u64::from(w))
        .sum();
    base.iter()
        .enumerate()
        .map(|(i, &w)| {
            let v = if i == canary {
                percent * 100
            } else {
                (rest * u64::from(w) + others / 2)
                    .checked_div(others)
                    .unwrap_or(0)
            };
            u32::try_from(v).unwrap_or(u32::MAX)
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sluice_core::split::VersionStats;

    const SEC: u64 = 1000;

    fn spec(extra: &str) -> RolloutConfig {
        serde_yaml::from_str(&format!(
            "canary: canary\nsteps: [10, 50, 100]\ninterval: 1s\n\
             analysis: {{min_requests: 20, failed_checks: 2, success_rate: {{min: 0.95}}, latency_p99: {{max: 100ms}}}}\n{extra}"
        ))
        .unwrap()
    }

    fn sample(requests: u64, errors: u64, latency: Duration) -> StatsSample {
        let v = VersionStats::default();
        for i in 0..requests {
            v.record(if i < errors { 503 } else { 200 }, latency);
        }
        v.sample()
    }

    fn figures(canary: StatsSample) -> IntervalFigures {
        IntervalFigures {
            canary,
            stable: sample(100, 0, Duration::from_millis(5)),
        }
    }

    fn healthy() -> IntervalFigures {
        figures(sample(50, 0, Duration::from_millis(5)))
    }

    fn actions(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Event { action, weight, .. } => format!("{action}@{weight}"),
                Effect::Gate { weight, .. } => format!("gate@{weight}"),
                Effect::Notify { event } => format!("notify:{}", event.as_str()),
            })
            .collect()
    }

    #[test]
    fn a_healthy_canary_is_promoted_through_every_step() {
        let spec = spec("");
        let (mut s, effects) = RolloutState::start(&spec, "h", 0);
        assert_eq!(actions(&effects), ["step@10"]);
        assert_eq!(s.canary_weight(), Some(10));
        let (judged, effects) = s.tick(&spec, SEC / 2, &healthy());
        assert!(!judged && effects.is_empty(), "not before the interval ends");
        let (judged, effects) = s.tick(&spec, SEC, &healthy());
        assert!(judged);
        assert_eq!(actions(&effects), ["step@50"]);
        let (_, effects) = s.tick(&spec, 2 * SEC, &healthy());
        assert_eq!(actions(&effects), ["step@100"]);
        let (_, effects) = s.tick(&spec, 3 * SEC, &healthy());
        assert_eq!(actions(&effects), ["promote@100", "notify:promote"]);
        assert_eq!(s.phase, Phase::Promoted);
        assert_eq!(s.canary_weight(), Some(100));
        let (judged, _) = s.tick(&spec, 10 * SEC, &healthy());
        assert!(!judged, "an ended rollout judges nothing");
        let last = s.last_analysis.as_ref().unwrap();
        assert_eq!(last.verdict, Verdict::Pass);
        assert_eq!(last.canary.requests, 50);
        let hist: Vec<&str> = s.history.iter().map(|d| d.action.as_str()).collect();
        assert_eq!(hist, ["start", "step", "step", "step", "promote"]);
    }

    #[test]
    fn errors_roll_back_after_failed_checks() {
        let spec = spec("");
        let (mut s, _) = RolloutState::start(&spec, "h", 0);
        s.tick(&spec, SEC, &healthy());
        assert_eq!(s.canary_weight(), Some(50));
        let bad = figures(sample(50, 10, Duration::from_millis(5)));
        let (_, effects) = s.tick(&spec, 2 * SEC, &bad);
        assert_eq!(actions(&effects), ["hold@50"]);
        assert_eq!(s.failed, 1);
        assert_eq!(s.phase, Phase::Progressing);
        let (_, effects) = s.tick(&spec, 3 * SEC, &bad);
        assert_eq!(actions(&effects), ["rollback@0", "notify:rollback"]);
        assert_eq!(s.phase, Phase::RolledBack);
        assert_eq!(s.canary_weight(), Some(0));
        assert!(s
            .last_analysis
            .as_ref()
            .unwrap()
            .reason
            .contains("success rate 0.8000 below 0.95"));
    }

    #[test]
    fn a_slow_canary_is_rolled_back() {
        let spec = spec("");
        let (mut s, _) = RolloutState::start(&spec, "h", 0);
        let slow = figures(sample(50, 0, Duration::from_millis(400)));
        s.tick(&spec, SEC, &slow);
        s.tick(&spec, 2 * SEC, &slow);
        assert_eq!(s.phase, Phase::RolledBack);
        assert!(
            s.last_analysis.as_ref().unwrap().reason.contains("p99"),
            "{:?}",
            s.last_analysis
        );
    }

    #[test]
    fn checks_relative_to_stable() {
        let spec: RolloutConfig = serde_yaml::from_str(
            "canary: canary\nanalysis: {min_requests: 10, success_rate: {max_drop_vs_stable: 0.05}, latency_p99: {max_ratio_vs_stable: 2}}",
        )
        .unwrap();
        let f = |c: StatsSample, st: StatsSample| IntervalFigures {
            canary: c,
            stable: st,
        };
        let ms = Duration::from_millis;
        assert_eq!(
            judge(&spec, &f(sample(100, 4, ms(5)), sample(100, 0, ms(5)))).0,
            Verdict::Pass
        );
        assert_eq!(
            judge(&spec, &f(sample(100, 6, ms(5)), sample(100, 0, ms(5)))).0,
            Verdict::Fail
        );
        assert_eq!(
            judge(&spec, &f(sample(100, 6, ms(5)), sample(100, 5, ms(5)))).0,
            Verdict::Pass,
            "stable is as bad"
        );
        assert_eq!(
            judge(&spec, &f(sample(100, 0, ms(30)), sample(100, 0, ms(5)))).0,
            Verdict::Fail
        );
        assert_eq!(
            judge(&spec, &f(sample(100, 0, ms(30)), StatsSample::default())).0,
            Verdict::Pass,
            "no stable traffic: the relative checks do not apply"
        );
    }

    #[test]
    fn too_little_traffic_waits_without_passing_or_failing() {
        let spec = spec("");
        let (mut s, _) = RolloutState::start(&spec, "h", 0);
        let thin = figures(sample(5, 5, Duration::from_millis(5)));
        for i in 1..=5 {
            let (judged, effects) = s.tick(&spec, i * SEC, &thin);
            assert!(judged && effects.is_empty());
        }
        assert_eq!(s.step, 0);
        assert_eq!(s.failed, 0);
        assert_eq!(s.phase, Phase::Progressing);
        assert_eq!(s.last_analysis.as_ref().unwrap().verdict, Verdict::Wait);
        assert!(s
            .waiting
            .as_ref()
            .unwrap()
            .contains("5 canary requests of the 20"));
        s.tick(&spec, 6 * SEC, &healthy());
        assert_eq!(s.step, 1);
        assert_eq!(s.waiting, None);
    }

    #[test]
    fn pause_resume_promote_abort() {
        let spec = spec("");
        let (mut s, _) = RolloutState::start(&spec, "h", 0);
        let (_, effects) = s.apply(&spec, 100, Command::Pause);
        assert_eq!(actions(&effects), ["pause@10"]);
        assert!(!s.tick(&spec, 5 * SEC, &healthy()).0, "paused: nothing judged");
        assert_eq!(s.step, 0);
        assert_eq!(
            Command::Pause.refused_in(s.phase).unwrap(),
            "cannot pause a rollout that is paused"
        );
        let (fresh, _) = s.apply(&spec, 5 * SEC, Command::Resume);
        assert!(fresh);
        assert!(
            !s.tick(&spec, 5 * SEC + 500, &healthy()).0,
            "a fresh interval after resume"
        );
        s.tick(&spec, 6 * SEC, &healthy());
        assert_eq!(s.canary_weight(), Some(50));
        let (_, effects) = s.apply(&spec, 7 * SEC, Command::Promote);
        assert_eq!(actions(&effects), ["promote@100", "notify:promote"]);
        assert_eq!(s.phase, Phase::Promoted);
        s.apply(&spec, 8 * SEC, Command::Abort);
        assert_eq!(s.phase, Phase::Promoted, "abort refused once promoted");
        assert_eq!(s.history.back().unwrap().action, "refused");
        let (_, effects) = s.apply(&spec, 9 * SEC, Command::Resume);
        assert_eq!(
            actions(&effects),
            ["resume@0", "step@10"],
            "an ended rollout restarts"
        );
        let (_, effects) = s.apply(&spec, 10 * SEC, Command::Abort);
        assert_eq!(actions(&effects), ["abort@0"]);
        assert_eq!((s.phase, s.canary_weight()), (Phase::Aborted, Some(0)));
    }

    #[test]
    fn a_webhook_refusal_holds_the_step() {
        let spec = spec("webhooks: [{url: 'http://127.0.0.1:1/hook'}]");
        let (mut s, effects) = RolloutState::start(&spec, "h", 0);
        assert_eq!(actions(&effects), ["gate@10"]);
        assert_eq!(s.canary_weight(), Some(0), "not served before the webhooks agree");
        assert!(
            !s.tick(&spec, 5 * SEC, &healthy()).0,
            "nothing judged while gated"
        );
        let effects = s.gate_result(&spec, 4 * SEC, false, "500".into());
        assert_eq!(actions(&effects), ["hold@0"]);
        let (_, effects) = s.tick(&spec, 5 * SEC, &IntervalFigures::default());
        assert_eq!(
            actions(&effects),
            ["gate@10"],
            "the first step is asked for again"
        );
        let effects = s.gate_result(&spec, 5 * SEC, true, "200".into());
        assert_eq!(actions(&effects), ["step@10"]);
        let (_, effects) = s.tick(&spec, 6 * SEC, &healthy());
        assert_eq!(actions(&effects), ["gate@50"]);
        let effects = s.gate_result(&spec, 6 * SEC, false, "500".into());
        assert_eq!(actions(&effects), ["hold@10"]);
        assert_eq!((s.step, s.canary_weight()), (0, Some(10)));
        assert!(s.waiting.as_ref().unwrap().contains("held by a pre_step webhook"));
        let (_, effects) = s.tick(&spec, 7 * SEC, &healthy());
        assert_eq!(
            actions(&effects),
            ["gate@50"],
            "asked again after another passing interval"
        );
        s.gate_result(&spec, 7 * SEC, true, "200".into());
        assert_eq!(s.canary_weight(), Some(50));
    }

    #[test]
    fn restore_base_serves_the_config_after_promotion() {
        let spec = spec("on_promote: restore_base");
        let (mut s, _) = RolloutState::start(&spec, "h", 0);
        s.apply(&spec, 1, Command::Promote);
        assert_eq!(s.canary_weight(), None);
    }

    #[test]
    fn history_is_bounded_and_state_round_trips_through_json() {
        let spec = spec("");
        let (mut s, _) = RolloutState::start(&spec, "h", 0);
        for i in 0..200 {
            s.apply(
                &spec,
                i,
                if i % 2 == 0 {
                    Command::Pause
                } else {
                    Command::Resume
                },
            );
        }
        assert_eq!(s.history.len(), HISTORY);
        let json = serde_json::to_vec(&s).unwrap();
        let back: RolloutState = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn split_weights_share_the_rest_by_base_weight() {
        assert_eq!(split_weights(&[1, 0], 1, 5), [9500, 500]);
        assert_eq!(split_weights(&[3, 0, 1], 1, 20), [6000, 2000, 2000]);
        assert_eq!(split_weights(&[3, 1], 1, 100), [0, 10000]);
        assert_eq!(split_weights(&[1, 1], 0, 0), [0, 10000]);
    }
}
