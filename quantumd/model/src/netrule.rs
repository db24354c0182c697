//! `[isolation] network-allow`: the only destinations a cell on the host's
//! network may connect or send to.
//!
//! Each entry is `PROTOCOL:PORTS[@HOST]`:
//!
//! - PROTOCOL is `tcp` or `udp`;
//! - PORTS is a port (`443`), an inclusive range (`8000-8100`) or `*` (any);
//! - HOST, when given, is an address (`10.0.0.7`, `2001:db8::1`), a prefix
//!   (`10.0.0.0/8`, `2001:db8::/32`) or a DNS name (`example.org`), which
//!   quantumd resolves when the cell starts: a name is only as good as the
//!   addresses it had then. Without HOST, any host.
//!
//! `"tcp:443@example.org"`, `"udp:53"`, `"tcp:*@10.0.0.0/8"`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// A transport protocol a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Where a rule lets the cell go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// Addresses in a prefix (a single address is a full-length prefix).
    Prefix { addr: IpAddr, len: u8 },
    /// A DNS name, resolved when the cell starts.
    Name(String),
}

/// One `network-allow` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetRule {
    pub protocol: Protocol,
    /// Inclusive; `1..=65535` for `*`.
    pub ports: (u16, u16),
    /// `None`: any host.
    pub host: Option<Host>,
}

impl NetRule {
    /// Whether a connection to `port` on `addr` over `protocol` is allowed by
    /// this rule, a name having resolved to `resolved`.
    pub fn allows(&self, protocol: Protocol, addr: IpAddr, port: u16, resolved: &[IpAddr]) -> bool {
        if protocol != self.protocol || port < self.ports.0 || port > self.ports.1 {
            return false;
        }
        match &self.host {
            None => true,
            Some(Host::Prefix { addr: net, len }) => in_prefix(addr, *net, *len),
            Some(Host::Name(_)) => resolved.contains(&addr),
        }
    }
}

/// Whether `addr` lies in `net/len` (an IPv4 address never lies in an IPv6
/// prefix nor the other way round).
pub fn in_prefix(addr: IpAddr, net: IpAddr, len: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl FromStr for NetRule {
    type Err = String;

    fn from_str(s: &str) -> Result<NetRule, String> {
        let (rule, host) = match s.split_once('@') {
            Some((rule, host)) => (rule, Some(host)),
            None => (s, None),
        };
        let Some((protocol, ports)) = rule.split_once(':') else {
            return Err(format!(
                "{s:?} is not PROTOCOL:PORTS[@HOST] (e.g. \"tcp:443@example.org\", \"udp:53\")"
            ));
        };
        let protocol = match protocol {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => return Err(format!("unknown protocol {other:?} in {s:?}; expected \"tcp\" or \"udp\"")),
        };
        let ports = parse_ports(ports).map_err(|e| format!("{e} in {s:?}"))?;
        let host = host.map(|h| parse_host(h).map_err(|e| format!("{e} in {s:?}"))).transpose()?;
        Ok(NetRule { protocol, ports, host })
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("port {s:?} is not a number from 1 to 65535")),
        Ok(p) => Ok(p),
    }
}

fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    if s == "*" {
        return Ok((1, u16::MAX));
    }
    match s.split_once('-') {
        None => parse_port(s).map(|p| (p, p)),
        Some((lo, hi)) => {
            let (lo, hi) = (parse_port(lo)?, parse_port(hi)?);
            if lo > hi {
                return Err(format!("port range {s:?} runs backwards"));
            }
            Ok((lo, hi))
        }
    }
}

