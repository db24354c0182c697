//! Reassembly: the catalog cells that can stand in for one that may not run
//! (quantumd blacklisted it after too many restarts), best first.
//!
//! A stand-in must offer one of the asked-for cell's capabilities: the
//! capability phrases the intent index embeds for every cell
//! ([`crate::index::manifest_phrases`]), compared as written (letter case
//! and spacing aside), not by embedding similarity. Two cells that state the
//! same capability were declared interchangeable for it by their authors; a
//! merely similar phrase ("mirror a directory" beside "back up a
//! directory") is a different job, and reassembly starts the stand-in
//! without asking anyone to confirm it.
//!
//! Besides that, a stand-in
//! - is not excluded by the caller (quantumd excludes blacklisted cells and
//!   the ones the administrator disabled);
//! - takes the parameters given for the asked-for cell: it declares every
//!   one of them, and needs no other without a default;
//! - asks for no more than the asked-for cell: not root unless that cell
//!   runs as root, and no wider network.
//!
//! Ranked by how many capabilities the two share (more is closer), then by
//! name, so the choice never depends on the order the catalog was read in.

use quantum_model::{Manifest, Network, UserMode};

use crate::index::{manifest_phrases, PhraseKind};

/// A catalog cell that can stand in for another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternative {
    /// The stand-in's name.
    pub cell: String,
    /// The first capability of the asked-for cell (in its manifest's order)
    /// that the stand-in offers too, as the asked-for cell words it.
    pub capability: String,
    /// How many capabilities the two share.
    pub shared: usize,
}

/// The capability phrases of `m`, in its manifest's order.
fn capabilities(m: &Manifest) -> Vec<String> {
    manifest_phrases(m)
        .into_iter()
        .filter(|(kind, _)| *kind == PhraseKind::Capability)
        .map(|(_, phrase)| phrase)
        .collect()
}

/// A capability phrase as compared: lower case, words separated by one space.
fn normalized(phrase: &str) -> String {
    phrase.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>().join(" ")
}

fn network_reach(n: Network) -> u8 {
    match n {
        Network::None => 0,
        Network::Loopback => 1,
        Network::Host => 2,
    }
}

/// Whether `candidate` runs with what `given` names and nothing else it
/// would have to be told.
fn takes(candidate: &Manifest, given: &[&str]) -> bool {
    given.iter().all(|g| candidate.params.contains_key(*g))
        && candidate
            .params
            .iter()
            .all(|(name, spec)| spec.default.is_some() || given.contains(&name.as_str()))
}

/// Whether `candidate` asks for no more privilege than `asked`.
fn no_wider(candidate: &Manifest, asked: &Manifest) -> bool {
    let root_ok = candidate.isolation.user != UserMode::Root || asked.isolation.user == UserMode::Root;
    root_ok && network_reach(candidate.isolation.network) <= network_reach(asked.isolation.network)
}

