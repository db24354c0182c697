//! Access control for calls that change state: polkit decides, quantumd
//! asks. On a private bus (tests, `--bus`) there is no polkit; the bus's own
//! access rules apply and quantumd says so at start.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use zbus::zvariant::Value;

#[zbus::proxy(
    interface = "org.freedesktop.PolicyKit1.Authority",
    default_service = "org.freedesktop.PolicyKit1",
    default_path = "/org/freedesktop/PolicyKit1/Authority",
    gen_blocking = false
)]
trait Authority {
    #[allow(clippy::type_complexity)]
    fn check_authorization(
        &self,
        subject: &(&str, HashMap<&str, Value<'_>>),
        action_id: &str,
        details: HashMap<&str, &str>,
        flags: u32,
        cancellation_id: &str,
    ) -> zbus::Result<(bool, bool, HashMap<String, String>)>;
}

/// How access is decided.
#[derive(Clone)]
pub enum Mode {
    Polkit,
    /// Everyone who can reach the bus may act (private buses only).
    BusOnly,
}

/// Decides who may change state, and remembers who callers are.
///
/// One per connection kind: the bus's (callers told apart by their unique
/// names) and one per connection to the direct socket (`direct.rs`), whose
/// single caller the kernel names (SO_PEERCRED), so that no round trip
/// through the bus is needed to learn its uid. A unique bus name (`:1.42`)
/// is never reused while the bus runs, so its uid, and polkit's yes for it, hold for the connection's life: polkit's
/// own agents cache the same way. Each start used to cost two
/// GetConnectionUnixUser round trips through the bus, and a polkit call
/// for non-root callers. Only a yes is kept: a no may become a yes once an
/// agent has asked for a password.
#[derive(Clone)]
pub struct Authorizer {
    mode: Mode,
    /// The bus polkit is asked on (the system bus).
    conn: zbus::Connection,
    callers: Arc<Mutex<Callers>>,
    /// The caller of a direct connection, when this is one.
    peer: Option<Arc<Peer>>,
}

/// The process at the other end of a direct connection, as the kernel saw
/// it when it connected.
#[derive(Debug)]
pub struct Peer {
    /// Stands for a unique bus name (plans are kept per caller): `direct:N`.
    pub name: String,
    pub uid: u32,
    pub pid: u32,
    /// The process's start time (/proc/PID/stat, clock ticks since boot),
    /// read when it connected, so that polkit cannot be asked about a
    /// process that reused the pid; 0 when it could not be read (polkit then
    /// looks it up itself).
    pub start_time: u64,
}

impl Peer {
    pub fn new(name: String, uid: u32, pid: u32) -> Peer {
        Peer {
            name,
            uid,
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
        }
    }
}

/// Field 22 of /proc/PID/stat; the command name before it may hold spaces
/// and parentheses, so fields are counted after its last ')'.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // rest: " S PPID ..." -- field 3 is its first.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[derive(Default)]
struct Callers {
    uids: HashMap<String, u32>,
    allowed: HashSet<(String, String)>,
}

/// Entries kept before the caches are emptied (departed callers' entries
/// are never wrong, only unused; emptying is cheaper than tracking exits).
const CACHE_LIMIT: usize = 4096;

/// polkit's AllowUserInteraction flag: an agent may ask for a password.
const ALLOW_USER_INTERACTION: u32 = 1;

impl Authorizer {
    pub fn new(mode: Mode, conn: zbus::Connection) -> Authorizer {
        Authorizer {
            mode,
            conn,
            callers: Arc::default(),
            peer: None,
        }
    }

    /// The authorizer of one direct connection: same mode, same polkit,
    /// its own caches (they hold one caller).
    pub fn for_peer(&self, peer: Peer) -> Authorizer {
        Authorizer {
            mode: self.mode.clone(),
            conn: self.conn.clone(),
            callers: Arc::default(),
            peer: Some(Arc::new(peer)),
        }
    }

    /// Who is calling: the unique bus name, or a direct connection's name.
    pub fn caller(&self, header: &zbus::message::Header<'_>) -> String {
        match &self.peer {
            Some(peer) => peer.name.clone(),
            None => header.sender().map(|s| s.to_string()).unwrap_or_default(),
        }
    }

    fn callers(&self) -> std::sync::MutexGuard<'_, Callers> {
        self.callers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The uid behind `sender` (a unique bus name), from the bus once.
    pub async fn uid(&self, sender: &str) -> Result<u32, String> {
        if let Some(peer) = &self.peer {
            return Ok(peer.uid);
        }
        if let Some(uid) = self.callers().uids.get(sender) {
            return Ok(*uid);
        }
        let dbus = zbus::fdo::DBusProxy::new(&self.conn).await.map_err(|e| e.to_string())?;
        let name = zbus::names::BusName::try_from(sender).map_err(|e| e.to_string())?;
        let uid = dbus.get_connection_unix_user(name).await.map_err(|e| e.to_string())?;
        // Only unique names are stable; a well-known one may change hands.
        if sender.starts_with(':') {
            let mut callers = self.callers();
            if callers.uids.len() >= CACHE_LIMIT {
                callers.uids.clear();
            }
            callers.uids.insert(sender.to_owned(), uid);
        }
        Ok(uid)
    }

    /// Whether `sender` (a unique bus name) may perform `action`.
    pub async fn check(&self, sender: &str, action: &str) -> Result<(), String> {
        if let Mode::BusOnly = self.mode {
            return Ok(());
        }
        // root is always allowed, as systemd does.
        if self.uid(sender).await? == 0 {
            return Ok(());
        }
        let key = (sender.to_owned(), action.to_owned());
        if self.callers().allowed.contains(&key) {
            return Ok(());
        }
        let authority = AuthorityProxy::new(&self.conn)
            .await
            .map_err(|e| format!("polkit is not available: {e}"))?;
        // A direct caller is a process (with its uid, as pkcheck --process
        // passes it, so that polkit needs nothing racy from /proc).
        let subject = match &self.peer {
            Some(peer) => (
                "unix-process",
                HashMap::from([
                    ("pid", Value::from(peer.pid)),
                    ("start-time", Value::from(peer.start_time)),
                    ("uid", Value::from(peer.uid as i32)),
                ]),
            ),
            None => ("system-bus-name", HashMap::from([("name", Value::from(sender))])),
        };
        let (authorized, _challenge, _details) = authority
            .check_authorization(&subject, action, HashMap::new(), ALLOW_USER_INTERACTION, "")
            .await
            .map_err(|e| format!("polkit check failed: {e}"))?;
        if !authorized {
            return Err(format!(
                "not authorized for {action}: ask an administrator to add you to the \"quantum\" group"
            ));
        }
        if sender.starts_with(':') || self.peer.is_some() {
            let mut callers = self.callers();
            if callers.allowed.len() >= CACHE_LIMIT {
                callers.allowed.clear();
            }
            callers.allowed.insert(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_process_has_a_start_time_and_a_gone_one_has_none() {
        let me = std::process::id();
        let ticks = process_start_time(me).expect("our own /proc/PID/stat");
        assert!(ticks > 0);
        // pid_max is at most 2^22.
        assert_eq!(process_start_time(u32::MAX), None);
    }
}