fn parse_host(s: &str) -> Result<Host, String> {
    if s.is_empty() {
        return Err("an empty host after '@'".to_owned());
    }
    let (addr, len) = match s.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (s, None),
    };
    let addr_text = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(addr);
    if let Ok(addr) = addr_text.parse::<IpAddr>() {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(l) if l <= max => l,
                _ => return Err(format!("prefix length {l:?} is not a number from 0 to {max}")),
            },
        };
        return Ok(Host::Prefix { addr, len });
    }
    if len.is_some() {
        return Err(format!("{addr:?} before the prefix length is not an IP address"));
    }
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.len() > 253 || !name.split('.').all(valid_label) || name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("{s:?} is neither an IP address, a prefix nor a DNS name"));
    }
    Ok(Host::Name(name.to_ascii_lowercase()))
}

impl fmt::Display for NetRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.protocol.as_str())?;
        match self.ports {
            (1, u16::MAX) => write!(f, "*")?,
            (lo, hi) if lo == hi => write!(f, "{lo}")?,
            (lo, hi) => write!(f, "{lo}-{hi}")?,
        }
        match &self.host {
            None => Ok(()),
            Some(Host::Name(name)) => write!(f, "@{name}"),
            Some(Host::Prefix { addr, len }) if u32::from(*len) == if addr.is_ipv4() { 32 } else { 128 } => write!(f, "@{addr}"),
            Some(Host::Prefix { addr, len }) => write!(f, "@{addr}/{len}"),
        }
    }
}

/// Serialised as written in the manifest.
impl Serialize for NetRule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> NetRule {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn the_forms_the_manifest_documents_parse_and_print_back() {
        for s in [
            "tcp:443@example.org",
            "udp:53",
            "tcp:*@10.0.0.0/8",
            "tcp:8000-8100@2001:db8::/32",
            "udp:123@192.0.2.1",
            "tcp:22@::1",
        ] {
            assert_eq!(rule(s).to_string(), s);
        }
        assert_eq!(rule("tcp:443@Example.ORG.").host, Some(Host::Name("example.org".into())));
        assert_eq!(rule("tcp:443@[2001:db8::1]").to_string(), "tcp:443@2001:db8::1");
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        for (s, says) in [
            ("443", "PROTOCOL:PORTS"),
            ("sctp:443", "unknown protocol \"sctp\""),
            ("tcp:0", "port \"0\""),
            ("tcp:70000", "port \"70000\""),
            ("tcp:9-1", "runs backwards"),
            ("tcp:443@", "empty host"),
            ("tcp:443@10.0.0.0/33", "prefix length \"33\""),
            ("tcp:443@exa mple.org", "neither an IP address"),
            ("tcp:443@300.1.1.1", "neither an IP address"),
            ("tcp:443@example.org/8", "is not an IP address"),
        ] {
            let err = s.parse::<NetRule>().expect_err(s);
            assert!(err.contains(says), "{s}: {err}");
        }
    }

    #[test]
    fn a_rule_allows_its_protocol_ports_and_hosts_only() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        let r = rule("tcp:8000-8100@10.0.0.0/8");
        assert!(r.allows(Protocol::Tcp, v4("10.1.2.3"), 8000, &[]));
        assert!(r.allows(Protocol::Tcp, v4("10.1.2.3"), 8100, &[]));
        assert!(!r.allows(Protocol::Tcp, v4("10.1.2.3"), 8101, &[]));
        assert!(!r.allows(Protocol::Udp, v4("10.1.2.3"), 8000, &[]));
        assert!(!r.allows(Protocol::Tcp, v4("11.0.0.1"), 8000, &[]));
        assert!(!r.allows(Protocol::Tcp, v4("::ffff:10.0.0.1"), 8000, &[]));
        let named = rule("tcp:443@example.org");
        assert!(named.allows(Protocol::Tcp, v4("192.0.2.7"), 443, &[v4("192.0.2.7")]));
        assert!(!named.allows(Protocol::Tcp, v4("192.0.2.8"), 443, &[v4("192.0.2.7")]));
        assert!(rule("udp:53").allows(Protocol::Udp, v4("2001:db8::53"), 53, &[]));
        assert!(rule("tcp:*@0.0.0.0/0").allows(Protocol::Tcp, v4("8.8.8.8"), 1, &[]));
    }
}
