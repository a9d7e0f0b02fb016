//! A route's progressive rollout (`routes[].rollout`): the canary backend whose weight
//! is stepped up, the steps and the time at each, the analysis that judges every step
//! on the canary's own figures, and the webhooks around the steps.
//!
//! This module owns the user-facing shape and its checks ([`validate`], naming the field
//! path of every problem). The state machine that runs a rollout, and where its state
//! lives, belong to the gateway (`sluice_gateway::rollout`).
//!
//! ```yaml
//! rollout:
//!   canary: canary
//!   steps: [5, 10, 25, 50, 100]
//!   interval: 1m
//!   analysis:
//!     min_requests: 50
//!     success_rate: {min: 0.99, max_drop_vs_stable: 0.01}
//!     latency_p99: {max: 500ms, max_ratio_vs_stable: 1.5}
//!     failed_checks: 2
//!   webhooks:
//!     - {url: "http://127.0.0.1:8080/gate", on: [pre_step, rollback], timeout: 2s}
//!   on_promote: keep_canary_at_100
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::BackendConfig;
use crate::ConfigError;

/// A route's progressive rollout. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// The backend (its upstream id, one of the route's `backends`) being rolled out.
    /// While the rollout runs it gets the current step's percent of the traffic and the
    /// other backends share the rest by their configured weights. Required.
    pub canary: String,
    /// The canary's percent of the traffic at each step, strictly increasing, each in
    /// `1..=100`. Default: `[5, 10, 25, 50, 100]`.
    #[serde(default = "default_steps")]
    pub steps: Vec<u32>,
    /// Time at each step: the analysis judges each interval's figures. At least `100ms`.
    /// Default: `1m`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How each interval is judged. Default: see [`AnalysisConfig`].
    #[serde(default)]
    pub analysis: AnalysisConfig,
    /// HTTP calls before each step and on rollback or promotion. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookConfig>,
    /// What the route serves once every step has passed. Default: `keep_canary_at_100`.
    #[serde(default)]
    pub on_promote: OnPromote,
}

/// How each interval of a step is judged, on the canary's figures in that interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisConfig {
    /// Canary requests the interval needs before it is judged; with fewer the rollout
    /// waits (the interval neither passes nor fails, and the next one is judged on its
    /// own). Default: `50`.
    pub min_requests: u64,
    /// The canary's success rate (share of answers that are not 5xx and not failures to
    /// answer). Default: `{min: 0.99}`; `null` turns the check off.
    pub success_rate: Option<SuccessRateCheck>,
    /// The canary's p99 latency. Default: none (not checked).
    pub latency_p99: Option<LatencyCheck>,
    /// Failed analyses (over the whole rollout, not only in a row) after which the
    /// rollout is rolled back to 0%. At least `1`. Default: `2`.
    pub failed_checks: u32,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            min_requests: 50,
            success_rate: Some(SuccessRateCheck {
                min: Some(0.99),
                max_drop_vs_stable: None,
            }),
            latency_p99: None,
            failed_checks: 2,
        }
    }
}

/// Success-rate thresholds; give at least one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SuccessRateCheck {
    /// The lowest success rate that passes, in `0..=1`. Default: none.
    #[serde(default)]
    pub min: Option<f64>,
    /// How far below stable's success rate in the same interval the canary may be, in
    /// `0..=1` (`0.01`: one point). Not checked in an interval where stable served
    /// nothing. Default: none.
    #[serde(default)]
    pub max_drop_vs_stable: Option<f64>,
}

/// p99 latency thresholds; give at least one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatencyCheck {
    /// The highest p99 that passes. Default: none.
    #[schemars(with = "Option<crate::schema::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub max: Option<Duration>,
    /// The highest ratio of the canary's p99 to stable's in the same interval, above
    /// `0` (`1.5`: half as slow again). Not checked in an interval where stable served
    /// nothing. Default: none.
    #[serde(default)]
    pub max_ratio_vs_stable: Option<f64>,
}

