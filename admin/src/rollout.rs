//! Rollouts: a route's traffic moved to a target pool in steps. This file
//! is the step machine alone — strategies and presets turned into steps,
//! and the transitions (advance, pause, resume, promote, abort) — with the
//! clock passed in, so it is tested without waiting. The control plane
//! persists each transition before it takes effect.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_config::TOTAL_WEIGHT;

/// A rollout's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// The current step's pause is counting down.
    Running,
    /// An operator paused it; the clock is stopped.
    Paused,
    /// The current step has no pause: it waits for `resume` or `promote`.
    Waiting,
    /// All traffic is on the target.
    Completed,
    /// Traffic went back to the baseline.
    Aborted,
}

impl RolloutState {
    /// Every state, in the order of the metrics' series.
    pub const ALL: [RolloutState; 5] = [
        RolloutState::Running,
        RolloutState::Paused,
        RolloutState::Waiting,
        RolloutState::Completed,
        RolloutState::Aborted,
    ];

    /// The state as the API and the metrics name it.
    pub fn name(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Waiting => "waiting",
            RolloutState::Completed => "completed",
            RolloutState::Aborted => "aborted",
        }
    }
}

/// One step: the target's weight, held for `pause_ms` (none: a manual gate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Basis points for the target pool.
    pub weight: u32,
    /// How long the step holds before the next, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_ms: Option<u64>,
}

/// A rollout in progress or finished, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// `all_at_once`, `linear`, `canary`, `blue_green`, or a preset's name.
    pub strategy: String,
    /// The pool traffic moves to.
    pub target: String,
    /// The steps; the last one's weight is 10,000.
    pub steps: Vec<Step>,
    /// Index of the live step.
    pub step: usize,
    /// Where it is.
    pub state: RolloutState,
    /// Unix milliseconds when the live step's clock started (adjusted on
    /// resume so that `now - step_started_ms` is the time already served).
    pub step_started_ms: u64,
    /// While paused: what was left of the step's pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_ms: Option<u64>,
    /// Why it ended or holds, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What an operator asks for: a strategy with its parameters, or a preset.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// `all_at_once`, `linear`, `canary` or `blue_green`.
    #[serde(default)]
    pub strategy: Option<String>,
    /// A CodeDeploy-style preset name, instead of a strategy.
    #[serde(default)]
    pub preset: Option<String>,
    /// The pool to move traffic to; default: the split's one non-baseline pool.
    #[serde(default)]
    pub target: Option<String>,
    /// `linear`: basis points added per step.
    #[serde(default)]
    pub step: Option<i64>,
    /// `linear`: time between steps (`1m`).
    #[serde(default)]
    pub interval: Option<String>,
    /// `canary`: explicit steps.
    #[serde(default)]
    pub steps: Option<Vec<SpecStep>>,
    /// `blue_green`: how long the old pool stays warm for an instant abort.
    #[serde(default)]
    pub bake: Option<String>,
}

/// A step as written: `{"weight": 500, "pause": "5m"}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecStep {
    /// Basis points for the target.
    pub weight: i64,
    /// How long to hold; absent means wait for resume/promote.
    #[serde(default)]
    pub pause: Option<String>,
}

/// A spec that cannot become a rollout: the field and why.
#[derive(Debug)]
pub struct SpecError {
    /// The offending field.
    pub field: &'static str,
    /// Why.
    pub message: String,
}

fn spec_error(field: &'static str, message: impl Into<String>) -> SpecError {
    SpecError {
        field,
        message: message.into(),
    }
}

fn duration_ms(field: &'static str, text: &str) -> Result<u64, SpecError> {
    match switchyard_config::parse_duration(text) {
        Some(d) if !d.is_zero() => Ok(d.as_millis() as u64),
        _ => Err(spec_error(
            field,
            format!("{text:?} is not a positive duration such as \"30s\" or \"5m\""),
        )),
    }
}

/// AWS CodeDeploy's predefined configurations, by name.
pub const PRESETS: &[&str] = &[
    "AllAtOnce",
    "Canary10Percent5Minutes",
    "Canary10Percent15Minutes",
    "Linear10PercentEvery1Minute",
    "Linear10PercentEvery3Minutes",
];

fn linear_steps(step: u32, interval_ms: u64) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut weight = 0;
    while weight < TOTAL_WEIGHT {
        weight = (weight + step).min(TOTAL_WEIGHT);
        steps.push(Step {
            weight,
            pause_ms: (weight < TOTAL_WEIGHT).then_some(interval_ms),
        });
    }
    steps
}

