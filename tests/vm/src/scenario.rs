//! Named scenarios run in sequence on one booted guest, each reported as it
//! finishes, so that one slow boot serves a whole test binary and a failure
//! in one scenario does not hide the results of the others.

use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::guest::Guest;

struct Outcome {
    name: String,
    took: Duration,
    error: Option<String>,
}

/// Runs scenarios against one guest and keeps score.
pub struct Scenarios<'g> {
    guest: &'g Guest,
    outcomes: Vec<Outcome>,
}

impl<'g> Scenarios<'g> {
    pub fn new(guest: &'g Guest) -> Scenarios<'g> {
        Scenarios {
            guest,
            outcomes: Vec::new(),
        }
    }

    /// Runs one scenario; an error or a panic fails it, and the next
    /// scenario runs anyway. `QUANTUM_VMTEST_ONLY=WORD[,WORD...]` runs only
    /// the scenarios whose name contains one of the words (for working on
    /// one scenario without waiting for all the others).
    pub fn run(&mut self, name: &str, scenario: impl FnOnce(&Guest) -> Result<()>) {
        let backend = self.guest.backend();
        if let Ok(only) = std::env::var("QUANTUM_VMTEST_ONLY") {
            if !only.split(',').any(|w| !w.is_empty() && name.contains(w)) {
                crate::report(format_args!("[{backend}] scenario {name} ... skipped (QUANTUM_VMTEST_ONLY={only})"));
                return;
            }
        }
        let started = Instant::now();
        let result = panic::catch_unwind(AssertUnwindSafe(|| scenario(self.guest)));
        let took = started.elapsed();
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(panic) => Some(
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "panicked".to_owned()),
            ),
        };
        match &error {
            None => crate::report(format_args!("[{backend}] scenario {name} ... ok ({:.1} s)", took.as_secs_f64())),
            Some(e) => crate::report(format_args!(
                "[{backend}] scenario {name} ... FAILED ({:.1} s)\n{e}",
                took.as_secs_f64()
            )),
        }
        self.outcomes.push(Outcome {
            name: name.to_owned(),
            took,
            error,
        });
    }

    /// Prints the summary; when a scenario failed, prints the guest's
    /// diagnostics and returns an error naming the failed scenarios.
    pub fn finish(self) -> Result<()> {
        let backend = self.guest.backend();
        let failed: Vec<&Outcome> = self.outcomes.iter().filter(|o| o.error.is_some()).collect();
        let total: Duration = self.outcomes.iter().map(|o| o.took).sum();
        crate::report(format_args!(
            "[{backend}] scenarios: {} ok, {} failed, in {:.1} s",
            self.outcomes.len() - failed.len(),
            failed.len(),
            total.as_secs_f64()
        ));
        if failed.is_empty() {
            return Ok(());
        }
        crate::report(format_args!("[{backend}] diagnostics\n{}", self.guest.diagnostics()));
        // The errors again after the diagnostics: CI shows a run's tail, and
        // the guest's diagnostics push the scenarios' own lines out of it.
        let errors: Vec<String> = failed
            .iter()
            .map(|o| format!("{}: {}", o.name, head_chars(o.error.as_deref().unwrap_or(""), 800)))
            .collect();
        bail!("[{backend}] failed scenarios:\n{}", errors.join("\n"))
    }
}

/// The first `max` characters of `text` (an error's context comes first).
fn head_chars(text: &str, max: usize) -> &str {
    text.char_indices().nth(max).map_or(text, |(i, _)| &text[..i])
}
