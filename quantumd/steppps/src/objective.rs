//! TIME feedback: raising a cell's CPU weight while it misses its run-queue
//! latency objective, and lowering it again once the pressure is gone.
//!
//! Pure logic: quantumd feeds one p99 reading per interval, applies the
//! returned weight (CPUWeight=) when it changed, and logs and records the
//! reason. Raising is fast (a factor per interval) because a missed objective
//! hurts now; lowering is slow (a step after several calm intervals) and has
//! hysteresis, so that a weight that just fixed the latency is not taken
//! away at once and the cell does not oscillate around its objective.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// systemd's largest CPUWeight.
pub const CPU_WEIGHT_MAX: u64 = 10_000;

/// A cell's objective and the weight its manifest gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Objective {
    /// The cell's `runq-latency-p99`: 99 % of its waits to run must be shorter.
    pub runq_latency_p99: Duration,
    /// CPUWeight from the manifest (`cpu-min` x 100): the floor, and where the controller starts.
    pub manifest_weight: u64,
}

/// How the controller moves; [`Default`] holds the documented values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tuning {
    /// Factor applied per interval while the objective is missed (and divided by when lowering).
    pub step: f64,
    /// The weight never exceeds the manifest weight times this (nor [`CPU_WEIGHT_MAX`]).
    pub max_multiple: u64,
    /// A reading counts as calm when p99 is at most this fraction of the objective.
    pub calm_fraction: f64,
    /// Calm intervals in a row before each step down.
    pub calm_intervals: u32,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            step: 1.5,
            max_multiple: 10,
            calm_fraction: 0.75,
            calm_intervals: 3,
        }
    }
}

/// What the controller decided for one interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Decision {
    /// The weight before this interval.
    pub old_weight: u64,
    /// The weight to apply (equal to `old_weight` when nothing changes).
    pub new_weight: u64,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    /// Whether CPUWeight must be set.
    pub fn changed(&self) -> bool {
        self.new_weight != self.old_weight
    }
}

/// Why the weight moved or stayed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", rename_all_fields = "kebab-case", tag = "kind")]
pub enum Reason {
    /// p99 was above the objective: raised by a step.
    Missed {
        /// The reading, microseconds.
        p99_us: u64,
        /// The objective, microseconds.
        objective_us: u64,
    },
    /// p99 was above the objective, but the weight is at its ceiling already.
    MissedAtCeiling {
        /// The reading, microseconds.
        p99_us: u64,
        /// The objective, microseconds.
        objective_us: u64,
        /// The ceiling.
        ceiling: u64,
    },
    /// Met, but not by enough margin to count as calm: held, and the calm count restarts.
    Met {
        /// The reading, microseconds.
        p99_us: u64,
        /// The objective, microseconds.
        objective_us: u64,
    },
    /// Calm (or idle), but not for long enough yet, or already at the manifest weight.
    Calm {
        /// Calm intervals in a row so far.
        intervals: u32,
    },
    /// Calm for enough intervals: lowered by a step towards the manifest weight.
    Relaxed {
        /// Calm intervals in a row that allowed it.
        intervals: u32,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Missed { p99_us, objective_us } => {
                write!(f, "run-queue latency p99 {p99_us} us above the objective of {objective_us} us")
            }
            Reason::MissedAtCeiling {
                p99_us,
                objective_us,
                ceiling,
            } => write!(
                f,
                "run-queue latency p99 {p99_us} us above the objective of {objective_us} us, but the weight is at its ceiling of {ceiling}"
            ),
            Reason::Met { p99_us, objective_us } => {
                write!(
                    f,
                    "run-queue latency p99 {p99_us} us within the objective of {objective_us} us, without margin"
                )
            }
            Reason::Calm { intervals } => write!(f, "calm for {intervals} interval(s)"),
            Reason::Relaxed { intervals } => write!(f, "calm for {intervals} intervals: lowering the weight by a step"),
        }
    }
}

/// The state of one cell's feedback loop.
#[derive(Clone, Debug)]
pub struct Controller {
    objective: Objective,
    tuning: Tuning,
    floor: u64,
    ceiling: u64,
    weight: u64,
    calm: u32,
}

impl Controller {
    /// A controller starting at the manifest weight (clamped to systemd's 1..=10000).
    pub fn new(objective: Objective, tuning: Tuning) -> Controller {
        let floor = objective.manifest_weight.clamp(1, CPU_WEIGHT_MAX);
        let ceiling = floor.saturating_mul(tuning.max_multiple).clamp(floor, CPU_WEIGHT_MAX);
        Controller {
            objective,
            tuning,
            floor,
            ceiling,
            weight: floor,
            calm: 0,
        }
    }

    /// The weight now in force.
    pub fn weight(&self) -> u64 {
        self.weight
    }

    /// The highest weight it will give.
    pub fn ceiling(&self) -> u64 {
        self.ceiling
    }

    /// Feeds one interval's p99 run-queue latency; `None` when the cell's
    /// tasks did not wait at all (idle), which is as calm as it gets.
    pub fn observe(&mut self, p99: Option<Duration>) -> Decision {
        let old_weight = self.weight;
        let objective = self.objective.runq_latency_p99;
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let reason = match p99 {
            Some(p99) if p99 > objective => {
                self.calm = 0;
                let raised = ((self.weight as f64 * self.tuning.step).ceil() as u64).max(self.weight + 1);
                if self.weight >= self.ceiling {
                    Reason::MissedAtCeiling {
                        p99_us: us(p99),
                        objective_us: us(objective),
                        ceiling: self.ceiling,
                    }
                } else {
                    self.weight = raised.min(self.ceiling);
                    Reason::Missed {
                        p99_us: us(p99),
                        objective_us: us(objective),
                    }
                }
            }
            Some(p99) if p99.as_secs_f64() > objective.as_secs_f64() * self.tuning.calm_fraction => {
                self.calm = 0;
                Reason::Met {
                    p99_us: us(p99),
                    objective_us: us(objective),
                }
            }
            _ => {
                self.calm = self.calm.saturating_add(1);
                if self.calm >= self.tuning.calm_intervals && self.weight > self.floor {
                    let intervals = self.calm;
                    // Each step down needs a fresh run of calm intervals.
                    self.calm = 0;
                    self.weight = ((self.weight as f64 / self.tuning.step).floor() as u64).max(self.floor);
                    Reason::Relaxed { intervals }
                } else {
                    Reason::Calm { intervals: self.calm }
                }
            }
        };
        Decision {
            old_weight,
            new_weight: self.weight,
            reason,
        }
    }
}