impl RolloutSpec {
    /// The strategy's name and its steps.
    pub fn steps(&self) -> Result<(String, Vec<Step>), SpecError> {
        const MINUTE: u64 = 60_000;
        self.check_fields()?;
        if let Some(preset) = &self.preset {
            if self.strategy.is_some() {
                return Err(spec_error(
                    "preset",
                    "give a preset or a strategy, not both",
                ));
            }
            let steps = match preset.as_str() {
                "AllAtOnce" => vec![Step {
                    weight: TOTAL_WEIGHT,
                    pause_ms: None,
                }],
                "Canary10Percent5Minutes" | "Canary10Percent15Minutes" => {
                    let minutes = if preset.contains("15") { 15 } else { 5 };
                    vec![
                        Step {
                            weight: 1000,
                            pause_ms: Some(minutes * MINUTE),
                        },
                        Step {
                            weight: TOTAL_WEIGHT,
                            pause_ms: None,
                        },
                    ]
                }
                "Linear10PercentEvery1Minute" => linear_steps(1000, MINUTE),
                "Linear10PercentEvery3Minutes" => linear_steps(1000, 3 * MINUTE),
                other => {
                    return Err(spec_error(
                        "preset",
                        format!("unknown preset {other:?}; known: {}", PRESETS.join(", ")),
                    ))
                }
            };
            return Ok((preset.clone(), steps));
        }
        let strategy = self
            .strategy
            .as_deref()
            .ok_or_else(|| spec_error("strategy", "give a strategy or a preset"))?;
        let steps = match strategy {
            "all_at_once" => vec![Step {
                weight: TOTAL_WEIGHT,
                pause_ms: None,
            }],
            "linear" => {
                let step = self
                    .step
                    .ok_or_else(|| spec_error("step", "linear needs a step in basis points"))?;
                if !(1..=i64::from(TOTAL_WEIGHT)).contains(&step) {
                    return Err(spec_error(
                        "step",
                        format!("step {step} is outside 1..=10000"),
                    ));
                }
                let step = step as u32;
                let interval = self
                    .interval
                    .as_deref()
                    .ok_or_else(|| spec_error("interval", "linear needs an interval"))?;
                linear_steps(step, duration_ms("interval", interval)?)
            }
            "canary" => {
                let given = self
                    .steps
                    .as_ref()
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| spec_error("steps", "canary needs at least one step"))?;
                let mut steps = Vec::new();
                let mut previous = 0;
                for step in given {
                    if !(0..=i64::from(TOTAL_WEIGHT)).contains(&step.weight) {
                        return Err(spec_error(
                            "steps",
                            format!("weight {} is outside 0..=10000", step.weight),
                        ));
                    }
                    let weight = step.weight as u32;
                    if weight < previous {
                        return Err(spec_error("steps", "step weights must not go down"));
                    }
                    previous = weight;
                    let pause_ms = match &step.pause {
                        Some(pause) => Some(duration_ms("steps", pause)?),
                        None => None,
                    };
                    steps.push(Step { weight, pause_ms });
                }
                if previous < TOTAL_WEIGHT {
                    // The end of every rollout is all traffic on the target.
                    steps.push(Step {
                        weight: TOTAL_WEIGHT,
                        pause_ms: None,
                    });
                }
                steps
            }
            "blue_green" => {
                let bake = self
                    .bake
                    .as_deref()
                    .ok_or_else(|| spec_error("bake", "blue_green needs a bake time"))?;
                vec![
                    Step {
                        weight: TOTAL_WEIGHT,
                        pause_ms: Some(duration_ms("bake", bake)?),
                    },
                    Step {
                        weight: TOTAL_WEIGHT,
                        pause_ms: None,
                    },
                ]
            }
            other => {
                return Err(spec_error(
                    "strategy",
                    format!(
                        "unknown strategy {other:?}; known: all_at_once, linear, canary, blue_green"
                    ),
                ))
            }
        };
        Ok((strategy.to_string(), steps))
    }

    /// Refuses a field the strategy or preset does not take (it would be
    /// ignored without a word: `interval` beside a preset, `bake` beside
    /// `canary`).
    fn check_fields(&self) -> Result<(), SpecError> {
        let kind = match (&self.preset, self.strategy.as_deref()) {
            (Some(_), _) => "a preset",
            (None, Some("linear")) => "linear",
            (None, Some("canary")) => "canary",
            (None, Some("blue_green")) => "blue_green",
            (None, Some("all_at_once")) => "all_at_once",
            // Unknown or missing: refused for that below.
            (None, _) => return Ok(()),
        };
        let given = [
            ("step", self.step.is_some(), "linear"),
            ("interval", self.interval.is_some(), "linear"),
            ("steps", self.steps.is_some(), "canary"),
            ("bake", self.bake.is_some(), "blue_green"),
        ];
        for (field, present, owner) in given {
            if present && kind != owner {
                return Err(spec_error(
                    field,
                    format!("{field} belongs to {owner}, not to {kind}"),
                ));
            }
        }
        Ok(())
    }
}

