//! Triggers in the main loop: arming them, answering `trigger add|remove|
//! list`, and running a trigger's cell when it fires (see `crate::triggers`
//! for what fires when).

use std::collections::HashMap;
use std::time::Instant;

use quantum_bus::TriggerInfo;
use quantum_model::trigger::{EventState, On};
use quantum_model::Trigger;
use quantum_trail::Action;

use super::{Cells, Event};
use crate::command::{CommandError, Reply, RunRequest};
use crate::runtime::{Exit, RuntimeError};
use crate::start_profile::StartProfile;
use crate::trail;
use crate::triggers::{trigger_of_unit, unit_names, Armed, TriggerError};

fn info(a: &Armed) -> TriggerInfo {
    let t = &a.trigger;
    TriggerInfo {
        name: t.name.as_str().to_owned(),
        description: t.description.clone(),
        cell: t.cell.clone(),
        params: t.params.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        on: t.on.to_string(),
        armed_by: match unit_names(t.name.as_str(), &t.on) {
            Some((unit, _)) => format!("systemd ({unit})"),
            None => "quantumd".to_owned(),
        },
        origin: a.origin.display().to_string(),
        added_by: a.added_by.clone(),
        fired: a.fired,
        last_fired_usec: a.last_fired_usec,
        last_result: a.last_result.clone(),
    }
}

impl From<TriggerError> for CommandError {
    fn from(e: TriggerError) -> Self {
        match e {
            TriggerError::Invalid(m) => CommandError::Invalid(m),
            TriggerError::NotFound(_) => CommandError::NotFound(e.to_string()),
            TriggerError::Exists { .. } | TriggerError::Admin { .. } => CommandError::Refused(e.to_string()),
            TriggerError::Io { .. } => CommandError::Backend(crate::command::error_chain(&e)),
        }
    }
}

