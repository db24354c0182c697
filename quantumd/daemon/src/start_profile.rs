//! Where a cell start's time goes inside quantumd: each stage of one `Run`,
//! from the D-Bus call arriving to systemd's answer, logged as one debug
//! event (target `quantumd::start_path`) per started instance.
//!
//! `RUST_LOG=info,quantumd::start_path=debug` turns it on; the bench's
//! profile (`quantum-bench --profile`) reads it from the journal and prints
//! the median of every stage. A log line, not spans: the stages cross three
//! tasks (the interface, the main loop, the start task) and the numbers are
//! wanted per start, in the journal of a VM, without a collector.

use std::time::{Duration, Instant};

pub const TARGET: &str = "quantumd::start_path";

/// The stages of one start, in the order they happen.
#[derive(Debug, Clone)]
pub struct StartProfile {
    begun: Instant,
    /// CLOCK_MONOTONIC at `begun`, in µs: the clock systemd's
    /// `ExecMainStartTimestampMonotonic` and a client's `time.monotonic`
    /// use, so that the stages line up with theirs.
    begun_monotonic_us: u64,
    last: Instant,
    stages: Vec<(&'static str, Duration)>,
}

impl StartProfile {
    /// Starts the clock when the call arrives.
    pub fn begin() -> StartProfile {
        let now = Instant::now();
        StartProfile {
            begun: now,
            begun_monotonic_us: monotonic_us(),
            last: now,
            stages: Vec::new(),
        }
    }

    /// Ends the stage `name`: the time since the previous mark.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.stages.push((name, now - self.last));
        self.last = now;
    }

    /// `authorize=312 queue=21 ...` in microseconds, then the total.
    pub fn render(&self) -> String {
        let mut text = String::new();
        for (name, took) in &self.stages {
            text.push_str(&format!("{name}={} ", took.as_micros()));
        }
        text.push_str(&format!("total={}", (self.last - self.begun).as_micros()));
        text
    }

    /// Logs the stages of `instance`'s start.
    pub fn log(&self, instance: &str) {
        if tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
            tracing::debug!(
                target: TARGET,
                instance,
                arrived_monotonic_us = self.begun_monotonic_us,
                total_us = (self.last - self.begun).as_micros() as u64,
                stages = %self.render(),
                "start path"
            );
        }
    }
}

fn monotonic_us() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_rendered_in_order_with_the_total_last() {
        let mut p = StartProfile::begin();
        p.mark("authorize");
        std::thread::sleep(Duration::from_millis(2));
        p.mark("plan");
        let text = p.render();
        let names: Vec<&str> = text.split(' ').map(|s| s.split('=').next().unwrap_or("")).collect();
        assert_eq!(names, ["authorize", "plan", "total"]);
        let plan: u128 = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.strip_prefix("plan="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(plan >= 2000, "{text}");
    }
}