impl Rollout {
    /// A rollout at its first step, started at `now_ms`.
    pub fn start(strategy: String, target: String, steps: Vec<Step>, now_ms: u64) -> Rollout {
        let mut rollout = Rollout {
            strategy,
            target,
            steps,
            step: 0,
            state: RolloutState::Running,
            step_started_ms: now_ms,
            remaining_ms: None,
            reason: None,
        };
        rollout.settle();
        rollout
    }

    /// Sets the state the live step implies: the last step completes, a
    /// step without a pause waits.
    fn settle(&mut self) {
        let step = &self.steps[self.step];
        self.state = match step.pause_ms {
            Some(_) => RolloutState::Running,
            None if self.step + 1 == self.steps.len() => {
                self.reason = Some("all traffic is on the target".into());
                RolloutState::Completed
            }
            None => RolloutState::Waiting,
        };
    }

    /// Why a rollout read back from the state file cannot be driven, if it
    /// cannot: its live step out of range, a weight over 100%, or a last
    /// step that does not put all traffic on the target.
    pub fn check(&self) -> Result<(), String> {
        let Some(last) = self.steps.last() else {
            return Err("no steps".into());
        };
        if self.step >= self.steps.len() {
            return Err(format!(
                "step {} of {} steps",
                self.step + 1,
                self.steps.len()
            ));
        }
        if self.steps.iter().any(|s| s.weight > TOTAL_WEIGHT) || last.weight != TOTAL_WEIGHT {
            return Err("weights must be at most 10000, the last one 10000".into());
        }
        Ok(())
    }

    /// A live step's clock that starts in the future (the wall clock was
    /// ahead when it started, and was put back) starts now: a step never
    /// has more left than its pause.
    pub fn clamp_start(&mut self, now_ms: u64) {
        self.step_started_ms = self.step_started_ms.min(now_ms);
    }

    /// Whether it still moves traffic (running, paused or waiting).
    pub fn is_active(&self) -> bool {
        matches!(
            self.state,
            RolloutState::Running | RolloutState::Paused | RolloutState::Waiting
        )
    }

    /// The target's weight now, in basis points.
    pub fn target_weight(&self) -> u32 {
        match self.state {
            RolloutState::Aborted => 0,
            _ => self.steps[self.step].weight,
        }
    }

    /// When the live step's pause ends (unix ms), if its clock is running.
    pub fn due_ms(&self) -> Option<u64> {
        if self.state != RolloutState::Running {
            return None;
        }
        self.steps[self.step]
            .pause_ms
            .map(|pause| self.step_started_ms + pause)
    }

    /// Moves to the next step (the clock restarts at `now_ms`); past the
    /// last step's pause, the rollout is complete.
    pub fn advance(&mut self, now_ms: u64) {
        if self.step + 1 < self.steps.len() {
            self.step += 1;
            self.step_started_ms = now_ms;
            self.remaining_ms = None;
            self.settle();
        } else {
            self.state = RolloutState::Completed;
            self.reason = Some("all traffic is on the target".into());
        }
    }

    /// Stops the clock, keeping what is left of the step.
    pub fn pause(&mut self, now_ms: u64) {
        if self.state == RolloutState::Running {
            let left = self.due_ms().map_or(0, |due| due.saturating_sub(now_ms));
            self.remaining_ms = Some(left);
            self.state = RolloutState::Paused;
        }
    }

    /// Restarts the clock; a waiting step (manual gate) moves on.
    pub fn resume(&mut self, now_ms: u64) {
        match self.state {
            RolloutState::Paused => {
                let pause = self.steps[self.step].pause_ms.unwrap_or(0);
                let left = self.remaining_ms.take().unwrap_or(0);
                self.step_started_ms = now_ms.saturating_sub(pause.saturating_sub(left));
                self.state = RolloutState::Running;
            }
            RolloutState::Waiting => self.advance(now_ms),
            _ => {}
        }
    }

    /// Goes to the last step (all traffic on the target) at once.
    pub fn promote(&mut self, now_ms: u64) {
        self.step = self.steps.len() - 1;
        self.step_started_ms = now_ms;
        self.remaining_ms = None;
        self.state = RolloutState::Completed;
        self.reason = Some("promoted".into());
    }

    /// Sends all traffic back to the baseline.
    pub fn abort(&mut self, reason: String) {
        self.state = RolloutState::Aborted;
        self.remaining_ms = None;
        self.reason = Some(reason);
    }

