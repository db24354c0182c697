//! Access control for calls that change state: polkit decides, quantumd
//! asks. On a private bus (tests, `--bus`) there is no polkit; the bus's own
//! access rules apply and quantumd says so at start.

use std::collections::HashMap;

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

#[derive(Clone)]
pub enum Authorizer {
    Polkit(zbus::Connection),
    /// Everyone who can reach the bus may act (private buses only).
    BusOnly,
}

/// polkit's AllowUserInteraction flag: an agent may ask for a password.
const ALLOW_USER_INTERACTION: u32 = 1;

impl Authorizer {
    /// Whether `sender` (a unique bus name) may perform `action`.
    pub async fn check(&self, sender: &str, action: &str) -> Result<(), String> {
        let conn = match self {
            Authorizer::BusOnly => return Ok(()),
            Authorizer::Polkit(conn) => conn,
        };
        // root is always allowed, as systemd does.
        let dbus = zbus::fdo::DBusProxy::new(conn).await.map_err(|e| e.to_string())?;
        let name = zbus::names::BusName::try_from(sender).map_err(|e| e.to_string())?;
        if dbus.get_connection_unix_user(name).await.map_err(|e| e.to_string())? == 0 {
            return Ok(());
        }
        let authority = AuthorityProxy::new(conn)
            .await
            .map_err(|e| format!("polkit is not available: {e}"))?;
        let subject = ("system-bus-name", HashMap::from([("name", Value::from(sender))]));
        let (authorized, _challenge, _details) = authority
            .check_authorization(&subject, action, HashMap::new(), ALLOW_USER_INTERACTION, "")
            .await
            .map_err(|e| format!("polkit check failed: {e}"))?;
        if authorized {
            Ok(())
        } else {
            Err(format!(
                "not authorized for {action}: ask an administrator to add you to the \"quantum\" group"
            ))
        }
    }
}
