//! The evaluation set (tests/data/intents.tsv) and how a plan is scored
//! against it; shared by the test that holds the accuracy floor and by the
//! `intent-bench` benchmark.

use std::collections::BTreeMap;

use crate::plan::Plan;

/// One line of the evaluation set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub line: usize,
    pub intent: String,
    /// Expected cells in order; empty when the engine must refuse.
    pub cells: Vec<String>,
    /// Expected parameters: (cell, name) -> value.
    pub params: BTreeMap<(String, String), String>,
}

/// Parses the TSV: `intent TAB cells TAB params`, `#` comments.
pub fn parse(text: &str) -> Result<Vec<Case>, String> {
    let mut cases = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() || raw.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = raw.split('\t').collect();
        if cols.len() < 2 || cols.len() > 3 {
            return Err(format!("line {line}: expected 2 or 3 tab-separated columns, found {}", cols.len()));
        }
        let cells: Vec<String> = match cols[1].trim() {
            "-" => Vec::new(),
            list => list.split(',').map(|c| c.trim().to_owned()).collect(),
        };
        let mut params = BTreeMap::new();
        for pair in cols.get(2).map_or("", |c| c.trim()).split(';').filter(|p| !p.trim().is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("line {line}: parameter {pair:?} is not name=value"))?;
            let (cell, name) = match key.split_once('.') {
                Some((cell, name)) => (cell.to_owned(), name.to_owned()),
                None => (
                    cells
                        .first()
                        .cloned()
                        .ok_or_else(|| format!("line {line}: parameters for a refusal"))?,
                    key.to_owned(),
                ),
            };
            if !cells.contains(&cell) {
                return Err(format!("line {line}: parameter for {cell}, which is not expected"));
            }
            params.insert((cell, name), value.to_owned());
        }
        cases.push(Case {
            line,
            intent: cols[0].trim().to_owned(),
            cells,
            params,
        });
    }
    Ok(cases)
}

/// How a plan compares with a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Correct,
    /// Wrong cells (or a refusal where a plan was due, or the reverse).
    WrongCells {
        got: Vec<String>,
    },
    /// Right cells, but a parameter missing or with another value.
    WrongParams {
        problems: Vec<String>,
    },
}

pub fn judge(case: &Case, plan: &Plan) -> Outcome {
    let got: Vec<String> = plan.cells.iter().map(|c| c.name.clone()).collect();
    if got != case.cells {
        return Outcome::WrongCells { got };
    }
    let mut problems = Vec::new();
    for ((cell, name), want) in &case.params {
        let have = plan.cells.iter().find(|c| &c.name == cell).and_then(|c| c.params.get(name));
        match have {
            Some(v) if v == want => {}
            Some(v) => problems.push(format!("{cell}.{name}={v:?}, expected {want:?}")),
            None => problems.push(format!("{cell}.{name} missing, expected {want:?}")),
        }
    }
    if problems.is_empty() {
        Outcome::Correct
    } else {
        Outcome::WrongParams { problems }
    }
}

/// The scores of a run over the whole set.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub total: usize,
    pub correct: usize,
    /// Cases whose cells (or refusal) were right, parameters aside.
    pub cells_correct: usize,
    pub refusals_expected: usize,
    pub refusals_correct: usize,
    /// Refusals given where a plan was expected.
    pub false_refusals: usize,
    pub misses: Vec<String>,
}

/// One line: accuracy, cells right, refusals, false refusals.
impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1}% ({} of {}), cells right {:.1}%, refusals {} of {}, false refusals {}",
            100.0 * self.accuracy(),
            self.correct,
            self.total,
            100.0 * self.cell_accuracy(),
            self.refusals_correct,
            self.refusals_expected,
            self.false_refusals
        )
    }
}

impl Summary {
    pub fn add(&mut self, case: &Case, plan: &Plan) {
        self.total += 1;
        if case.cells.is_empty() {
            self.refusals_expected += 1;
        }
        if !case.cells.is_empty() && plan.cells.is_empty() {
            self.false_refusals += 1;
        }
        let outcome = judge(case, plan);
        let want = if case.cells.is_empty() {
            "-".to_owned()
        } else {
            case.cells.join(",")
        };
        match outcome {
            Outcome::Correct => {
                self.correct += 1;
                self.cells_correct += 1;
                if case.cells.is_empty() {
                    self.refusals_correct += 1;
                }
            }
            Outcome::WrongCells { got } => {
                let got = if got.is_empty() { "-".to_owned() } else { got.join(",") };
                self.misses.push(format!(
                    "line {}: {:?}: got {got} (confidence {:.2}), expected {want}",
                    case.line, case.intent, plan.confidence
                ));
            }
            Outcome::WrongParams { problems } => {
                self.cells_correct += 1;
                self.misses.push(format!(
                    "line {}: {:?}: {want} right, but {}",
                    case.line,
                    case.intent,
                    problems.join(", ")
                ));
            }
        }
    }

    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }

    pub fn cell_accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.cells_correct as f64 / self.total as f64
        }
    }
}
