//! One run of a cell, as the history keeps it, and its compact encoding.

use serde::{Deserialize, Serialize};

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitKind {
    /// It ended on its own, successfully.
    Exited,
    /// It ended on its own with a failure (non-zero status, a signal).
    Failed,
    /// Someone (or idleness, or a needing cell's end) stopped it.
    Stopped,
    /// The kernel's OOM killer ended a process of it: its memory peak is
    /// where the limit cut it, not what it wanted.
    OomKilled,
    /// A periodic sample of a run still going on.
    Running,
}

impl ExitKind {
    fn code(self) -> u8 {
        match self {
            ExitKind::Exited => 0,
            ExitKind::Failed => 1,
            ExitKind::Stopped => 2,
            ExitKind::OomKilled => 3,
            ExitKind::Running => 4,
        }
    }

    fn from_code(code: u8) -> Option<ExitKind> {
        Some(match code {
            0 => ExitKind::Exited,
            1 => ExitKind::Failed,
            2 => ExitKind::Stopped,
            3 => ExitKind::OomKilled,
            4 => ExitKind::Running,
            _ => return None,
        })
    }

    /// The word a person reads.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitKind::Exited => "exited",
            ExitKind::Failed => "failed",
            ExitKind::Stopped => "stopped",
            ExitKind::OomKilled => "oom-killed",
            ExitKind::Running => "running",
        }
    }
}

/// What one run of a cell used. A figure the host could not measure (no
/// memory controller, a run too short for the sampler to see) is `None`,
/// and the recommender leaves that run out of that figure only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Sample {
    /// When the run started, seconds since the Unix epoch.
    pub started_unix: u64,
    /// How long it ran, milliseconds.
    pub run_ms: u64,
    /// How it ended.
    pub exit: ExitKind,
    /// The highest memory use seen, bytes.
    pub memory_peak: Option<u64>,
    /// Median of the memory use seen during the run, bytes.
    pub memory_p50: Option<u64>,
    /// 95th percentile of the memory use seen during the run, bytes.
    pub memory_p95: Option<u64>,
    /// CPU cores used on average over the run (1.5 = one and a half cores).
    pub cpu_average_cores: Option<f64>,
    /// The busiest sampling interval's CPU cores.
    pub cpu_peak_cores: Option<f64>,
    /// 99th percentile run-queue latency, microseconds (quantumd gives
    /// the worst p99 of its one-second sampling intervals).
    pub runq_p99_us: Option<u64>,
    /// The most tasks (processes and threads) seen at once.
    pub tasks_peak: Option<u64>,
}

impl Sample {
    /// The hour of the week the run started in, in UTC: 0 is Monday
    /// 00:00-00:59, 167 Sunday 23:00-23:59. The node's local time zone is
    /// not known to a daemon without /etc/localtime parsing, and a fixed
    /// zone keeps the history meaningful when the zone changes.
    pub fn hour_of_week(&self) -> u8 {
        hour_of_week(self.started_unix)
    }
}

/// See [`Sample::hour_of_week`].
pub fn hour_of_week(unix_secs: u64) -> u8 {
    let hours = unix_secs / 3600;
    let days = hours / 24;
    // 1970-01-01 was a Thursday, day 3 of a week that starts on Monday.
    let weekday = (days + 3) % 7;
    (weekday * 24 + hours % 24) as u8
}

/// Why stored bytes are not a sample.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("sample of {0} bytes, expected {ENCODED_LEN}")]
    Length(usize),
    #[error("sample format version {0}, this build reads version {VERSION}")]
    Version(u8),
    #[error("unknown exit kind {0}")]
    Exit(u8),
}

/// The encoding's version: the first byte of every stored sample.
const VERSION: u8 = 1;
/// Version, exit kind, which optional figures are present, then nine
/// little-endian u64s.
pub(crate) const ENCODED_LEN: usize = 3 + 9 * 8;

