//! The recommender, specified on a synthetic but realistic history: 200
//! runs of an image-resize cell whose memory peaks are lognormal around
//! 60M, as batch jobs' are (most runs alike, a long tail of big inputs),
//! two of them OOM-killed at the 96M limit the cell had then. Every
//! expectation below is worked out by hand from the sorted figures the
//! test prints with `--nocapture`.

use quantum_psychology::{recommend, Bounds, Confidence, ExitKind, Policy, Sample};

const MIB: u64 = 1 << 20;

// The figures of the history below (printed by
// `the_figures_the_expectations_are_worked_out_from`), and what follows from
// them by hand.
/// The 198th of 200 sorted peaks: 108.25M.
const P99_PEAK: u64 = 113_509_376;
/// x 1.15 = 124.49M, up to the next multiple of 4M (the step between 64M and 1G).
const MEMORY_MAX: u64 = 128 * MIB;
/// The 100th of 200 sorted peaks: 61.04M.
const P50_PEAK: u64 = 64_005_120;
/// Down to the 1M step (below 64M).
const MEMORY_MIN: u64 = 61 * MIB;
/// The 180th of 200 sorted average cores.
const P90_CPU_AVERAGE: f64 = 0.299_706_415_629_437_5;
/// x 1.15 = 0.3447, up to 0.01.
const CPU_MIN: f64 = 0.35;
/// The 198th of 200 sorted busiest-second cores.
const P99_CPU_BUSIEST: f64 = 1.055_059_101_111_926_6;
/// x 1.15 = 1.2133, up to 0.05.
const CPU_MAX: f64 = 1.25;

/// splitmix64: a fixed-seed generator written here, so that the history
/// (and so every expectation) is the same on every machine and with every
/// version of every crate.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// Monday 2024-01-01 00:00 UTC.
const MONDAY: u64 = 1_704_067_200;

/// 200 runs, two an hour through working hours (08:00-17:59 UTC) on
/// weekdays, starting Monday 08:00.
fn history() -> Vec<Sample> {
    let mut rng = Rng(19);
    (0..200u64)
        .map(|i| {
            let day = i / 20;
            let hour = 8 + (i % 20) / 2;
            // Weekdays only: day 5 of the runs is the next Monday.
            let started_unix = MONDAY + (day / 5 * 7 + day % 5) * 86_400 + hour * 3600 + (i % 2) * 1800;
            // Memory: lognormal, median 60M, sigma 0.25, to the KiB.
            let peak = ((60.0 * MIB as f64) * (0.25 * rng.normal()).exp() / 1024.0).round() as u64 * 1024;
            // CPU: lognormal around 0.2 cores on average; the busiest
            // second 1.5-3x that.
            let average = 0.2 * (0.3 * rng.normal()).exp();
            let busiest = average * (1.5 + 1.5 * rng.uniform());
            let tasks = 2 + (rng.uniform() * 5.0) as u64;
            let oom = i == 50 || i == 150;
            Sample {
                started_unix,
                run_ms: 2_000 + (rng.uniform() * 8_000.0) as u64,
                exit: if oom { ExitKind::OomKilled } else { ExitKind::Exited },
                // An OOM-killed run was cut at the limit it had.
                memory_peak: Some(if oom { 96 * MIB } else { peak }),
                memory_p50: Some(peak / 2),
                memory_p95: Some(peak * 9 / 10),
                cpu_average_cores: Some(average),
                cpu_peak_cores: Some(busiest),
                runq_p99_us: Some(50 + (rng.uniform() * 200.0) as u64),
                tasks_peak: Some(tasks),
            }
        })
        .collect()
}

fn sorted(f: impl Fn(&Sample) -> f64) -> Vec<f64> {
    let mut v: Vec<f64> = history().iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    v
}

