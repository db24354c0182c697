//! What a cell may touch, in the words a person confirms a plan by:
//! `quantumctl ask` and the desktop assistant show the same facts, so they
//! are worded once, here.

use std::collections::BTreeMap;

use crate::manifest::{Isolation, Network, Resources, UserMode};

/// A cell's reach with a plan's parameter values filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// "no network", "loopback network only" or "the host's network", with
    /// ", only to tcp:443@example.org, udp:53" when the cell lists where it
    /// may go.
    pub network: String,
    /// "a throw-away user" (a dynamic user) or "root".
    pub user: &'static str,
    /// The paths it may read, joined by ", "; "nothing" when none.
    pub reads: String,
    /// The paths it may write, joined by ", "; "nothing" when none.
    pub writes: String,
}

impl Access {
    pub fn of(isolation: &Isolation, values: &BTreeMap<String, String>) -> Access {
        let network = match isolation.network {
            Network::None => "no network".to_owned(),
            Network::Loopback => "loopback network only".to_owned(),
            Network::Host if isolation.network_allow.is_empty() => "the host's network".to_owned(),
            Network::Host => {
                let rules: Vec<String> = isolation.network_allow.iter().map(|r| r.to_string()).collect();
                format!("the host's network, only to {}", rules.join(", "))
            }
        };
        let user = match isolation.user {
            UserMode::Dynamic => "a throw-away user",
            UserMode::Root => "root",
        };
        let fill = |paths: &[String]| -> String {
            if paths.is_empty() {
                return "nothing".to_owned();
            }
            paths.iter().map(|p| fill_in(p, values)).collect::<Vec<_>>().join(", ")
        };
        Access {
            network,
            user,
            reads: fill(&isolation.readable),
            writes: fill(&isolation.writable),
        }
    }
}

/// A cell's limits, one phrase each ("CPU 0.1–0.5 cores", "memory
/// 16M–128M", "I/O weight 100", "at most 32 tasks", and "1 GPU" when it
/// asks for any), for the caller to join.
pub fn limits(r: &Resources) -> Vec<String> {
    let mut out = vec![
        format!("CPU {}–{} cores", r.cpu_min.as_f64(), r.cpu_max.as_f64()),
        format!("memory {}–{}", r.memory_min, r.memory_max),
        format!("I/O weight {}", r.io_weight),
        format!("at most {} tasks", r.tasks_max),
    ];
    if r.gpus > 0 {
        out.push(format!("{} GPU{}", r.gpus, if r.gpus == 1 { "" } else { "s" }));
    }
    out
}

/// `{name}` placeholders replaced by the values given; unknown ones left as
/// they are (a missing parameter shows as itself).
fn fill_in(template: &str, values: &BTreeMap<String, String>) -> String {
    crate::placeholder::substitute(template, |name| {
        Some(values.get(name).cloned().unwrap_or_else(|| format!("{{{name}}}")))
    })
    .unwrap_or_else(|_| template.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_get_the_plans_values_and_no_paths_read_as_nothing() {
        let isolation = Isolation {
            network: Network::Host,
            network_allow: vec![],
            user: UserMode::Dynamic,
            readable: vec!["{dir}".into(), "/etc/ssl".into()],
            writable: vec![],
        };
        let values = BTreeMap::from([("dir".to_owned(), "/srv/www".to_owned())]);
        let a = Access::of(&isolation, &values);
        assert_eq!(a.network, "the host's network");
        assert_eq!(a.user, "a throw-away user");
        assert_eq!(a.reads, "/srv/www, /etc/ssl");
        assert_eq!(a.writes, "nothing");
        // A parameter not given yet shows as its placeholder.
        let a = Access::of(&isolation, &BTreeMap::new());
        assert_eq!(a.reads, "{dir}, /etc/ssl");
    }

    #[test]
    fn a_cell_that_lists_its_destinations_says_so() {
        let isolation = Isolation {
            network: Network::Host,
            network_allow: vec!["tcp:443@example.org".parse().unwrap(), "udp:53".parse().unwrap()],
            ..Isolation::default()
        };
        let a = Access::of(&isolation, &BTreeMap::new());
        assert_eq!(a.network, "the host's network, only to tcp:443@example.org, udp:53");
    }

    #[test]
    fn limits_name_every_bound_and_gpus_only_when_asked_for() {
        let mut r = Resources::default();
        let words = limits(&r);
        assert_eq!(words.len(), 4, "{words:?}");
        assert!(words[0].starts_with("CPU ") && words[0].ends_with(" cores"), "{words:?}");
        assert!(words[3].starts_with("at most "), "{words:?}");
        r.gpus = 2;
        assert_eq!(limits(&r).last().map(String::as_str), Some("2 GPUs"));
    }
}