impl Sample {
    /// 75 bytes: a thousand runs of a cell take 75 KB, and a fixed layout
    /// needs no serializer in the store's hot path.
    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let optional = [
            self.memory_peak,
            self.memory_p50,
            self.memory_p95,
            self.cpu_average_cores.map(f64::to_bits),
            self.cpu_peak_cores.map(f64::to_bits),
            self.runq_p99_us,
            self.tasks_peak,
        ];
        let mut present = 0u8;
        for (i, v) in optional.iter().enumerate() {
            if v.is_some() {
                present |= 1 << i;
            }
        }
        let mut out = [0u8; ENCODED_LEN];
        out[0] = VERSION;
        out[1] = self.exit.code();
        out[2] = present;
        let words = [self.started_unix, self.run_ms]
            .into_iter()
            .chain(optional.iter().map(|v| v.unwrap_or(0)));
        for (i, w) in words.enumerate() {
            out[3 + i * 8..3 + (i + 1) * 8].copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// The inverse of [`Sample::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Sample, DecodeError> {
        if bytes.len() != ENCODED_LEN {
            return Err(DecodeError::Length(bytes.len()));
        }
        if bytes[0] != VERSION {
            return Err(DecodeError::Version(bytes[0]));
        }
        let exit = ExitKind::from_code(bytes[1]).ok_or(DecodeError::Exit(bytes[1]))?;
        let present = bytes[2];
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[3 + i * 8..3 + (i + 1) * 8]);
            u64::from_le_bytes(w)
        };
        let opt = |i: usize| (present & (1 << i) != 0).then(|| word(2 + i));
        Ok(Sample {
            started_unix: word(0),
            run_ms: word(1),
            exit,
            memory_peak: opt(0),
            memory_p50: opt(1),
            memory_p95: opt(2),
            cpu_average_cores: opt(3).map(f64::from_bits),
            cpu_peak_cores: opt(4).map(f64::from_bits),
            runq_p99_us: opt(5),
            tasks_peak: opt(6),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_survives_its_encoding_with_absent_figures_absent() {
        let full = Sample {
            started_unix: 1_700_000_000,
            run_ms: 12_345,
            exit: ExitKind::OomKilled,
            memory_peak: Some(300 << 20),
            memory_p50: Some(100 << 20),
            memory_p95: Some(250 << 20),
            cpu_average_cores: Some(0.25),
            cpu_peak_cores: Some(1.75),
            runq_p99_us: Some(512),
            tasks_peak: Some(9),
        };
        assert_eq!(Sample::decode(&full.encode()), Ok(full.clone()));
        let bare = Sample {
            memory_peak: None,
            memory_p50: None,
            memory_p95: None,
            cpu_average_cores: None,
            cpu_peak_cores: None,
            runq_p99_us: None,
            tasks_peak: None,
            exit: ExitKind::Stopped,
            ..full
        };
        assert_eq!(Sample::decode(&bare.encode()), Ok(bare));
    }

    #[test]
    fn bytes_that_are_not_a_sample_say_why() {
        assert_eq!(Sample::decode(&[1, 2, 3]), Err(DecodeError::Length(3)));
        let mut b = [0u8; ENCODED_LEN];
        b[0] = 9;
        assert_eq!(Sample::decode(&b), Err(DecodeError::Version(9)));
        b[0] = VERSION;
        b[1] = 77;
        assert_eq!(Sample::decode(&b), Err(DecodeError::Exit(77)));
    }

    #[test]
    fn hours_of_the_week_start_on_monday_at_midnight_utc() {
        // 1970-01-01 00:00 UTC was a Thursday: hour 3 x 24.
        assert_eq!(hour_of_week(0), 72);
        // 2024-01-01 was a Monday; 13:30 UTC is hour 13.
        assert_eq!(hour_of_week(1_704_115_800), 13);
        // Sunday 2024-01-07 23:59:59 UTC is the last hour.
        assert_eq!(hour_of_week(1_704_671_999), 167);
    }
}