#[test]
fn the_figures_the_expectations_are_worked_out_from() {
    let mem = sorted(|s| {
        let p = s.memory_peak.unwrap() as f64;
        if s.exit == ExitKind::OomKilled {
            p * 1.2
        } else {
            p
        }
    });
    let avg = sorted(|s| s.cpu_average_cores.unwrap());
    let busiest = sorted(|s| s.cpu_peak_cores.unwrap());
    let tasks = sorted(|s| s.tasks_peak.unwrap() as f64);
    // Nearest rank of 200: p50 is the 100th, p90 the 180th, p99 the 198th.
    println!(
        "memory peaks (bytes) 100th {} 190th {} 198th {} 199th {} 200th {}",
        mem[99], mem[189], mem[197], mem[198], mem[199]
    );
    println!("cpu average 180th {}", avg[179]);
    println!("cpu busiest 198th {}", busiest[197]);
    println!("tasks max {}", tasks[199]);
    assert_eq!(mem.len(), 200);
}

#[test]
fn memory_max_is_the_p99_peak_plus_15_percent_rounded_up_to_4m() {
    let r = recommend("image-resize", &history(), &Policy::default());
    let m = r.evidence.memory_peak.expect("memory measured");
    assert_eq!(m.runs, 200);
    // The two OOM-killed runs count as 96M x 1.2 = 115.2M, above every
    // other run: they are the 199th and 200th, so p99 (the 198th) is the
    // largest run that was not killed.
    assert_eq!(m.max, 96.0 * MIB as f64 * 1.2);
    assert_eq!(m.p99, P99_PEAK as f64);
    // 1.15 x p99, up to the next multiple of 4M (between 64M and 1G).
    assert_eq!(r.resources.memory_max, Some(MEMORY_MAX));
    // memory-min: the median peak, down to the 1M step below it.
    assert_eq!(m.p50, P50_PEAK as f64);
    assert_eq!(r.resources.memory_min, Some(MEMORY_MIN));
}

#[test]
fn cpu_min_is_the_p90_average_and_cpu_max_the_p99_busiest_second_each_plus_15_percent() {
    let r = recommend("image-resize", &history(), &Policy::default());
    // The generator's figures go through ln, exp and cos, whose last bit
    // may differ between C libraries: the evidence is compared to 1e-12,
    // the rounded recommendation exactly.
    assert!((r.evidence.cpu_average.unwrap().p90 - P90_CPU_AVERAGE).abs() < 1e-12);
    assert_eq!(r.resources.cpu_min, Some(CPU_MIN));
    assert!((r.evidence.cpu_peak.unwrap().p99 - P99_CPU_BUSIEST).abs() < 1e-12);
    assert_eq!(r.resources.cpu_max, Some(CPU_MAX));
}

#[test]
fn tasks_max_covers_the_most_tasks_any_run_had_plus_15_percent() {
    let r = recommend("image-resize", &history(), &Policy::default());
    // At most 6 tasks: 6 x 1.15 = 6.9 -> 7, below the floor of 8.
    assert_eq!(r.evidence.tasks_peak.unwrap().max, 6.0);
    assert_eq!(r.resources.tasks_max, Some(8));
    assert!(
        r.evidence.notes.iter().any(|n| n == "tasks-max: raised from 7 to the floor 8"),
        "{:?}",
        r.evidence.notes
    );
}

#[test]
fn two_hundred_runs_give_high_confidence_and_the_evidence_says_when_and_how_they_ended() {
    let r = recommend("image-resize", &history(), &Policy::default());
    assert_eq!(r.samples, 200);
    assert_eq!(r.confidence, Confidence::High);
    assert_eq!(r.evidence.exits["exited"], 198);
    assert_eq!(r.evidence.exits["oom-killed"], 2);
    // Two runs an hour, 08:00-17:59, ten weekdays: every working hour of
    // the week has 4; the first three of Monday are shown.
    let hours: Vec<(u8, usize)> = r.evidence.busiest_hours.iter().map(|h| (h.hour_of_week, h.runs)).collect();
    assert_eq!(hours, [(8, 4), (9, 4), (10, 4)]);
}

