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
/// A unique bus name (`:1.42`) is never reused while the bus runs, so its
/// uid, and polkit's yes for it, hold for the connection's life: polkit's
/// own agents cache the same way. Each start used to cost two
/// GetConnectionUnixUser round trips through the bus, and a polkit call
/// for non-root callers. Only a yes is kept: a no may become a yes once an
/// agent has asked for a password.
#[derive(Clone)]
pub struct Authorizer {
    mode: Mode,
    conn: zbus::Connection,
    callers: Arc<Mutex<Callers>>,
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
        }
    }

    fn callers(&self) -> std::sync::MutexGuard<'_, Callers> {
        self.callers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The uid behind `sender` (a unique bus name), from the bus once.
    pub async fn uid(&self, sender: &str) -> Result<u32, String> {
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
        let subject = ("system-bus-name", HashMap::from([("name", Value::from(sender))]));
        let (authorized, _challenge, _details) = authority
            .check_authorization(&subject, action, HashMap::new(), ALLOW_USER_INTERACTION, "")
            .await
            .map_err(|e| format!("polkit check failed: {e}"))?;
        if !authorized {
            return Err(format!(
                "not authorized for {action}: ask an administrator to add you to the \"quantum\" group"
            ));
        }
        if sender.starts_with(':') {
            let mut callers = self.callers();
            if callers.allowed.len() >= CACHE_LIMIT {
                callers.allowed.clear();
            }
            callers.allowed.insert(key);
        }
        Ok(())
    }
}
