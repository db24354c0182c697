//! Reading the small text files the kernel exports (cgroupfs, procfs), with
//! errors that name the file and the line.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A kernel text file that could not be read or did not parse.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading failed for a reason other than the file being absent.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A line is not in the format the kernel documents.
    #[error("{path}:{line}: {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong with it.
        message: String,
    },
    /// A key every kernel writes is not there.
    #[error("{path}: no `{key}` line")]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
    },
}

/// Reads `path`; `Ok(None)` when the file is absent.
///
/// cgroupfs answers a read of a file whose controller is not enabled, or of
/// PSI when the kernel was booted with `psi=0`, with ENOENT or EOPNOTSUPP:
/// both mean "this figure does not exist here", not a failure.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, FileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(None),
        Err(source) => Err(FileError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reads `path`, which must exist.
pub(crate) fn read_required(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A parse failure at a line, before the file's path is attached.
#[derive(Debug, PartialEq)]
pub(crate) struct LineError {
    pub line: usize,
    pub message: String,
}

impl LineError {
    pub(crate) fn new(line: usize, message: impl Into<String>) -> Self {
        LineError {
            line,
            message: message.into(),
        }
    }

    pub(crate) fn in_file(self, path: &Path) -> FileError {
        FileError::Malformed {
            path: path.to_owned(),
            line: self.line,
            message: self.message,
        }
    }
}

/// Parses a decimal counter, naming the key in the error.
pub(crate) fn number<T: std::str::FromStr>(line: usize, key: &str, value: &str) -> Result<T, LineError> {
    value
        .parse()
        .map_err(|_| LineError::new(line, format!("`{key}`: `{value}` is not a number")))
}

/// Parses a file holding one number (`memory.current`, `pids.current`).
pub(crate) fn single_number(text: &str) -> Result<u64, LineError> {
    let value = text.trim_end_matches('\n');
    if value.contains('\n') {
        return Err(LineError::new(2, "expected a single line"));
    }
    number(1, "value", value)
}

/// Calls `f(line_number, key, value)` for every `key value` line (cpu.stat,
/// memory.events): the flat-keyed format of the cgroup v2 documentation.
pub(crate) fn flat_keyed(text: &str, mut f: impl FnMut(usize, &str, &str) -> Result<(), LineError>) -> Result<(), LineError> {
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(key), Some(value), None) => f(n, key, value)?,
            _ => return Err(LineError::new(n, format!("expected `KEY VALUE`, found `{line}`"))),
        }
    }
    Ok(())
}

/// A limit file (`memory.max`, `pids.max`): a number, or `max` for none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// No limit (`max`).
    Unlimited,
    /// The limit (bytes for memory, tasks for pids).
    Value(u64),
}

impl Limit {
    pub(crate) fn parse(text: &str) -> Result<Limit, LineError> {
        match text.trim_end_matches('\n') {
            "max" => Ok(Limit::Unlimited),
            other => single_number(other).map(Limit::Value),
        }
    }

    /// The limit as a float, `+inf` when unlimited (as Prometheus wants it).
    pub fn as_f64(self) -> f64 {
        match self {
            Limit::Unlimited => f64::INFINITY,
            Limit::Value(v) => v as f64,
        }
    }
}

// JSON: the number, or the string "max" exactly as the kernel writes it.
impl Serialize for Limit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Limit::Unlimited => s.serialize_str("max"),
            Limit::Value(v) => s.serialize_u64(*v),
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Limit, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Value(u64),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Value(v) => Ok(Limit::Value(v)),
            Raw::Word(w) if w == "max" => Ok(Limit::Unlimited),
            Raw::Word(w) => Err(serde::de::Error::custom(format!("expected a number or \"max\", found {w:?}"))),
        }
    }
}

/// One line of a PSI file: the share of wall time some (or all) tasks were
/// stalled on a resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PressureLine {
    /// Percent of the last 10 s.
    pub avg10: f64,
    /// Percent of the last 60 s.
    pub avg60: f64,
    /// Percent of the last 300 s.
    pub avg300: f64,
    /// Total stall time since boot (or cgroup creation), microseconds.
    pub total_usec: u64,
}

