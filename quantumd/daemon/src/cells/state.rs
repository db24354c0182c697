//! `CellState`: snapshots and rollback of a stateful cell's state
//! (crate::cell_state), asked by name, done off the event loop, recorded in
//! the trail (action `state`) except for listing.

use quantum_bus::CellStateReport;
use quantum_model::Manifest;
use quantum_trail::Action;

use super::{Cells, State};
use crate::cell_state::Op;
use crate::command::{error_chain, CommandError, Reply};
use crate::trail;

impl Cells {
    /// `source` names the cell as `run` does: a catalog name, or the
    /// absolute path of its cell.toml (for a cell that is not running).
    pub(super) fn cell_state(&mut self, actor: String, source: String, op: Op, reply: Reply<CellStateReport>) {
        let manifest = self.state_manifest(&source);
        let cell = manifest.as_ref().map_or(source, |m| m.name.to_string());
        let checked = manifest.and_then(|m| {
            if !m.state.subvolume {
                return Err(CommandError::Invalid(format!(
                    "cell \"{cell}\" keeps no state: its cell.toml has no `[state] subvolume = true`"
                )));
            }
            if matches!(op, Op::Rollback { .. }) {
                let running: Vec<&str> = self
                    .instances
                    .values()
                    .filter(|i| i.record.cell == cell && matches!(i.state, State::Starting | State::Running | State::Restarting))
                    .map(|i| i.record.instance.as_str())
                    .collect();
                if !running.is_empty() {
                    return Err(CommandError::Refused(format!(
                        "cell \"{cell}\" is running ({}): stop it first (quantumctl stop {cell}); its files would change under it",
                        running.join(", ")
                    )));
                }
            }
            Ok(m.isolation.user)
        });
        let user = match checked {
            Ok(user) => user,
            Err(e) => {
                if op != Op::List {
                    self.record(
                        trail::entry(&actor, &Action::STATE)
                            .cell(cell)
                            .detail(describe(&op))
                            .error(e.to_string()),
                    );
                }
                let _ = reply.send(Err(e));
                return;
            }
        };
        let runtime = self.runtime.clone();
        let trail = self.trail.clone();
        tokio::spawn(async move {
            let result = runtime.cell_state(&cell, user, &op).await;
            if op != Op::List {
                let entry = trail::entry(&actor, &Action::STATE).cell(cell.clone()).detail(describe(&op));
                let entry = match &result {
                    Ok(_) => entry,
                    Err(e) => entry.error(error_chain(e)),
                };
                super::record_to(&trail, entry);
            }
            let _ = reply.send(
                result
                    .map(|r| CellStateReport {
                        cell,
                        current: r.current.display().to_string(),
                        btrfs: r.btrfs,
                        snapshots: r.snapshots,
                    })
                    .map_err(|e| CommandError::Backend(error_chain(&e))),
            );
        });
    }

    /// The manifest of `source`: a running instance's of that name (it may
    /// come from a bundle), else the catalog's or the file's.
    fn state_manifest(&self, source: &str) -> Result<std::sync::Arc<Manifest>, CommandError> {
        if let Some(m) = self
            .instances
            .values()
            .filter(|i| i.record.cell == source)
            .find_map(|i| i.manifest.clone())
        {
            return Ok(m);
        }
        if !source.starts_with('/') && source.parse::<quantum_model::CellName>().is_err() {
            return Err(CommandError::Invalid(format!(
                "{source:?} is neither a cell name nor the absolute path of a cell.toml"
            )));
        }
        self.catalog
            .resolve(source)
            .map(|r| std::sync::Arc::new(r.manifest))
            .map_err(|e| CommandError::NotFound(format!("cell \"{source}\": {e}")))
    }
}

fn describe(op: &Op) -> String {
    match op {
        Op::Prepare | Op::List => op.verb().to_owned(),
        Op::Snapshot { name } | Op::Rollback { name } | Op::Delete { name } => format!("{} {name}", op.verb()),
    }
}