#[test]
fn fewer_runs_than_the_minimum_is_not_enough_history_and_pasting_it_changes_nothing() {
    let few = &history()[..9];
    let r = recommend("image-resize", few, &Policy::default());
    assert_eq!(r.confidence, Confidence::NotEnoughHistory);
    let toml = r.to_toml();
    assert!(
        toml.contains("confidence not enough history (at least 10 runs are needed"),
        "{toml}"
    );
    // Every key is a comment; only the table header is live.
    let live: Vec<&str> = toml.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(live, ["[resources]"], "{toml}");
    assert_eq!(
        recommend("image-resize", &history()[..10], &Policy::default()).confidence,
        Confidence::Low
    );
}

#[test]
fn bounds_hold_the_recommendation_and_say_so() {
    let policy = Policy {
        bounds: Bounds {
            memory_ceiling: 64 * MIB,
            cpu_floor: 0.5,
            ..Bounds::default()
        },
        ..Policy::default()
    };
    let r = recommend("image-resize", &history(), &policy);
    assert_eq!(r.resources.memory_max, Some(64 * MIB));
    assert!(r.resources.memory_min.unwrap() <= 64 * MIB);
    assert_eq!(r.resources.cpu_min, Some(0.5));
    assert!(r.resources.cpu_max.unwrap() >= 0.5);
    assert!(
        r.evidence
            .notes
            .iter()
            .any(|n| n.starts_with("memory-max: held at the ceiling 64M")),
        "{:?}",
        r.evidence.notes
    );
}

#[test]
fn the_toml_is_a_resources_block_a_manifest_accepts() {
    let r = recommend("image-resize", &history(), &Policy::default());
    let toml = r.to_toml();
    let manifest = format!("[cell]\nname = \"image-resize\"\nversion = \"1.0.0\"\ndescription = \"x\"\nexec = [\"/bin/true\"]\n{toml}");
    let m = quantum_model::parse_manifest(&manifest).unwrap_or_else(|d| panic!("{d:?}\n{toml}"));
    assert_eq!(m.resources.memory_max.bytes(), MEMORY_MAX);
    assert_eq!(m.resources.cpu_max.as_f64(), CPU_MAX);
    let head: Vec<&str> = toml.lines().take(8).collect();
    assert_eq!(
        head,
        [
            "# Recommended for image-resize: 200 runs, confidence high",
            "[resources]",
            "cpu-min = 0.35",
            "cpu-max = 1.25",
            "memory-min = \"61M\"",
            "memory-max = \"128M\"",
            "tasks-max = 8",
            "# Evidence (margin +15 %):",
        ],
        "{toml}"
    );
    assert!(
        toml.contains("#   memory peak: p50 61.0M  p90 82.7M  p95 93.0M  p99 108.3M  max 115.2M  (200 runs)\n"),
        "{toml}"
    );
}

/// A run with nothing measured (too short for the sampler, no
/// controllers) still counts as a run, and says what is missing.
#[test]
fn runs_without_figures_count_but_recommend_nothing() {
    let bare: Vec<Sample> = (0..12)
        .map(|i| Sample {
            started_unix: MONDAY + i * 60,
            run_ms: 300,
            exit: ExitKind::Exited,
            memory_peak: None,
            memory_p50: None,
            memory_p95: None,
            cpu_average_cores: None,
            cpu_peak_cores: None,
            runq_p99_us: None,
            tasks_peak: None,
        })
        .collect();
    let r = recommend("dns-lookup", &bare, &Policy::default());
    assert_eq!(r.samples, 12);
    assert_eq!(r.resources, Default::default());
    assert_eq!(r.evidence.notes.len(), 3, "{:?}", r.evidence.notes);
    assert!(r.to_toml().contains("# (nothing measured yet)"));
}
