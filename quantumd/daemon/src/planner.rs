//! STEPPPS PROMPT in the daemon: `Ask` turns plain words into a plan with
//! the intent engine (quantum-intent, the same crate `quantumctl ask --local`
//! runs in-process) and keeps the plan until the asker confirms it with
//! `Execute`. Nothing runs without that second call.
//!
//! The model is loaded once, in the background after start-up (so it does
//! not delay READY), and stays loaded; its load time and the time of its
//! first answer go to systemd's STATUS= and the log.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quantum_intent::{Config as IntentConfig, Engine, Plan};
use tokio::sync::OnceCell;

use crate::command::{error_chain, CommandError};

/// How long an asked plan waits for `Execute`.
pub const PLAN_LIFETIME: Duration = Duration::from_secs(600);
/// Plans kept at most (oldest dropped first), so that a client asking in a
/// loop cannot grow quantumd without bound.
const MAX_PLANS: usize = 256;

/// A plan waiting for its asker's confirmation.
#[derive(Debug, Clone)]
pub struct PendingPlan {
    pub plan: Plan,
    /// The unique bus name that asked: only the same connection may execute
    /// it, so one user cannot run a plan another user was shown.
    pub owner: String,
    asked: Instant,
}

pub struct Planner {
    config: IntentConfig,
    engine: OnceCell<Result<Arc<Engine>, String>>,
    plans: Mutex<HashMap<String, PendingPlan>>,
    /// What STATUS= says of the model, once loaded.
    status: Mutex<String>,
}

impl Planner {
    pub fn new(catalog: PathBuf, cache_dir: PathBuf) -> Planner {
        let mut config = IntentConfig::new(&catalog);
        config.cache_dir = Some(cache_dir);
        Planner {
            config,
            engine: OnceCell::new(),
            plans: Mutex::new(HashMap::new()),
            status: Mutex::new("intent model loading".into()),
        }
    }

    /// The model's line for STATUS=.
    pub fn status(&self) -> String {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads the model and the catalog embeddings (once; later calls wait
    /// for the first), then answers one request to warm it up and to
    /// measure the first answer.
    pub async fn engine(&self) -> Result<Arc<Engine>, CommandError> {
        let loaded = self
            .engine
            .get_or_init(|| async {
                let config = self.config.clone();
                let started = Instant::now();
                let result = tokio::task::spawn_blocking(move || {
                    let engine = Engine::load(&config).map_err(|e| error_chain(&e))?;
                    let first = Instant::now();
                    engine.ask("serve this folder on port 8080").map_err(|e| error_chain(&e))?;
                    Ok::<_, String>((Arc::new(engine), first.elapsed()))
                })
                .await
                .unwrap_or_else(|e| Err(format!("the intent engine panicked while loading: {e}")));
                let status = match &result {
                    Ok((engine, first)) => {
                        let report = engine.load_report();
                        tracing::info!(
                            model = %engine.encoder().dir().display(),
                            model_ms = report.model.as_millis() as u64,
                            catalog_ms = report.catalog.as_millis() as u64,
                            first_answer_ms = first.as_millis() as u64,
                            total_ms = started.elapsed().as_millis() as u64,
                            "intent model loaded"
                        );
                        format!(
                            "intent model loaded in {} ms, catalog in {} ms, first answer in {} ms",
                            report.model.as_millis(),
                            report.catalog.as_millis(),
                            first.as_millis()
                        )
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "no intent engine: Ask will fail until it can load");
                        format!("no intent model: {e}")
                    }
                };
                *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
                result.map(|(engine, _)| engine)
            })
            .await;
        loaded
            .clone()
            .map_err(|e| CommandError::Backend(format!("the intent engine is not available: {e}")))
    }

    /// Plans `intent` for `owner`; returns the plan and, unless it is a
    /// refusal, the id that `execute` takes.
    pub async fn ask(&self, intent: String, owner: &str) -> Result<(Plan, Option<String>), CommandError> {
        if intent.trim().is_empty() {
            return Err(CommandError::Invalid("the request is empty: say what you need".into()));
        }
        let engine = self.engine().await?;
        let plan = tokio::task::spawn_blocking(move || engine.ask(&intent))
            .await
            .map_err(|e| CommandError::Backend(format!("the intent engine panicked: {e}")))?
            .map_err(|e| CommandError::Backend(error_chain(&e)))?;
        if plan.is_refusal() {
            return Ok((plan, None));
        }
        let id = plan_id(&plan, owner);
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        plans.retain(|_, p| p.asked.elapsed() < PLAN_LIFETIME);
        if plans.len() >= MAX_PLANS {
            if let Some(oldest) = plans.iter().min_by_key(|(_, p)| p.asked).map(|(k, _)| k.clone()) {
                plans.remove(&oldest);
            }
        }
        plans.insert(
            id.clone(),
            PendingPlan {
                plan: plan.clone(),
                owner: owner.to_owned(),
                asked: Instant::now(),
            },
        );
        Ok((plan, Some(id)))
    }

    /// Takes the plan `id` for execution by `caller`: it must exist, not be
    /// stale, belong to the caller and need no missing parameter.
    pub fn take(&self, id: &str, caller: &str) -> Result<Plan, CommandError> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        let unknown = || {
            CommandError::NotFound(format!(
                "no plan \"{id}\": it was never asked, already executed, or older than 10 minutes"
            ))
        };
        let pending = plans.get(id).ok_or_else(unknown)?;
        if pending.asked.elapsed() >= PLAN_LIFETIME {
            plans.remove(id);
            return Err(unknown());
        }
        if pending.owner != caller {
            return Err(CommandError::Denied(format!(
                "plan \"{id}\" was asked on another connection; ask again to get your own plan"
            )));
        }
        if let Some(step) = pending.plan.cells.iter().find(|c| !c.missing.is_empty()) {
            return Err(CommandError::Invalid(format!(
                "the plan cannot run: cell \"{}\" needs {} (give {} with `quantumctl run {}`)",
                step.name,
                step.missing.join(", "),
                if step.missing.len() == 1 { "it" } else { "them" },
                step.name
            )));
        }
        let plan = pending.plan.clone();
        plans.remove(id);
        Ok(plan)
    }
}