impl Cells {
    /// Arms every trigger systemd keeps, and stops trigger units whose
    /// trigger is gone (removed while quantumd was down). A trigger that
    /// cannot be armed is said in its `last_result` and the log; the others
    /// still are.
    pub async fn arm_triggers(&mut self) {
        let names: Vec<(String, On, String)> = self
            .triggers
            .all()
            .filter(|a| a.by_systemd())
            .map(|a| (a.trigger.name.as_str().to_owned(), a.trigger.on.clone(), description(&a.trigger)))
            .collect();
        for (name, on, description) in &names {
            if let Err(e) = self.runtime.arm_trigger(name, on, description).await {
                let why = format!("not armed: {}", crate::command::error_chain(&e));
                tracing::warn!(trigger = name, error = why, "trigger not armed");
                self.triggers.ran(name, why);
            }
        }
        match self.runtime.trigger_units().await {
            Ok(units) => {
                for unit in units {
                    let known = trigger_of_unit(&unit)
                        .and_then(|n| self.triggers.get(n))
                        .is_some_and(|a| a.by_systemd());
                    if !known {
                        tracing::info!(unit, "stopping the unit of a trigger that is gone");
                        if let Err(e) = self.runtime.stop(&unit).await {
                            tracing::warn!(unit, error = %e, "cannot stop a stale trigger unit");
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list trigger units"),
        }
        if !self.triggers.is_empty() {
            tracing::info!(triggers = self.triggers.all().count(), "triggers loaded");
        }
    }

    pub(super) async fn trigger_add(&mut self, actor: String, toml: String, file: String, reply: Reply<TriggerInfo>) {
        let result = self.trigger_add_inner(&actor, &toml, &file).await;
        if let Err(e) = &result {
            self.record(
                trail::entry(&actor, &Action::TRIGGER)
                    .error(e.to_string())
                    .detail(format!("add {file}")),
            );
        }
        let _ = reply.send(result);
    }

    async fn trigger_add_inner(&mut self, actor: &str, toml: &str, file: &str) -> Result<TriggerInfo, CommandError> {
        let trigger = crate::triggers::validate(file, toml).map_err(CommandError::Invalid)?;
        // A name the catalog lacks is said now, not at the first firing.
        if !trigger.cell.starts_with('/') {
            let cell = self
                .catalog
                .resolve(&trigger.cell)
                .map_err(|e| CommandError::Invalid(format!("{file}: trigger {}: {e}", trigger.name.as_str())))?;
            refuse_given_secrets(&trigger, &cell.manifest, file)?;
        } else if let Ok(cell) = self.catalog.resolve(&trigger.cell) {
            // A manifest by path may not be there yet (it is read again at
            // each firing); when it is, its secrets are as much secrets.
            refuse_given_secrets(&trigger, &cell.manifest, file)?;
        }
        let name = trigger.name.as_str().to_owned();
        let armed = self.triggers.add(toml, file, actor)?.clone();
        if armed.by_systemd() {
            if let Err(e) = self
                .runtime
                .arm_trigger(&name, &armed.trigger.on, &description(&armed.trigger))
                .await
            {
                // Not kept: a trigger that cannot be armed would only look armed.
                let _ = self.triggers.remove(&name);
                let why = format!("{file}: trigger {name}: {}", crate::command::error_chain(&e));
                // Without systemd (the cgroup backend) the file is fine but
                // this node cannot keep such a trigger.
                return Err(match e {
                    RuntimeError::Unsupported(_) => CommandError::Refused(why),
                    _ => CommandError::Invalid(why),
                });
            }
        }
        let what = format!("add {name}: {} runs {}", armed.trigger.on, armed.trigger.cell);
        self.record(trail::entry(actor, &Action::TRIGGER).cell(armed.trigger.cell.clone()).detail(what));
        tracing::info!(trigger = name, actor, on = %armed.trigger.on, cell = armed.trigger.cell, "trigger added");
        Ok(info(&armed))
    }

    pub(super) async fn trigger_remove(&mut self, actor: String, name: String, reply: Reply<()>) {
        let result = match self.triggers.remove(&name) {
            Ok(a) => {
                if let Err(e) = self.runtime.disarm_trigger(&name, &a.trigger.on).await {
                    tracing::warn!(trigger = name, error = %e, "cannot stop the trigger's unit");
                }
                self.record(
                    trail::entry(&actor, &Action::TRIGGER)
                        .cell(a.trigger.cell.clone())
                        .detail(format!("remove {name}")),
                );
                tracing::info!(trigger = name, actor, "trigger removed");
                Ok(())
            }
            Err(e) => Err(CommandError::from(e)),
        };
        let _ = reply.send(result);
    }

    pub(super) fn trigger_list(&self) -> Vec<TriggerInfo> {
        self.triggers.all().map(info).collect()
    }

    /// A unit event about a trigger's unit (its service ran): fire it.
    /// Returns false when the unit is not a trigger's.
    pub(super) fn trigger_unit_event(&mut self, unit: &str, exit: &Exit) -> bool {
        let Some(name) = trigger_of_unit(unit) else { return false };
        if exit.is_success() {
            if let Some(t) = self.triggers.elapsed(name, Instant::now()) {
                let why = match &t.on {
                    On::Calendar(spec) => format!("the calendar ({spec}) elapsed"),
                    On::PathChanged(path) => format!("{path} changed"),
                    _ => "systemd started it".to_owned(),
                };
                self.fire(t, why);
            }
        }
        true
    }

    /// A cell's instance changed state: fire the triggers that follow it.
    pub(super) fn trigger_cell_event(&mut self, cell: &str, state: EventState) {
        for t in self.triggers.on_event(cell, state, Instant::now()) {
            self.fire(t, format!("{cell} {}", state.as_str()));
        }
    }

    /// Each second: fire the thresholds that have held.
    pub(super) fn trigger_tick(&mut self) {
        if !self.triggers.watches_figures() {
            return;
        }
        let Some(steppps) = &self.steppps else { return };
        let figures = steppps.figures(None);
        for t in self.triggers.on_figures(&figures, Instant::now()) {
            self.fire(t, "its threshold held".to_owned());
        }
    }

    /// Runs a trigger's cell as a run by `trigger:NAME`; the outcome comes
    /// back as [`Event::TriggerRan`] for `trigger list`.
    fn fire(&mut self, t: Trigger, why: String) {
        let name = t.name.as_str().to_owned();
        tracing::info!(trigger = name, cell = t.cell, why, "trigger fired");
        self.record(
            trail::entry(&format!("trigger:{name}"), &Action::TRIGGER)
                .cell(t.cell.clone())
                .detail(format!("fire {name}: {why}")),
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        let request = RunRequest {
            actor: format!("trigger:{name}"),
            source: t.cell.clone(),
            params: t.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>(),
            cwd: "/".to_owned(),
            stdio: None,
            substitute: false,
            reply: tx,
            profile: StartProfile::begin(),
        };
        let events = self.events.clone();
        tokio::spawn(async move {
            let result = match rx.await {
                Ok(Ok(assembled)) => format!("started {}", assembled.started.info.instance),
                Ok(Err(e)) => format!("not run: {e}"),
                Err(_) => "not run: quantumd dropped the run".to_owned(),
            };
            let _ = events.send(Event::TriggerRan { name, result });
        });
        // Through the loop's own queue, as a caller's run would come.
        let _ = self.events.send(Event::Command(crate::command::Command::Run(request)));
    }
}

fn description(t: &Trigger) -> String {
    if t.description.is_empty() {
        format!("QuantumOS trigger {}: {} runs {}", t.name.as_str(), t.on, t.cell)
    } else {
        format!("QuantumOS trigger {}: {}", t.name.as_str(), t.description)
    }
}

/// A trigger's `[params]` are a file on disk and shown to anyone by
/// `quantumctl trigger list`: a secret given there would be neither. Left
/// out, each firing gets a fresh random secret, as any run that gives none.
fn refuse_given_secrets(t: &Trigger, cell: &quantum_model::Manifest, file: &str) -> Result<(), CommandError> {
    match t.params.keys().find(|k| cell.params.get(*k).is_some_and(|p| p.secret)) {
        Some(name) => Err(CommandError::Invalid(format!(
            "{file}: params.{name}: is a secret of cell {} and a trigger's parameters are readable by anyone \
             (`quantumctl trigger list`); leave it out and each run gets a random one",
            t.cell
        ))),
        None => Ok(()),
    }
}
