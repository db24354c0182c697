//! Validated quantities used by manifests: sizes, CPU shares and durations.

use std::fmt;
use std::str::FromStr;

/// Quantities serialize as the text a manifest would use (`"256M"`, `"5m"`, `0.5`).
macro_rules! serialize_as_display {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serialize_as_display!(ByteSize, Duration, Latency);

impl serde::Serialize for CpuCores {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_f64())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(String);

/// A size in bytes, written as a number with an optional K/M/G/T suffix (base 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let bad = || {
            UnitError(format!(
                "{s:?} is not a size: use a whole number with an optional K, M, G or T suffix (base 1024), e.g. \"256M\""
            ))
        };
        let (digits, mult) = match s.as_bytes().last() {
            Some(b'K' | b'k') => (&s[..s.len() - 1], 1u64 << 10),
            Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
            Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
            Some(b'T' | b't') => (&s[..s.len() - 1], 1 << 40),
            _ => (s, 1),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| UnitError(format!("{s:?} is too large")))
    }
}

impl fmt::Display for ByteSize {
    /// The largest exact unit: 268435456 -> "256M".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (suffix, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
            if n != 0 && n.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{}", n >> shift, suffix);
            }
        }
        write!(f, "{n}")
    }
}

/// CPU capacity in cores (1.0 = one full core), stored in hundredths so that
/// sums and comparisons are exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct CpuCores(u32);

impl CpuCores {
    pub const fn from_centis(c: u32) -> Self {
        CpuCores(c)
    }
    pub fn centis(self) -> u32 {
        self.0
    }
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl TryFrom<f64> for CpuCores {
    type Error = UnitError;
    fn try_from(v: f64) -> Result<Self, UnitError> {
        if !v.is_finite() || v <= 0.0 {
            return Err(UnitError(format!("{v} cores is not allowed: must be greater than 0")));
        }
        if v > 4096.0 {
            return Err(UnitError(format!("{v} cores is more than any machine has (at most 4096)")));
        }
        let centis = (v * 100.0).round() as u32;
        if centis == 0 {
            return Err(UnitError(format!("{v} cores is below the smallest share, 0.01")));
        }
        Ok(CpuCores(centis))
    }
}

impl fmt::Display for CpuCores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(100) {
            write!(f, "{}", self.0 / 100)
        } else {
            write!(f, "{}", self.as_f64())
        }
    }
}

/// A duration in whole seconds, written as a sequence of `<n>h`, `<n>m`,
/// `<n>s` (e.g. "90s", "1h30m"), or "0".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Duration(pub u64);

impl Duration {
    pub fn secs(self) -> u64 {
        self.0
    }
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0)
    }
}

impl FromStr for Duration {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let bad = || {
            UnitError(format!(
                "{s:?} is not a duration: use numbers with s, m or h, e.g. \"30s\", \"5m\", \"1h30m\", or \"0\""
            ))
        };
        if s == "0" {
            return Ok(Duration(0));
        }
        let mut total: u64 = 0;
        let mut digits = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let mult = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                _ => return Err(bad()),
            };
            if digits.is_empty() {
                return Err(bad());
            }
            let n: u64 = digits.parse().map_err(|_| bad())?;
            total = n.checked_mul(mult).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
            digits.clear();
        }
        if !digits.is_empty() || s.is_empty() {
            return Err(bad());
        }
        Ok(Duration(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (h, m, s) = (self.0 / 3600, self.0 % 3600 / 60, self.0 % 60);
        if self.0 == 0 {
            return write!(f, "0");
        }
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

/// A short latency for objectives: a whole number of microseconds,
/// milliseconds or seconds (`"500us"`, `"5ms"`, `"1s"`), between 1 µs and 10 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Latency(pub std::time::Duration);

impl Latency {
    const MAX: std::time::Duration = std::time::Duration::from_secs(10);

    pub fn as_std(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Latency {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let bad = || {
            UnitError(format!(
                "{s:?} is not a latency: use a whole number with us, ms or s, e.g. \"500us\", \"5ms\""
            ))
        };
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let d = match unit {
            "us" => std::time::Duration::from_micros(n),
            "ms" => std::time::Duration::from_millis(n),
            "s" => std::time::Duration::from_secs(n),
            _ => return Err(bad()),
        };
        if d.is_zero() || d > Latency::MAX {
            return Err(UnitError(format!("{s:?} is out of range: between 1us and 10s")));
        }
        Ok(Latency(d))
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_micros();
        if us.is_multiple_of(1_000_000) {
            write!(f, "{}s", us / 1_000_000)
        } else if us.is_multiple_of(1000) {
            write!(f, "{}ms", us / 1000)
        } else {
            write!(f, "{us}us")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_are_short_whole_units() {
        for (text, us) in [("500us", 500), ("5ms", 5000), ("1s", 1_000_000), ("10s", 10_000_000)] {
            let l: Latency = text.parse().unwrap();
            assert_eq!(l.0.as_micros(), us, "{text}");
            assert_eq!(l.to_string(), text);
        }
        for bad in ["", "5", "ms", "1.5ms", "0ms", "11s", "5 ms", "-1ms", "5m"] {
            assert!(bad.parse::<Latency>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sizes_use_base_1024_suffixes() {
        assert_eq!("256M".parse::<ByteSize>(), Ok(ByteSize(256 << 20)));
        assert_eq!("1G".parse::<ByteSize>(), Ok(ByteSize(1 << 30)));
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert_eq!("2k".parse::<ByteSize>(), Ok(ByteSize(2048)));
        for bad in ["", "M", "1.5G", "12Q", "-1M", " 1M", "99999999999T"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} must be rejected");
        }
        assert_eq!(ByteSize(256 << 20).to_string(), "256M");
        assert_eq!(ByteSize(1536).to_string(), "1536");
    }

    #[test]
    fn durations_add_up_their_parts() {
        assert_eq!("0".parse::<Duration>(), Ok(Duration(0)));
        assert_eq!("5m".parse::<Duration>(), Ok(Duration(300)));
        assert_eq!("1h30m".parse::<Duration>(), Ok(Duration(5400)));
        assert_eq!("45s".parse::<Duration>(), Ok(Duration(45)));
        for bad in ["", "5", "m", "5d", "1.5h", "h5", "5 m"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} must be rejected");
        }
        assert_eq!(Duration(5400).to_string(), "1h30m");
    }

    #[test]
    fn cpu_cores_are_positive_hundredths() {
        assert_eq!(CpuCores::try_from(0.5).map(CpuCores::centis), Ok(50));
        assert_eq!(CpuCores::try_from(1.0).map(|c| c.to_string()), Ok("1".to_owned()));
        assert!(CpuCores::try_from(0.0).is_err());
        assert!(CpuCores::try_from(-1.0).is_err());
        assert!(CpuCores::try_from(f64::NAN).is_err());
        assert!(CpuCores::try_from(0.001).is_err());
    }
}