    /// Time left in a running or paused step.
    pub fn remaining(&self, now_ms: u64) -> Option<Duration> {
        match self.state {
            RolloutState::Paused => self.remaining_ms.map(Duration::from_millis),
            RolloutState::Running => {
                let pause = self.steps[self.step].pause_ms?;
                self.due_ms()
                    .map(|due| Duration::from_millis(due.saturating_sub(now_ms).min(pause)))
            }
            _ => None,
        }
    }
}

/// The split's weights with `target` at `weight`: other non-baseline pools
/// keep theirs, the baseline takes the rest; at 100%, every other pool
/// goes to 0. `None` if that would leave the baseline below zero, or if
/// the target is the baseline.
pub fn weights_with(
    current: &BTreeMap<String, u32>,
    baseline: &str,
    target: &str,
    weight: u32,
) -> Option<BTreeMap<String, u32>> {
    if baseline == target {
        return None;
    }
    if weight == TOTAL_WEIGHT {
        // All traffic on the target: every other pool goes to 0.
        let mut next: BTreeMap<String, u32> = current.keys().map(|p| (p.clone(), 0)).collect();
        next.insert(target.to_string(), TOTAL_WEIGHT);
        next.insert(baseline.to_string(), 0);
        return Some(next);
    }
    let others: u32 = current
        .iter()
        .filter(|(pool, _)| pool.as_str() != baseline && pool.as_str() != target)
        .map(|(_, w)| *w)
        .sum();
    let rest = TOTAL_WEIGHT.checked_sub(weight + others)?;
    let mut next = current.clone();
    next.insert(target.to_string(), weight);
    next.insert(baseline.to_string(), rest);
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> RolloutSpec {
        serde_json::from_str(json).expect("spec")
    }

    #[test]
    fn linear_goes_up_by_its_step() {
        let (_, steps) = spec(r#"{"strategy": "linear", "step": 3000, "interval": "1m"}"#)
            .steps()
            .expect("valid");
        let weights: Vec<u32> = steps.iter().map(|s| s.weight).collect();
        assert_eq!(weights, vec![3000, 6000, 9000, 10000]);
        assert_eq!(steps[0].pause_ms, Some(60_000));
        assert_eq!(steps[3].pause_ms, None);
    }

    #[test]
    fn presets_match_codedeploy() {
        let (_, steps) = spec(r#"{"preset": "Canary10Percent15Minutes"}"#)
            .steps()
            .expect("valid");
        assert_eq!(
            steps[0],
            Step {
                weight: 1000,
                pause_ms: Some(900_000)
            }
        );
        assert_eq!(steps[1].weight, 10_000);
        let (_, steps) = spec(r#"{"preset": "Linear10PercentEvery3Minutes"}"#)
            .steps()
            .expect("valid");
        assert_eq!(steps.len(), 10);
        assert!(spec(r#"{"preset": "Canary50Percent"}"#).steps().is_err());
    }

    #[test]
    fn pause_stops_the_clock_and_resume_keeps_the_rest() {
        let (_, steps) = spec(r#"{"strategy": "canary", "steps": [{"weight": 500, "pause": "10s"}, {"weight": 2500}]}"#)
            .steps()
            .expect("valid");
        let mut rollout = Rollout::start("canary".into(), "canary".into(), steps, 1_000);
        assert_eq!(rollout.due_ms(), Some(11_000));
        rollout.pause(4_000);
        assert_eq!(rollout.due_ms(), None);
        assert_eq!(rollout.remaining(99_000), Some(Duration::from_secs(7)));
        rollout.resume(100_000);
        assert_eq!(rollout.due_ms(), Some(107_000));
        rollout.advance(107_000);
        assert_eq!(
            (rollout.state, rollout.target_weight()),
            (RolloutState::Waiting, 2500)
        );
        rollout.resume(108_000);
        assert_eq!(
            (rollout.state, rollout.target_weight()),
            (RolloutState::Completed, 10_000)
        );
    }

    #[test]
    fn abort_returns_to_the_baseline() {
        let mut rollout = Rollout::start(
            "AllAtOnce".into(),
            "green".into(),
            vec![
                Step {
                    weight: 10_000,
                    pause_ms: Some(5),
                },
                Step {
                    weight: 10_000,
                    pause_ms: None,
                },
            ],
            0,
        );
        rollout.abort("bad".into());
        assert_eq!(rollout.target_weight(), 0);
        assert!(!rollout.is_active());
    }

    #[test]
    fn weights_keep_other_pools() {
        let current: BTreeMap<String, u32> = [
            ("a".to_string(), 8000),
            ("b".to_string(), 1000),
            ("c".to_string(), 1000),
        ]
        .into();
        let next = weights_with(&current, "a", "b", 5000).expect("fits");
        assert_eq!(next["a"], 4000);
        assert_eq!(next["c"], 1000);
        assert!(weights_with(&current, "a", "b", 9500).is_none());
    }
}
