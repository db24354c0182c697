//! How quantumctl prints things for people (and `--json` for programs).

use std::fmt::Write;

use quantum_bus::{CellDetail, CellInfo};
use serde::Serialize;

pub fn json<T: Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("quantumctl: cannot encode JSON: {e}"),
    }
}

pub fn started(i: &CellInfo) -> String {
    match i.state.as_str() {
        "running" | "starting" => format!("started {} ({}, pid {})", i.instance, i.unit, i.pid),
        other => format!("{} {}: {}", i.instance, other, i.reason),
    }
}

pub fn table(cells: &[CellInfo]) -> String {
    let mut out = String::new();
    if cells.is_empty() {
        return "no cells\n".to_owned();
    }
    let w = cells.iter().map(|c| c.instance.len()).max().unwrap_or(8).max(8);
    let _ = writeln!(out, "{:<w$}  {:<10}  {:>7}  REASON", "INSTANCE", "STATE", "PID");
    for c in cells {
        let pid = if c.pid == 0 { "-".to_owned() } else { c.pid.to_string() };
        let _ = writeln!(out, "{:<w$}  {:<10}  {:>7}  {}", c.instance, c.state, pid, c.reason);
    }
    out
}

pub fn detail(d: &CellDetail) -> String {
    let i = &d.info;
    let mut out = String::new();
    let _ = writeln!(out, "{} ({} {})", i.instance, i.cell, d.version);
    let _ = writeln!(out, "  state:     {} — {}", i.state, i.reason);
    let _ = writeln!(out, "  unit:      {}", i.unit);
    let _ = writeln!(out, "  pid:       {}", i.pid);
    if !i.parent.is_empty() {
        let _ = writeln!(out, "  parent:    {}", i.parent);
    }
    let _ = writeln!(out, "  manifest:  {}", d.manifest_path);
    let _ = writeln!(out, "  command:   {}", d.argv.join(" "));
    let mut params: Vec<_> = d.params.iter().collect();
    params.sort();
    for (k, v) in params {
        let _ = writeln!(out, "  param:     {k} = {v}");
    }
    if !d.needs.is_empty() {
        let _ = writeln!(out, "  needs:     {}", d.needs.join(", "));
    }
    if !d.children.is_empty() {
        let _ = writeln!(out, "  children:  {}", d.children.join(", "));
    }
    let _ = writeln!(out, "  restarts:  {}", d.restarts);
    let mut props: Vec<_> = d.properties.iter().collect();
    props.sort();
    for (k, v) in props {
        let _ = writeln!(out, "  {k}: {v}");
    }
    out
}
