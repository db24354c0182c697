//! What one trail entry says: who asked for what, about which cell, and how it
//! ended. Validation lives here so that the writer refuses what the reader
//! would refuse, and the byte encoding stays canonical.

use std::borrow::Cow;
use std::fmt;

/// Longest actor, in bytes ("uid:1000", "quantumd", "cell:web-server.1").
pub const MAX_ACTOR: usize = 128;
/// Longest cell name, in bytes. Cell names proper are at most 63 bytes; the
/// trail also records instance names and refused names as given.
pub const MAX_CELL: usize = 255;
/// Longest error text or detail, in bytes: a record must stay well inside one
/// frame (`segment::MAX_PAYLOAD`) whatever the caller passes.
pub const MAX_TEXT: usize = 16 * 1024;
/// Longest action name, in bytes.
pub const MAX_ACTION: usize = 32;

/// Why an entry (or one field of it) is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes long, more than {max}")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error("{field} contains a control character at byte {at}")]
    ControlChar { field: &'static str, at: usize },
    #[error("action {name:?}: not 1-32 of [a-z0-9-] starting with a letter")]
    BadAction { name: String },
    #[error("{text:?} is not 64 hex digits")]
    BadHex { text: String },
}

/// A blake3 digest: a record's hash in the chain, or a manifest's hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// What the first record of a trail chains from.
    pub const GENESIS: Digest = Digest([0; 32]);

    /// Lower-case hex, 64 digits.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Result<Digest, EntryError> {
        parse_hex32(text)
            .map(Digest)
            .ok_or_else(|| EntryError::BadHex { text: text.to_owned() })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

pub(crate) fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi << 4 | lo).ok()?;
    }
    Some(out)
}

/// What was done or refused. A validated name (1-32 of `[a-z0-9-]`, starting
/// with a letter) rather than a closed enum, so that a newer quantumd can add
/// actions without older readers refusing its trail; the names quantumd uses
/// today are the constants.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Action(Cow<'static, str>);

impl Action {
    pub const RUN: Action = Action(Cow::Borrowed("run"));
    pub const STOP: Action = Action(Cow::Borrowed("stop"));
    pub const REFUSE: Action = Action(Cow::Borrowed("refuse"));
    pub const RESTART: Action = Action(Cow::Borrowed("restart"));
    pub const BLACKLIST: Action = Action(Cow::Borrowed("blacklist"));
    /// Another catalog cell ran in place of a blacklisted one: the cell
    /// asked for in `cell`; the stand-in, its instance, the capability both
    /// offer and why in the detail.
    pub const SUBSTITUTE: Action = Action(Cow::Borrowed("substitute"));
    /// quantumd started (with which identity, from which store).
    pub const START: Action = Action(Cow::Borrowed("start"));
    /// A cell ended on its own (not stopped on request).
    pub const EXIT: Action = Action(Cow::Borrowed("exit"));
    pub const PLAN: Action = Action(Cow::Borrowed("plan"));
    pub const EXECUTE: Action = Action(Cow::Borrowed("execute"));
    pub const IDENTITY: Action = Action(Cow::Borrowed("identity"));
    /// quantumd changed a running cell's resources (CPU weight for its objective).
    pub const TUNE: Action = Action(Cow::Borrowed("tune"));
    /// A signed bundle verified before its cell runs (signer, origin).
    pub const BUNDLE: Action = Action(Cow::Borrowed("bundle"));
    /// A stateful cell's state changed: `snapshot NAME`, `rollback NAME`,
    /// `delete NAME` in the detail.
    pub const STATE: Action = Action(Cow::Borrowed("state"));
    /// A trigger was added (`add NAME`), removed (`remove NAME`) or fired
    /// (`fire NAME: WHY`); the run it causes is a `run` by `trigger:NAME`.
    pub const TRIGGER: Action = Action(Cow::Borrowed("trigger"));
    /// A cell's unit started before it was asked for (`warm ID: WHY`), or
    /// given up (`cool ID: WHY`); a run that takes it says `claimed`.
    pub const PREWARM: Action = Action(Cow::Borrowed("prewarm"));
    /// A cell behaved unlike its baseline or its manifest (security-ai):
    /// `INSTANCE: KIND: RESPONSE: MESSAGE` in the detail.
    pub const ALERT: Action = Action(Cow::Borrowed("alert"));
    /// The channel broker (Cell 0 IPC): `listen INSTANCE: CELL/CHANNEL`,
    /// `connect INSTANCE -> PROVIDER: CELL/CHANNEL`, `refused: WHO:
    /// CHANNEL: WHY`, `revoke INSTANCE: WHAT; N open streams closed`.
    pub const CHANNEL: Action = Action(Cow::Borrowed("channel"));
    /// The cell network (quantum-cluster): `joined as NODE (lease L)`,
    /// `lost: WHY`, `node up NODE (key K)`, `node down NODE`, `refused
    /// node NODE: WHY`, `left`.
    pub const CLUSTER: Action = Action(Cow::Borrowed("cluster"));
    /// Something that happened to the trail itself (a repair at open).
    pub const TRAIL: Action = Action(Cow::Borrowed("trail"));