/// A PSI file (`cpu.pressure`, `/proc/pressure/io`, ...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Pressure {
    /// At least one task stalled.
    pub some: PressureLine,
    /// All non-idle tasks stalled at once; absent from the CPU file of older
    /// kernels and of the whole system (where it is meaningless).
    pub full: Option<PressureLine>,
}

impl Pressure {
    pub(crate) fn parse(text: &str) -> Result<Pressure, LineError> {
        let mut some = None;
        let mut full = None;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let slot = match words.next() {
                Some("some") => &mut some,
                Some("full") => &mut full,
                _ => return Err(LineError::new(n, format!("expected `some` or `full`, found `{line}`"))),
            };
            let mut parsed = PressureLine::default();
            let mut seen = 0u8;
            for word in words {
                let Some((key, value)) = word.split_once('=') else {
                    return Err(LineError::new(n, format!("expected `KEY=VALUE`, found `{word}`")));
                };
                match key {
                    "avg10" => parsed.avg10 = number(n, key, value)?,
                    "avg60" => parsed.avg60 = number(n, key, value)?,
                    "avg300" => parsed.avg300 = number(n, key, value)?,
                    "total" => parsed.total_usec = number(n, key, value)?,
                    // Later kernels may add fields; what we know is still right.
                    _ => continue,
                }
                seen += 1;
            }
            if seen != 4 {
                return Err(LineError::new(n, "expected avg10=, avg60=, avg300= and total="));
            }
            *slot = Some(parsed);
        }
        match some {
            Some(some) => Ok(Pressure { some, full }),
            None => Err(LineError::new(1, "no `some` line")),
        }
    }
}

/// The three PSI resources.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PressureSet {
    /// CPU pressure; `None` where PSI is off.
    pub cpu: Option<Pressure>,
    /// Memory pressure.
    pub memory: Option<Pressure>,
    /// IO pressure.
    pub io: Option<Pressure>,
}

impl PressureSet {
    /// Reads `<dir>/<prefix>cpu<suffix>` etc.: `cpu.pressure` in a cgroup,
    /// `pressure/cpu` under /proc.
    pub(crate) fn read(dir: &Path, name: impl Fn(&str) -> String) -> Result<PressureSet, FileError> {
        let one = |resource: &str| -> Result<Option<Pressure>, FileError> {
            let path = dir.join(name(resource));
            match read_optional(&path)? {
                None => Ok(None),
                Some(text) => Pressure::parse(&text).map(Some).map_err(|e| e.in_file(&path)),
            }
        };
        Ok(PressureSet {
            cpu: one("cpu")?,
            memory: one("memory")?,
            io: one("io")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_psi_file_has_a_some_line_and_maybe_a_full_line() {
        let p = Pressure::parse("some avg10=1.50 avg60=0.25 avg300=0.00 total=1234\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n");
        assert_eq!(
            p,
            Ok(Pressure {
                some: PressureLine {
                    avg10: 1.5,
                    avg60: 0.25,
                    avg300: 0.0,
                    total_usec: 1234
                },
                full: Some(PressureLine {
                    total_usec: 7,
                    ..PressureLine::default()
                }),
            })
        );
        assert_eq!(
            Pressure::parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").map(|p| p.full),
            Ok(None)
        );
    }

    #[test]
    fn a_psi_line_missing_a_field_is_malformed_at_its_line() {
        assert_eq!(
            Pressure::parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 total=0\n"),
            Err(LineError::new(2, "expected avg10=, avg60=, avg300= and total="))
        );
        assert_eq!(
            Pressure::parse("some avg10=x avg60=0.00 avg300=0.00 total=0\n"),
            Err(LineError::new(1, "`avg10`: `x` is not a number"))
        );
    }

    #[test]
    fn limits_are_a_number_or_max() {
        assert_eq!(Limit::parse("max\n"), Ok(Limit::Unlimited));
        assert_eq!(Limit::parse("268435456\n"), Ok(Limit::Value(268_435_456)));
        assert_eq!(Limit::parse("lots\n"), Err(LineError::new(1, "`value`: `lots` is not a number")));
        assert_eq!(
            serde_json::to_string(&[Limit::Unlimited, Limit::Value(5)]).ok(),
            Some(r#"["max",5]"#.to_owned())
        );
    }
}
