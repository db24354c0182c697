//! Cells placed on the cluster: one key per placement,
//! `<prefix>/cells/<id>`, naming the catalog cell, its parameters and the
//! node that runs it.
//!
//! Every change is a transaction that compares the key's revision first,
//! so two nodes never both win: a new placement only if the key does not
//! exist yet, a re-placement only if nobody changed it since it was read.
//! The node a placement names runs the cell; when that node's lease runs
//! out, the survivors re-place its cells, each computing the same spread
//! (fewest placements first, then name) and racing on the same compare.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Placement {
    /// `CELL-XXXXXXXX`, chosen at placement.
    pub id: String,
    /// A catalog cell (every node has the catalog).
    pub cell: String,
    pub params: BTreeMap<String, String>,
    /// The node that runs it.
    pub node: String,
    /// The node that placed it there (the asker's, or a survivor's after a
    /// node was lost).
    pub by: String,
    pub placed_usec: u64,
}

impl Placement {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Placement, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a placement: {e}"))
    }
}

/// A new placement's id: the cell's name and 32 random bits.
pub fn new_id(cell: &str) -> String {
    let mut bytes = [0u8; 4];
    // The clock is a fallback only: the compare at placement refuses a
    // taken id anyway.
    if getrandom::fill(&mut bytes).is_err() {
        bytes = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()))
        .to_le_bytes();
    }
    format!("{cell}-{:08x}", u32::from_le_bytes(bytes))
}

/// Where the cells of a lost node go: each to the live node with the fewest
/// placements (counting those given out here), ties by name. The same view
/// gives every survivor the same answer.
pub fn spread<'a>(orphans: impl IntoIterator<Item = &'a Placement>, alive: &BTreeSet<String>, all: &[Placement]) -> Vec<(String, String)> {
    let mut load: BTreeMap<&str, usize> = alive.iter().map(|n| (n.as_str(), 0)).collect();
    for p in all {
        if let Some(l) = load.get_mut(p.node.as_str()) {
            *l += 1;
        }
    }
    let mut orphans: Vec<&Placement> = orphans.into_iter().collect();
    orphans.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = Vec::new();
    for p in orphans {
        let Some((&node, _)) = load.iter().min_by_key(|(n, l)| (**l, **n)) else {
            break;
        };
        *load.entry(node).or_default() += 1;
        out.push((p.id.clone(), node.to_owned()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(id: &str, node: &str) -> Placement {
        Placement {
            id: id.to_owned(),
            cell: "c".to_owned(),
            params: BTreeMap::new(),
            node: node.to_owned(),
            by: node.to_owned(),
            placed_usec: 0,
        }
    }

    #[test]
    fn a_lost_nodes_cells_go_to_the_least_loaded_survivors_the_same_way_everywhere() {
        let all: Vec<Placement> = (0..6)
            .map(|i| placed(&format!("c-{i}"), ["a", "b", "c"][i % 3]))
            .chain([placed("c-9", "a")])
            .collect();
        let alive: BTreeSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let orphans: Vec<&Placement> = all.iter().filter(|p| p.node == "c").collect();
        let moves = spread(orphans.iter().copied(), &alive, &all);
        // a holds 3, b holds 2: b gets the first, then they alternate.
        assert_eq!(moves, [("c-2".to_owned(), "b".to_owned()), ("c-5".to_owned(), "a".to_owned())]);
        assert_eq!(spread(orphans.iter().copied(), &alive, &all), moves, "deterministic");
        assert!(spread(orphans.iter().copied(), &BTreeSet::new(), &all).is_empty());
    }

    #[test]
    fn ids_name_their_cell_and_differ() {
        let (a, b) = (new_id("web"), new_id("web"));
        assert!(a.starts_with("web-") && a.len() == 12, "{a}");
        assert_ne!(a, b);
    }
}
