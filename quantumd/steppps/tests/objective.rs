//! The run-queue latency objective controller, step by step.

use std::time::Duration;

use quantum_steppps::objective::{Controller, Decision, Objective, Reason, Tuning};

const OBJECTIVE: Duration = Duration::from_millis(2);

fn controller(manifest_weight: u64) -> Controller {
    Controller::new(
        Objective {
            runq_latency_p99: OBJECTIVE,
            manifest_weight,
        },
        Tuning::default(),
    )
}

fn ms(n: u64) -> Option<Duration> {
    Some(Duration::from_millis(n))
}

/// Feeds readings and returns the weight after each.
fn weights(c: &mut Controller, readings: &[Option<Duration>]) -> Vec<u64> {
    readings.iter().map(|&p99| c.observe(p99).new_weight).collect()
}

#[test]
fn it_starts_at_the_manifest_weight_and_holds_while_the_objective_is_met_with_margin() {
    let mut c = controller(100);
    assert_eq!(c.weight(), 100);
    let d = c.observe(ms(1));
    assert_eq!(
        d,
        Decision {
            old_weight: 100,
            new_weight: 100,
            reason: Reason::Calm { intervals: 1 }
        }
    );
    assert!(!d.changed());
}

#[test]
fn each_missed_interval_raises_the_weight_by_half() {
    let mut c = controller(100);
    let d = c.observe(ms(5));
    assert_eq!(
        d,
        Decision {
            old_weight: 100,
            new_weight: 150,
            reason: Reason::Missed {
                p99_us: 5000,
                objective_us: 2000
            }
        }
    );
    assert!(d.changed());
    assert_eq!(d.reason.to_string(), "run-queue latency p99 5000 us above the objective of 2000 us");
    assert_eq!(weights(&mut c, &[ms(5), ms(5), ms(5)]), [225, 338, 507]);
}

#[test]
fn the_weight_stops_at_ten_times_the_manifest_weight() {
    let mut c = controller(100);
    assert_eq!(c.ceiling(), 1000);
    assert_eq!(weights(&mut c, &[ms(9); 8]), [150, 225, 338, 507, 761, 1000, 1000, 1000]);
    assert_eq!(
        c.observe(ms(9)).reason,
        Reason::MissedAtCeiling {
            p99_us: 9000,
            objective_us: 2000,
            ceiling: 1000
        }
    );
}

#[test]
fn the_weight_never_exceeds_systemds_maximum() {
    let mut c = controller(2000);
    assert_eq!(c.ceiling(), 10_000, "not 20000");
    assert_eq!(weights(&mut c, &[ms(9); 5]), [3000, 4500, 6750, 10_000, 10_000]);
}

#[test]
fn a_tiny_weight_still_moves() {
    // 1 x 1.5 rounds up to 2, not back to 1.
    let mut c = controller(1);
    assert_eq!(weights(&mut c, &[ms(9); 6]), [2, 3, 5, 8, 10, 10]);
}

#[test]
fn it_steps_down_only_after_three_calm_intervals_in_a_row_and_never_below_the_manifest_weight() {
    let mut c = controller(100);
    weights(&mut c, &[ms(5), ms(5), ms(5)]); // 338
    assert_eq!(c.weight(), 338);
    // 1 ms is calm (at most 75 % of 2 ms); no samples at all (idle) is calm too.
    let readings = [ms(1), None, ms(1), ms(1), ms(1), ms(1), ms(1), ms(1), ms(1), ms(1), ms(1), ms(1)];
    assert_eq!(
        weights(&mut c, &readings),
        [338, 338, 225, 225, 225, 150, 150, 150, 100, 100, 100, 100]
    );
    assert_eq!(c.observe(ms(1)).reason, Reason::Calm { intervals: 4 });
}

#[test]
fn a_reading_just_under_the_objective_holds_and_restarts_the_calm_count() {
    let mut c = controller(100);
    weights(&mut c, &[ms(5)]); // 150
    let close = Some(Duration::from_micros(1800));
    assert_eq!(
        c.observe(close).reason,
        Reason::Met {
            p99_us: 1800,
            objective_us: 2000
        }
    );
    // Two calm, one close, then three calm: the step down comes only after the full run of three.
    assert_eq!(
        weights(&mut c, &[ms(1), ms(1), close, ms(1), ms(1), ms(1)]),
        [150, 150, 150, 150, 150, 100]
    );
    assert_eq!(
        c.observe(ms(1)).reason,
        Reason::Calm { intervals: 1 },
        "at the manifest weight there is nothing to lower"
    );
}

#[test]
fn a_miss_during_the_calm_run_raises_again_and_restarts_the_count() {
    let mut c = controller(100);
    weights(&mut c, &[ms(5), ms(5)]); // 225
    assert_eq!(
        weights(&mut c, &[ms(1), ms(1), ms(3), ms(1), ms(1), ms(1)]),
        [225, 225, 338, 338, 338, 225]
    );
}

#[test]
fn decisions_serialize_for_the_trail() {
    let mut c = controller(100);
    let json = serde_json::to_string(&c.observe(ms(5))).expect("serializable");
    assert_eq!(
        json,
        r#"{"old-weight":100,"new-weight":150,"reason":{"kind":"missed","p99-us":5000,"objective-us":2000}}"#
    );
}