/// An HTTP endpoint told about a rollout's steps: a `POST` of JSON `{route, action,
/// step, weight, analysis}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://host:port/path` (plain HTTP). Required. A secret (shown as
    /// `<redacted>`): a webhook URL often carries its token.
    pub url: crate::secret::Secret,
    /// When it is called. On `pre_step` an answer that is not 2xx (or no answer within
    /// `timeout`) holds the step; the others are notifications whose answer is only
    /// logged. Default: `[pre_step, rollback]`.
    #[serde(default = "default_webhook_on")]
    pub on: Vec<WebhookEvent>,
    /// How long to wait for the answer. Default: `2s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(default = "default_webhook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// When a webhook is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    /// Before the canary's weight moves to the next step (the first step included); a
    /// non-2xx answer holds the step.
    PreStep,
    /// After a rollback to 0%.
    Rollback,
    /// After the promotion.
    Promote,
}

impl WebhookEvent {
    /// The name used in config and in the webhook's `action`.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::PreStep => "pre_step",
            WebhookEvent::Rollback => "rollback",
            WebhookEvent::Promote => "promote",
        }
    }
}

/// What a route serves once its rollout is promoted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnPromote {
    /// The canary keeps 100% until the rollout leaves the config (the usual next change
    /// makes the canary the route's stable backend and removes `rollout`). The default:
    /// promoting never sends traffic back to the old version by itself.
    #[default]
    #[serde(rename = "keep_canary_at_100")]
    KeepCanaryAt100,
    /// The route goes back to its configured weights (for a config that already
    /// names the new version as stable).
    RestoreBase,
}

