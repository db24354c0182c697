//! What the engine answers: a plan of cells for an intent, or a refusal.
//! Serialised as the `quantumctl ask --json` contract:
//! `{"intent": "...", "cells": [{"name": "web-server", "params": {"port": "8080"}}], "confidence": 0.91}`,
//! with `cells` empty and a `reason` when nothing in the catalog fits.

use std::collections::BTreeMap;

use serde::Serialize;

/// A plan: the cells to start, in order, with their parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub intent: String,
    pub cells: Vec<PlannedCell>,
    /// How sure the engine is that the plan (or the refusal) is what was
    /// asked for, from 0 to 1.
    #[serde(serialize_with = "two_decimals")]
    pub confidence: f32,
    /// Why there is no plan; only when `cells` is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedCell {
    pub name: String,
    /// Parameters taken from the intent, checked against the cell's types.
    /// Parameters left out take the cell's defaults.
    pub params: BTreeMap<String, String>,
    /// Required parameters (no default) the intent did not give; the plan
    /// cannot run until they are supplied. Not part of the JSON contract
    /// (`{"name", "params"}`), which tests outside the project compare.
    #[serde(skip)]
    pub missing: Vec<String>,
    /// The cell's defaults, what a parameter left out of `params` runs
    /// with. Not part of the JSON contract either.
    #[serde(skip)]
    pub defaults: BTreeMap<String, String>,
}

impl PlannedCell {
    /// The value `name` runs with: the one taken from the intent, else the
    /// cell's default.
    pub fn effective(&self, name: &str) -> Option<&String> {
        self.params.get(name).or_else(|| self.defaults.get(name))
    }
}

impl Plan {
    pub fn is_refusal(&self) -> bool {
        self.cells.is_empty()
    }

    /// The names of the planned cells, in order.
    pub fn cell_names(&self) -> Vec<&str> {
        self.cells.iter().map(|c| c.name.as_str()).collect()
    }
}

fn two_decimals<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((f64::from(*v) * 100.0).round() / 100.0)
}