/// A plan id: unguessable by other callers is not needed (plans are bound
/// to their asker), unique is; blake3 of the plan, the asker and the time.
fn plan_id(plan: &Plan, owner: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(owner.as_bytes());
    h.update(plan.intent.as_bytes());
    h.update(
        &std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes(),
    );
    h.finalize().to_hex()[..16].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use quantum_intent::PlannedCell;

    fn planner_with(plan: Plan, owner: &str) -> (Planner, String) {
        let p = Planner::new("/nonexistent".into(), "/nonexistent".into());
        let id = plan_id(&plan, owner);
        p.plans.lock().unwrap().insert(
            id.clone(),
            PendingPlan {
                plan,
                owner: owner.into(),
                asked: Instant::now(),
            },
        );
        (p, id)
    }

    fn plan(missing: &[&str]) -> Plan {
        Plan {
            intent: "serve this on port 8080".into(),
            cells: vec![PlannedCell {
                name: "web-server".into(),
                params: [("port".to_owned(), "8080".to_owned())].into(),
                missing: missing.iter().map(|s| s.to_string()).collect(),
                defaults: Default::default(),
            }],
            confidence: 0.9,
            reason: None,
        }
    }

    #[test]
    fn only_the_asking_connection_may_execute_a_plan_and_only_once() {
        let (p, id) = planner_with(plan(&[]), ":1.7");
        let err = p.take(&id, ":1.8").unwrap_err();
        assert!(matches!(err, CommandError::Denied(_)), "{err}");
        assert_eq!(p.take(&id, ":1.7").unwrap().cells[0].name, "web-server");
        let again = p.take(&id, ":1.7").unwrap_err();
        assert!(matches!(again, CommandError::NotFound(_)), "{again}");
    }

    #[test]
    fn a_plan_with_a_missing_parameter_is_refused_naming_it() {
        let (p, id) = planner_with(plan(&["dir"]), ":1.7");
        let err = p.take(&id, ":1.7").unwrap_err().to_string();
        assert_eq!(
            err,
            "the plan cannot run: cell \"web-server\" needs dir (give it with `quantumctl run web-server`)"
        );
    }

    #[test]
    fn an_unknown_plan_id_is_not_found() {
        let (p, _) = planner_with(plan(&[]), ":1.7");
        assert!(matches!(p.take("0123456789abcdef", ":1.7"), Err(CommandError::NotFound(_))));
    }
}
