//! Which cells are likely to be asked for soon, from when they were asked
//! for before: the runs that started in this hour of the week or the next
//! one over the last four weeks (a weekly rhythm: the Monday-morning
//! report) or in the last hour (a burst going on), each run counted once. Counts, not a
//! model: a person can check a prediction against `quantumctl recommend`'s
//! busiest hours, and a cell nobody ran lately is never predicted.

use crate::sample::{hour_of_week, Sample};

/// How far back the weekly rhythm looks.
pub const WEEKS: u64 = 4;
const WEEK_SECS: u64 = 7 * 24 * 3600;

/// A cell predicted to be asked for within the hour, and the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    pub cell: String,
    /// Runs that started in this or the next hour of the week, in the last
    /// [`WEEKS`] weeks.
    pub weekly: usize,
    /// Runs that started in the last hour.
    pub recent: usize,
    /// Runs that are either (each counted once).
    pub runs: usize,
}

impl Demand {
    pub fn score(&self) -> usize {
        self.runs
    }

    /// The evidence in words, for the trail.
    pub fn why(&self) -> String {
        format!(
            "predicted: {} run(s) in this hour of the week or the next over the last {WEEKS} weeks or in the last hour ({} in the last hour)",
            self.runs, self.recent
        )
    }
}

/// The cells whose score reaches `min_runs`, most wanted first (ties by
/// name, so the choice is deterministic).
pub fn predict<'a>(history: impl IntoIterator<Item = (&'a str, &'a [Sample])>, now_unix: u64, min_runs: usize) -> Vec<Demand> {
    let this_hour = hour_of_week(now_unix);
    let next_hour = (this_hour + 1) % 168;
    let since = now_unix.saturating_sub(WEEKS * WEEK_SECS);
    let mut out: Vec<Demand> = history
        .into_iter()
        .map(|(cell, samples)| {
            let in_window = |s: &&Sample| s.started_unix >= since && s.started_unix <= now_unix;
            let weekly = samples
                .iter()
                .filter(in_window)
                .filter(|s| matches!(s.hour_of_week(), h if h == this_hour || h == next_hour))
                .count();
            let is_recent = |s: &&Sample| now_unix - s.started_unix < 3600;
            let is_weekly = |s: &&Sample| matches!(s.hour_of_week(), h if h == this_hour || h == next_hour);
            let recent = samples.iter().filter(in_window).filter(is_recent).count();
            let runs = samples.iter().filter(in_window).filter(|s| is_recent(s) || is_weekly(s)).count();
            Demand {
                cell: cell.to_owned(),
                weekly,
                recent,
                runs,
            }
        })
        .filter(|d| d.runs >= min_runs.max(1))
        .collect();
    out.sort_by(|a, b| b.score().cmp(&a.score()).then_with(|| a.cell.cmp(&b.cell)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::ExitKind;

    fn run(started_unix: u64) -> Sample {
        Sample {
            started_unix,
            run_ms: 1000,
            exit: ExitKind::Exited,
            memory_peak: None,
            memory_p50: None,
            memory_p95: None,
            cpu_average_cores: None,
            cpu_peak_cores: None,
            runq_p99_us: None,
            tasks_peak: None,
        }
    }

    /// Monday 2026-11-30 09:10 UTC.
    const MONDAY_0910: u64 = 1_796_029_800;

    #[test]
    fn a_weekly_rhythm_is_predicted_for_its_hour_and_the_hour_before() {
        // A report run every Monday at 09:30 for three weeks; a backup every
        // night at 02:00.
        let report: Vec<Sample> = (1..=3).map(|w| run(MONDAY_0910 - w * WEEK_SECS + 20 * 60)).collect();
        let backup: Vec<Sample> = (1..=20).map(|d| run(MONDAY_0910 - d * 24 * 3600 - 7 * 3600 - 10 * 60)).collect();
        let history = [("report", report.as_slice()), ("backup", backup.as_slice())];
        assert_eq!(hour_of_week(MONDAY_0910), 9, "Monday 09:xx is hour 9 of the week");
        let at_nine = predict(history, MONDAY_0910, 3);
        assert_eq!(at_nine.len(), 1, "{at_nine:?}");
        assert_eq!((at_nine[0].cell.as_str(), at_nine[0].weekly), ("report", 3));
        // An hour before, the next hour is 09:00: still predicted.
        assert_eq!(predict(history, MONDAY_0910 - 3600, 3).len(), 1);
        // At noon nothing is due.
        assert!(predict(history, MONDAY_0910 + 3 * 3600, 3).is_empty());
    }

    #[test]
    fn a_burst_in_the_last_hour_counts_and_old_runs_do_not() {
        let burst: Vec<Sample> = (1..=3).map(|m| run(MONDAY_0910 - m * 600)).collect();
        let ancient: Vec<Sample> = (5..=8).map(|w| run(MONDAY_0910 - w * WEEK_SECS)).collect();
        let history = [("burst", burst.as_slice()), ("ancient", ancient.as_slice())];
        let d = predict(history, MONDAY_0910, 3);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].cell, "burst");
        assert_eq!(d[0].recent, 3);
        assert_eq!(d[0].runs, 3, "a run that is recent and in this hour counts once");
        assert!(d[0].why().contains("(3 in the last hour)"), "{}", d[0].why());
    }
}
