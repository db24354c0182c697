//! Channel tokens: macaroons (HMAC chains, libmacaroon) that quantumd mints
//! for each cell instance that provides or uses a channel.
//!
//! A token is a list of first-party caveats, every one of which must hold
//! when it is presented. quantumd writes these when it mints one:
//!
//! - `instance = ID` — only processes in that instance's cgroup may present it;
//! - `cell = NAME@VERSION` — the cell and version it was minted for (its identity document's);
//! - `provides = a,b` — the channels it may listen on (may be empty);
//! - `uses = cell/a,other/b` — the channels it may connect to (may be empty);
//! - `expires < UNIX-SECONDS`;
//! - `rate <= N` — at most N connects and listens a second.
//!
//! Whoever holds a token may narrow it without quantumd's key by adding
//! caveats ([`attenuate`]): a `channel = cell/a` caveat, an earlier
//! `expires`, a lower `rate`. No one can widen one: removing or changing a
//! caveat breaks the chain of HMACs, and the token no longer verifies.

use libmacaroon::{Format, Macaroon};

/// One caveat quantumd understands. Anything else in a token makes it
/// invalid (a caveat nobody checks would be a caveat that does not hold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caveat {
    Instance(String),
    Cell(String),
    Provides(Vec<String>),
    Uses(Vec<String>),
    /// Only this channel (`CELL/CHANNEL` to connect, the bare name to listen).
    Channel(String),
    /// Not at or after this time (seconds since the Unix epoch).
    Expires(u64),
    /// At most this many requests a second.
    Rate(u32),
}

fn list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

impl Caveat {
    pub fn parse(predicate: &str) -> Option<Caveat> {
        let (key, rest) = predicate.split_once(' ')?;
        let (op, value) = rest.split_once(' ').unwrap_or((rest, ""));
        let value = value.trim();
        Some(match (key, op) {
            ("instance", "=") => Caveat::Instance(value.to_owned()),
            ("cell", "=") => Caveat::Cell(value.to_owned()),
            ("provides", "=") => Caveat::Provides(list(value)),
            ("uses", "=") => Caveat::Uses(list(value)),
            ("channel", "=") => Caveat::Channel(value.to_owned()),
            ("expires", "<") => Caveat::Expires(value.parse().ok()?),
            ("rate", "<=") => Caveat::Rate(value.parse().ok()?),
            _ => return None,
        })
    }
}

impl std::fmt::Display for Caveat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caveat::Instance(v) => write!(f, "instance = {v}"),
            Caveat::Cell(v) => write!(f, "cell = {v}"),
            Caveat::Provides(v) => write!(f, "provides = {}", v.join(",")),
            Caveat::Uses(v) => write!(f, "uses = {}", v.join(",")),
            Caveat::Channel(v) => write!(f, "channel = {v}"),
            Caveat::Expires(t) => write!(f, "expires < {t}"),
            Caveat::Rate(n) => write!(f, "rate <= {n}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("not a channel token: {0}")]
    Malformed(String),
}

/// The first-party caveats of `token`, as written (unverified: only the
/// broker, which holds the key, can tell whether they are genuine).
pub fn caveats(token: &str) -> Result<Vec<String>, TokenError> {
    let m = Macaroon::deserialize(token.trim()).map_err(|e| TokenError::Malformed(e.to_string()))?;
    Ok(m.first_party_caveats()
        .iter()
        .filter_map(|c| c.as_first_party())
        .map(|c| String::from_utf8_lossy(c.predicate()).into_owned())
        .collect())
}

/// `token` narrowed by one more caveat: what a cell does before it hands
/// its token (or part of what it may do) to a helper it trusts less.
pub fn attenuate(token: &str, caveat: &Caveat) -> Result<String, TokenError> {
    let mut m = Macaroon::deserialize(token.trim()).map_err(|e| TokenError::Malformed(e.to_string()))?;
    m.add_first_party_caveat(caveat.to_string())
        .map_err(|e| TokenError::Malformed(e.to_string()))?;
    m.serialize(Format::V2).map_err(|e| TokenError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_caveat_reads_back_as_written() {
        for c in [
            Caveat::Instance("echo-client.4".into()),
            Caveat::Cell("echo-client@1.0.0".into()),
            Caveat::Provides(vec!["echo".into(), "stats".into()]),
            Caveat::Provides(vec![]),
            Caveat::Uses(vec!["echo-server/echo".into()]),
            Caveat::Channel("echo-server/echo".into()),
            Caveat::Expires(1_800_000_000),
            Caveat::Rate(100),
        ] {
            assert_eq!(Caveat::parse(&c.to_string()), Some(c.clone()), "{c}");
        }
    }

    #[test]
    fn an_unknown_or_misspelt_caveat_is_not_understood() {
        for p in ["owner = me", "expires = 5", "rate < x", "instance", ""] {
            assert_eq!(Caveat::parse(p), None, "{p:?}");
        }
    }

    #[test]
    fn attenuation_adds_a_caveat_a_holder_can_read() {
        let key = libmacaroon::MacaroonKey::from([7u8; 32]);
        let mut m = Macaroon::create(None, &key, "t").expect("create");
        m.add_first_party_caveat("instance = a.1").expect("caveat");
        let token = m.serialize(Format::V2).expect("serialize");
        let narrowed = attenuate(&token, &Caveat::Expires(5)).expect("attenuate");
        assert_eq!(caveats(&narrowed).expect("caveats"), ["instance = a.1", "expires < 5"]);
        assert!(matches!(attenuate("%%%", &Caveat::Rate(1)), Err(TokenError::Malformed(_))));
    }
}