    pub fn new(name: &str) -> Result<Action, EntryError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_ACTION
            && name.as_bytes()[0].is_ascii_lowercase()
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Action(Cow::Owned(name.to_owned())))
        } else {
            Err(EntryError::BadAction { name: name.to_owned() })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Action({})", self.0)
    }
}

/// How the action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error(String),
}

/// One recorded entry, as read back from the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the trail: 1 for the first entry, then one more each time.
    pub seq: u64,
    /// When it was appended, in nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// Who asked: "uid:1000", "quantumd", ...
    pub actor: String,
    pub action: Action,
    pub cell: Option<String>,
    /// blake3 of the manifest the action was about.
    pub manifest_hash: Option<Digest>,
    pub result: Outcome,
    pub detail: Option<String>,
}

/// An entry as the caller hands it to [`crate::Trail::append`]; the trail
/// gives it its sequence number and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    pub actor: String,
    pub action: Action,
    pub cell: Option<String>,
    pub manifest_hash: Option<Digest>,
    pub result: Outcome,
    pub detail: Option<String>,
}

impl NewEntry {
    /// An entry with result `Ok` and no cell, manifest or detail.
    pub fn new(actor: impl Into<String>, action: Action) -> NewEntry {
        NewEntry {
            actor: actor.into(),
            action,
            cell: None,
            manifest_hash: None,
            result: Outcome::Ok,
            detail: None,
        }
    }

    pub fn cell(mut self, cell: impl Into<String>) -> NewEntry {
        self.cell = Some(cell.into());
        self
    }

    pub fn manifest_hash(mut self, hash: Digest) -> NewEntry {
        self.manifest_hash = Some(hash);
        self
    }

    pub fn error(mut self, text: impl Into<String>) -> NewEntry {
        self.result = Outcome::Error(text.into());
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> NewEntry {
        self.detail = Some(detail.into());
        self
    }

    pub(crate) fn into_entry(self, seq: u64, time_ns: u64) -> Entry {
        Entry {
            seq,
            time_ns,
            actor: self.actor,
            action: self.action,
            cell: self.cell,
            manifest_hash: self.manifest_hash,
            result: self.result,
            detail: self.detail,
        }
    }
}

impl Entry {
    /// Checks every field against the limits the encoding relies on. The
    /// writer calls it before appending and the decoder after reading, so a
    /// record that decodes is one the writer could have written.
    pub fn validate(&self) -> Result<(), EntryError> {
        check_line("actor", &self.actor, MAX_ACTOR)?;
        if let Some(cell) = &self.cell {
            check_line("cell", cell, MAX_CELL)?;
        }
        if let Outcome::Error(text) = &self.result {
            check_len("error text", text, MAX_TEXT)?;
        }
        if let Some(detail) = &self.detail {
            check_len("detail", detail, MAX_TEXT)?;
        }
        // The action was validated when it was made; `Action` has no other
        // constructor.
        Ok(())
    }
}

/// A one-line field: non-empty, bounded, no control characters (so that
/// `trail show` output cannot be forged across lines).
fn check_line(field: &'static str, value: &str, max: usize) -> Result<(), EntryError> {
    if value.is_empty() {
        return Err(EntryError::Empty { field });
    }
    check_len(field, value, max)?;
    if let Some((at, _)) = value.char_indices().find(|(_, c)| c.is_control()) {
        return Err(EntryError::ControlChar { field, at });
    }
    Ok(())
}

fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), EntryError> {
    if value.len() > max {
        return Err(EntryError::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_names_are_lowercase_words_starting_with_a_letter() {
        assert_eq!(Action::new("run").unwrap(), Action::RUN);
        assert!(Action::new("cell-start2").is_ok());
        for bad in ["", "Run", "2run", "run now", "-x", &"a".repeat(33)] {
            assert!(Action::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn digest_round_trips_through_hex() {
        let d = Digest(*blake3::hash(b"manifest").as_bytes());
        assert_eq!(Digest::from_hex(&d.to_hex()).unwrap(), d);
        assert_eq!(Digest::from_hex(&d.to_hex().to_uppercase()).unwrap(), d);
        assert!(Digest::from_hex("abc").is_err());
        assert!(Digest::from_hex(&"g".repeat(64)).is_err());
    }

    #[test]
    fn one_line_fields_refuse_control_characters_and_emptiness() {
        let mut e = NewEntry::new("uid:1000", Action::RUN).cell("web\nserver").into_entry(1, 0);
        assert_eq!(e.validate(), Err(EntryError::ControlChar { field: "cell", at: 3 }));
        e.cell = Some("web-server".into());
        e.actor = String::new();
        assert_eq!(e.validate(), Err(EntryError::Empty { field: "actor" }));
    }

    #[test]
    fn detail_may_span_lines_but_not_exceed_its_limit() {
        let mut e = NewEntry::new("quantumd", Action::PLAN).detail("line 1\nline 2").into_entry(1, 0);
        assert!(e.validate().is_ok());
        e.detail = Some("x".repeat(MAX_TEXT + 1));
        assert!(matches!(e.validate(), Err(EntryError::TooLong { field: "detail", .. })));
    }
}