fn default_steps() -> Vec<u32> {
    vec![5, 10, 25, 50, 100]
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_webhook_on() -> Vec<WebhookEvent> {
    vec![WebhookEvent::PreStep, WebhookEvent::Rollback]
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(2)
}

/// The shortest `interval`.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Pushes a [`ConfigError`] for every problem of `r` (at `path`, e.g.
/// `routes[0].rollout`) on a route with `backends`.
pub fn validate(path: &str, r: &RolloutConfig, backends: &[BackendConfig], errors: &mut Vec<ConfigError>) {
    let mut err = |field: &str, msg: String| errors.push(ConfigError::at(format!("{path}.{field}"), msg));
    match backends.iter().position(|b| b.upstream == r.canary) {
        None => err(
            "canary",
            format!("{:?} is not one of the route's backends", r.canary),
        ),
        Some(i) => {
            let others = backends.iter().enumerate().any(|(j, b)| j != i && b.weight > 0);
            if !others {
                err(
                    "canary",
                    "needs another backend with a weight above 0 to share the rest of the traffic".into(),
                );
            }
        }
    }
    if r.steps.is_empty() {
        err("steps", "at least one step is required".into());
    }
    for (i, &s) in r.steps.iter().enumerate() {
        if !(1..=100).contains(&s) {
            err(&format!("steps[{i}]"), format!("{s} is outside 1..=100"));
        } else if i > 0 && s <= r.steps[i - 1] {
            err(
                &format!("steps[{i}]"),
                format!("{s} does not increase on {}", r.steps[i - 1]),
            );
        }
    }
    if r.interval < MIN_INTERVAL {
        err("interval", "must be at least 100ms".into());
    }
    let a = &r.analysis;
    if a.failed_checks == 0 {
        err("analysis.failed_checks", "must be at least 1".into());
    }
    if let Some(sr) = &a.success_rate {
        if sr.min.is_none() && sr.max_drop_vs_stable.is_none() {
            err(
                "analysis.success_rate",
                "give `min`, `max_drop_vs_stable` or both".into(),
            );
        }
        for (field, v) in [("min", sr.min), ("max_drop_vs_stable", sr.max_drop_vs_stable)] {
            if let Some(v) = v {
                if !(0.0..=1.0).contains(&v) {
                    err(
                        &format!("analysis.success_rate.{field}"),
                        format!("{v} is outside 0..=1"),
                    );
                }
            }
        }
    }
    if let Some(l) = &a.latency_p99 {
        if l.max.is_none() && l.max_ratio_vs_stable.is_none() {
            err(
                "analysis.latency_p99",
                "give `max`, `max_ratio_vs_stable` or both".into(),
            );
        }
        if l.max == Some(Duration::ZERO) {
            err("analysis.latency_p99.max", "must be above 0".into());
        }
        if let Some(v) = l.max_ratio_vs_stable {
            if !(v > 0.0 && v.is_finite()) {
                err(
                    "analysis.latency_p99.max_ratio_vs_stable",
                    format!("{v} must be above 0"),
                );
            }
        }
    }
    for (i, w) in r.webhooks.iter().enumerate() {
        let wp = format!("webhooks[{i}]");
        match w.url.expose().parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => {}
            _ => err(
                &format!("{wp}.url"),
                "must be an http://host:port/path URL (the value is a secret: not shown)".to_string(),
            ),
        }
        if w.on.is_empty() {
            err(
                &format!("{wp}.on"),
                "name at least one of pre_step, rollback, promote".into(),
            );
        }
        if w.timeout.is_zero() {
            err(&format!("{wp}.timeout"), "must be above 0".into());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn backends() -> Vec<BackendConfig> {
        vec![
            BackendConfig {
                upstream: "stable".into(),
                weight: 1,
            },
            BackendConfig {
                upstream: "canary".into(),
                weight: 0,
            },
        ]
    }

    fn check(yaml: &str) -> Vec<String> {
        let r: RolloutConfig = serde_yaml::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        validate("routes[0].rollout", &r, &backends(), &mut errors);
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let r: RolloutConfig = serde_yaml::from_str("canary: canary").unwrap();
        assert_eq!(r.steps, [5, 10, 25, 50, 100]);
        assert_eq!(r.interval, Duration::from_secs(60));
        assert_eq!(r.analysis.min_requests, 50);
        assert_eq!(r.analysis.failed_checks, 2);
        assert_eq!(r.analysis.success_rate.as_ref().unwrap().min, Some(0.99));
        assert_eq!(r.on_promote, OnPromote::KeepCanaryAt100);
        assert!(check("canary: canary").is_empty());
    }

    #[test]
    fn every_problem_names_its_path() {
        let errors = check(
            "canary: nope\nsteps: [5, 5, 101]\ninterval: 10ms\n\
             analysis: {failed_checks: 0, success_rate: {min: 1.5}, latency_p99: {max_ratio_vs_stable: 0}}\n\
             webhooks: [{url: 'ftp://x', on: []}]\n",
        );
        assert_eq!(
            errors,
            [
                "routes[0].rollout.canary: \"nope\" is not one of the route's backends",
                "routes[0].rollout.steps[1]: 5 does not increase on 5",
                "routes[0].rollout.steps[2]: 101 is outside 1..=100",
                "routes[0].rollout.interval: must be at least 100ms",
                "routes[0].rollout.analysis.failed_checks: must be at least 1",
                "routes[0].rollout.analysis.success_rate.min: 1.5 is outside 0..=1",
                "routes[0].rollout.analysis.latency_p99.max_ratio_vs_stable: 0 must be above 0",
                "routes[0].rollout.webhooks[0].url: must be an http://host:port/path URL (the value is a secret: not shown)",
                "routes[0].rollout.webhooks[0].on: name at least one of pre_step, rollback, promote",
            ]
        );
    }

    #[test]
    fn misspelt_fields_are_refused() {
        assert!(serde_yaml::from_str::<RolloutConfig>("canary: c\nstep: [1]").is_err());
        assert!(serde_yaml::from_str::<RolloutConfig>("canary: c\nanalysis: {min_request: 1}").is_err());
    }
}