/// The cells of `catalog` that can stand in for `asked` run with the
/// parameters named `given`, best first; `excluded` says which may not
/// (by name). `asked` itself is never among them.
pub fn alternatives<'a>(
    asked: &Manifest,
    catalog: impl IntoIterator<Item = &'a Manifest>,
    given: &[&str],
    excluded: &dyn Fn(&str) -> bool,
) -> Vec<Alternative> {
    let wanted: Vec<(String, String)> = capabilities(asked).into_iter().map(|c| (normalized(&c), c)).collect();
    let mut found: Vec<Alternative> = catalog
        .into_iter()
        .filter(|m| m.name != asked.name && !excluded(m.name.as_str()))
        .filter(|m| takes(m, given) && no_wider(m, asked))
        .filter_map(|m| {
            let offered: Vec<String> = capabilities(m).iter().map(|c| normalized(c)).collect();
            let mut shared = wanted.iter().filter(|(n, _)| offered.contains(n));
            let (_, capability) = shared.next()?;
            Some(Alternative {
                cell: m.name.to_string(),
                capability: capability.clone(),
                shared: 1 + shared.count(),
            })
        })
        .collect();
    found.sort_by(|a, b| b.shared.cmp(&a.shared).then_with(|| a.cell.cmp(&b.cell)));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest named `name` offering `capabilities`, with `extra` TOML.
    fn cell(name: &str, capabilities: &[&str], extra: &str) -> Manifest {
        let text = format!(
            "[cell]\nname = \"{name}\"\nversion = \"1.0.0\"\ndescription = \"test cell {name}\"\ncapabilities = {capabilities:?}\nexec = [\"/bin/true\"]\n{extra}\n"
        );
        quantum_model::parse_manifest(&text).unwrap_or_else(|e| panic!("{name}: {e:?}"))
    }

    /// The names `alternatives` ranks for `asked` in `catalog`, with the
    /// capability each is chosen for.
    fn check(asked: &Manifest, catalog: &[Manifest], given: &[&str], excluded: &[&str]) -> Vec<(String, String)> {
        alternatives(asked, catalog, given, &|n| excluded.contains(&n))
            .into_iter()
            .map(|a| (a.cell, a.capability))
            .collect()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    #[test]
    fn a_cell_offering_the_same_capability_stands_in_and_a_similar_phrase_does_not() {
        let asked = cell("web-a", &["serve files over http", "host a static website"], "");
        let catalog = [
            asked.clone(),
            cell("web-b", &["Serve  files over HTTP"], ""),
            cell("ftp", &["serve files over ftp"], ""),
        ];
        assert_eq!(check(&asked, &catalog, &[], &[]), pairs(&[("web-b", "serve files over http")]));
    }

    #[test]
    fn ties_are_broken_by_name_and_more_shared_capabilities_rank_first() {
        let asked = cell("web-a", &["serve files over http", "host a static website"], "");
        let catalog = [
            cell("web-d", &["serve files over http"], ""),
            cell("web-c", &["host a static website"], ""),
            cell("web-z", &["host a static website", "serve files over http"], ""),
            cell("web-b", &["serve files over http"], ""),
        ];
        assert_eq!(
            check(&asked, &catalog, &[], &[]),
            pairs(&[
                ("web-z", "serve files over http"),
                ("web-b", "serve files over http"),
                ("web-c", "host a static website"),
                ("web-d", "serve files over http"),
            ])
        );
        // The same whatever order the catalog comes in.
        let mut reversed = catalog.to_vec();
        reversed.reverse();
        assert_eq!(check(&asked, &reversed, &[], &[]), check(&asked, &catalog, &[], &[]));
    }

    #[test]
    fn excluded_cells_are_never_chosen() {
        let asked = cell("web-a", &["serve files over http"], "");
        let catalog = [
            cell("web-b", &["serve files over http"], ""),
            cell("web-c", &["serve files over http"], ""),
        ];
        assert_eq!(
            check(&asked, &catalog, &[], &["web-b"]),
            pairs(&[("web-c", "serve files over http")])
        );
        assert_eq!(check(&asked, &catalog, &[], &["web-b", "web-c"]), pairs(&[]));
    }

    #[test]
    fn no_shared_capability_means_no_alternative() {
        let asked = cell("web-a", &["serve files over http"], "");
        let bare = cell("bare", &[], "");
        let catalog = [cell("dns", &["resolve a domain name"], ""), bare.clone()];
        assert_eq!(check(&asked, &catalog, &[], &[]), pairs(&[]));
        // A cell that states no capability has nothing to be replaced for.
        assert_eq!(check(&bare, &[asked], &[], &[]), pairs(&[]));
    }

    #[test]
    fn a_stand_in_must_take_the_given_parameters_and_need_no_others() {
        let asked = cell(
            "web-a",
            &["serve files over http"],
            "[params.port]\ntype = \"port\"\ndefault = \"8080\"\ndescription = \"port\"",
        );
        let catalog = [
            cell("no-params", &["serve files over http"], ""),
            cell(
                "needs-dir",
                &["serve files over http"],
                "[params.port]\ntype = \"port\"\ndescription = \"port\"\n[params.dir]\ntype = \"path\"\ndescription = \"what\"",
            ),
            cell(
                "takes-port",
                &["serve files over http"],
                "[params.port]\ntype = \"port\"\ndescription = \"port\"\n[params.bind]\ntype = \"string\"\ndefault = \"127.0.0.1\"\ndescription = \"where\"",
            ),
        ];
        assert_eq!(
            check(&asked, &catalog, &["port"], &[]),
            pairs(&[("takes-port", "serve files over http")])
        );
        // Given nothing, a cell with a required parameter cannot start.
        assert_eq!(check(&asked, &catalog, &[], &[]), pairs(&[("no-params", "serve files over http")]));
    }

    #[test]
    fn a_stand_in_never_asks_for_more_privilege_than_the_cell_asked_for() {
        let asked = cell("web-a", &["serve files over http"], "[isolation]\nnetwork = \"loopback\"");
        let catalog = [
            cell(
                "as-root",
                &["serve files over http"],
                "[isolation]\nnetwork = \"loopback\"\nuser = \"root\"",
            ),
            cell("on-host", &["serve files over http"], "[isolation]\nnetwork = \"host\""),
            cell("offline", &["serve files over http"], ""),
            cell("loopback", &["serve files over http"], "[isolation]\nnetwork = \"loopback\""),
        ];
        assert_eq!(
            check(&asked, &catalog, &[], &[]),
            pairs(&[("loopback", "serve files over http"), ("offline", "serve files over http")])
        );
    }
}
