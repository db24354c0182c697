//! What quantumd may ask of systemd through the gate, and what of systemd's
//! traffic it is shown.
//!
//! quantumd needs six Manager calls and read access to properties; anything
//! else (other units' lifecycle, unit files, reload, power) is refused with
//! `org.freedesktop.DBus.Error.AccessDenied`, whatever a compromised quantumd
//! sends. Names are checked on every call that carries one: only units
//! named `quantum-*` may be created, stopped, reset or changed — the rule
//! polkit can only enforce where systemd passes it the unit (v254+; not for
//! StartTransientUnit on bookworm's 252).

use zbus::message::Type;
use zbus::zvariant::Value;
use zbus::Message;

/// The prefix of every unit quantumd creates (cells, their slices, their
/// state operations).
pub const UNIT_PREFIX: &str = "quantum-";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
const PEER: &str = "org.freedesktop.DBus.Peer";
/// Where systemd puts the object of a unit named `quantum-…`
/// (`sd_bus_path_encode`: `-` is `_2d`).
const QUANTUM_UNIT_PATHS: &str = "/org/freedesktop/systemd1/unit/quantum_2d";

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    /// Refused; the text goes back to quantumd in the error reply.
    Refuse(String),
}

/// A message from quantumd on its way to systemd.
pub fn outbound(msg: &Message) -> Verdict {
    if msg.message_type() != Type::MethodCall {
        // systemd calls nothing on its clients; replies from quantumd
        // would answer nothing.
        return Verdict::Refuse("quantumd may only send method calls to systemd".into());
    }
    let header = msg.header();
    let member = header.member().map(|m| m.as_str()).unwrap_or("");
    let interface = header.interface().map(|i| i.as_str()).unwrap_or("");
    let path = header.path().map(|p| p.as_str()).unwrap_or("");
    match (interface, member) {
        (PROPERTIES, "Get" | "GetAll") | (PEER, "Ping") => Verdict::Forward,
        (MANAGER, _) if path != MANAGER_PATH => Verdict::Refuse(format!("{member} on {path}: not systemd's manager object")),
        (MANAGER, "Subscribe" | "ListUnitsByPatterns") => Verdict::Forward,
        (MANAGER, "StartTransientUnit") => start_transient_unit(msg),
        (MANAGER, "StopUnit" | "ResetFailedUnit" | "SetUnitProperties" | "KillUnit" | "GetUnit") => match first_string(msg) {
            Some(unit) if unit.starts_with(UNIT_PREFIX) => Verdict::Forward,
            Some(unit) => Verdict::Refuse(format!("{member} {unit}: quantumd may only touch units named {UNIT_PREFIX}*")),
            None => Verdict::Refuse(format!("{member}: no unit name in the call")),
        },
        _ => Verdict::Refuse(format!(
            "{}.{member} is not among the calls quantumd may make",
            if interface.is_empty() { "(no interface)" } else { interface }
        )),
    }
}

/// StartTransientUnit(name, mode, properties, aux): a `quantum-*` unit,
/// and no auxiliary units but one: a trigger's timer or path unit
/// (`quantum-trigger-NAME.timer|path`) comes with the service it starts,
/// which must be `quantum-trigger-NAME.service` and run `/bin/true` only
/// (it does nothing but tell quantumd; see quantumd's `triggers.rs`).
fn start_transient_unit(msg: &Message) -> Verdict {
    let body = msg.body();
    type Aux<'a> = Vec<(&'a str, Vec<(&'a str, Value<'a>)>)>;
    let Ok((name, _mode, _props, aux)) = body.deserialize::<(&str, &str, Vec<(&str, Value<'_>)>, Aux<'_>)>() else {
        return Verdict::Refuse(format!(
            "StartTransientUnit with body {}: not the manager's signature",
            body.signature().to_string_no_parens()
        ));
    };
    if !name.starts_with(UNIT_PREFIX) {
        return Verdict::Refuse(format!(
            "StartTransientUnit {name}: quantumd may only create units named {UNIT_PREFIX}*"
        ));
    }
    match aux.as_slice() {
        [] => Verdict::Forward,
        [(service, props)] if trigger_service(name).is_some_and(|s| s == *service) && only_true(props) => Verdict::Forward,
        _ => Verdict::Refuse(format!(
            "StartTransientUnit {name}: auxiliary units are not allowed, but for a trigger's timer or path unit its own service running /bin/true"
        )),
    }
}

/// The service a trigger's timer or path unit may come with.
fn trigger_service(unit: &str) -> Option<String> {
    let rest = unit.strip_prefix(UNIT_PREFIX)?.strip_prefix("trigger-")?;
    let (name, kind) = rest.rsplit_once('.')?;
    let plain = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (plain && matches!(kind, "timer" | "path")).then(|| format!("{UNIT_PREFIX}trigger-{name}.service"))
}

/// Whether a service's properties run nothing but `/bin/true` (ExecStart
/// only; no other Exec*).
fn only_true(props: &[(&str, Value<'_>)]) -> bool {
    let mut starts = 0;
    for (name, value) in props {
        if name.starts_with("Exec") && *name != "ExecStart" {
            return false;
        }
        if *name != "ExecStart" {
            continue;
        }
        let Value::Array(commands) = value else { return false };
        for command in commands.iter() {
            let Value::Structure(s) = command else { return false };
            if !matches!(s.fields().first(), Some(Value::Str(path)) if path.as_str() == "/bin/true") {
                return false;
            }
            starts += 1;
        }
    }
    starts > 0
}

/// The first argument, when it is a string.
fn first_string(msg: &Message) -> Option<String> {
    let body = msg.body();
    if !body.signature().to_string_no_parens().starts_with('s') {
        return None;
    }
    body.deserialize_unchecked::<(&str,)>().ok().map(|(s,)| s.to_owned())
}

/// Whether a message from systemd reaches quantumd: replies always (they
/// answer quantumd's own calls); signals only about `quantum-*` units —
/// systemd sends every unit's changes to a subscribed private connection,
/// where the bus would have filtered them by quantumd's match rules.
pub fn inbound(msg: &Message) -> bool {
    match msg.message_type() {
        Type::MethodReturn | Type::Error => true,
        Type::MethodCall => false,
        Type::Signal => {
            let header = msg.header();
            let path = header.path().map(|p| p.as_str()).unwrap_or("");
            match header.member().map(|m| m.as_str()) {
                Some("PropertiesChanged") => path.starts_with(QUANTUM_UNIT_PATHS),
                // JobRemoved(id, job, unit, result), JobNew(id, job, unit),
                // UnitNew/UnitRemoved(unit, path).
                Some("JobRemoved" | "JobNew") => job_unit(msg).is_some_and(|u| u.starts_with(UNIT_PREFIX)),
                Some("UnitNew" | "UnitRemoved") => first_string(msg).is_some_and(|u| u.starts_with(UNIT_PREFIX)),
                _ => false,
            }
        }
    }
}

fn job_unit(msg: &Message) -> Option<String> {
    let body = msg.body();
    if !body.signature().to_string_no_parens().starts_with("uos") {
        return None;
    }
    body.deserialize_unchecked::<(u32, zbus::zvariant::ObjectPath<'_>, &str)>()
        .ok()
        .map(|(_, _, unit)| unit.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager_call<B: serde::Serialize + zbus::zvariant::DynamicType>(member: &str, body: &B) -> Message {
        Message::method_call(MANAGER_PATH, member)
            .and_then(|b| b.interface(MANAGER))
            .and_then(|b| b.destination("org.freedesktop.systemd1"))
            .and_then(|b| b.build(body))
            .expect("a valid call")
    }

    fn transient(name: &str, aux: Vec<(&str, Vec<(&str, Value<'_>)>)>) -> Message {
        let props: Vec<(&str, Value<'_>)> = vec![("Description", Value::from("x")), ("User", Value::from("root"))];
        manager_call("StartTransientUnit", &(name, "fail", props, aux))
    }

    fn signal(path: &str, iface: &str, member: &str, body: &(impl serde::Serialize + zbus::zvariant::DynamicType)) -> Message {
        Message::signal(path, iface, member)
            .and_then(|b| b.build(body))
            .expect("a valid signal")
    }

    #[test]
    fn quantum_units_may_be_started_stopped_and_reset_and_no_others() {
        assert_eq!(outbound(&transient("quantum-web-server.1.service", vec![])), Verdict::Forward);
        assert_eq!(outbound(&transient("quantum-cells-x.slice", vec![])), Verdict::Forward);
        assert!(matches!(outbound(&transient("evil.service", vec![])), Verdict::Refuse(why) if why.contains("evil.service")));
        assert_eq!(
            outbound(&manager_call("StopUnit", &("quantum-a.1.service", "replace"))),
            Verdict::Forward
        );
        assert_eq!(
            outbound(&manager_call("ResetFailedUnit", &("quantum-a.1.service",))),
            Verdict::Forward
        );
        let weight: Vec<(&str, Value<'_>)> = vec![("CPUWeight", Value::from(50u64))];
        assert_eq!(
            outbound(&manager_call("SetUnitProperties", &("quantum-a.1.service", true, weight))),
            Verdict::Forward
        );
        for unit in ["ssh.service", "quantumd.service", "quantum.slice", "dbus.service"] {
            assert!(
                matches!(outbound(&manager_call("StopUnit", &(unit, "replace"))), Verdict::Refuse(_)),
                "{unit}"
            );
        }
    }

    #[test]
    fn auxiliary_units_are_refused_even_with_a_quantum_name() {
        let aux = vec![("other.service", vec![("Description", Value::from("y"))])];
        assert!(matches!(outbound(&transient("quantum-a.1.service", aux)), Verdict::Refuse(why) if why.contains("auxiliary")));
    }

    fn exec(path: &str) -> Vec<(&'static str, Value<'static>)> {
        let cmd: Vec<(String, Vec<String>, bool)> = vec![(path.to_owned(), vec![path.to_owned()], false)];
        vec![("ExecStart", Value::from(cmd))]
    }

    #[test]
    fn a_triggers_timer_may_bring_its_own_service_running_true_and_nothing_else() {
        let ok = vec![("quantum-trigger-nightly.service", exec("/bin/true"))];
        assert_eq!(outbound(&transient("quantum-trigger-nightly.timer", ok.clone())), Verdict::Forward);
        assert_eq!(
            outbound(&transient(
                "quantum-trigger-inbox.path",
                vec![("quantum-trigger-inbox.service", exec("/bin/true"))]
            )),
            Verdict::Forward
        );
        for (unit, aux) in [
            (
                "quantum-trigger-nightly.timer",
                vec![("quantum-trigger-nightly.service", exec("/bin/sh"))],
            ),
            (
                "quantum-trigger-nightly.timer",
                vec![("quantum-trigger-other.service", exec("/bin/true"))],
            ),
            (
                "quantum-trigger-nightly.service",
                vec![("quantum-trigger-nightly.service", exec("/bin/true"))],
            ),
            ("quantum-a.1.timer", vec![("quantum-a.1.service", exec("/bin/true"))]),
            ("quantum-trigger-nightly.timer", vec![("quantum-trigger-nightly.service", vec![])]),
            ("quantum-trigger-nightly.timer", [ok.clone(), ok.clone()].concat()),
        ] {
            assert!(
                matches!(outbound(&transient(unit, aux.clone())), Verdict::Refuse(_)),
                "{unit} {aux:?}"
            );
        }
        let mut pre = exec("/bin/true");
        pre.push(("ExecStartPre", Value::from(Vec::<(String, Vec<String>, bool)>::new())));
        assert!(matches!(
            outbound(&transient(
                "quantum-trigger-nightly.timer",
                vec![("quantum-trigger-nightly.service", pre)]
            )),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn everything_else_of_the_manager_is_refused() {
        for member in [
            "Reboot",
            "PowerOff",
            "Reload",
            "EnableUnitFiles",
            "StartUnit",
            "SetEnvironment",
            "ClearJobs",
        ] {
            assert!(matches!(outbound(&manager_call(member, &())), Verdict::Refuse(_)), "{member}");
        }
        // StartUnit of an existing quantum- name is not needed either.
        assert!(matches!(
            outbound(&manager_call("StartUnit", &("quantum-a.service", "fail"))),
            Verdict::Refuse(_)
        ));
        let set = Message::method_call("/org/freedesktop/systemd1/unit/ssh_2eservice", "Set")
            .and_then(|b| b.interface(PROPERTIES))
            .and_then(|b| b.build(&("org.freedesktop.systemd1.Unit", "x", Value::from(1u32))))
            .expect("call");
        assert!(matches!(outbound(&set), Verdict::Refuse(_)));
        let unit_stop = Message::method_call("/org/freedesktop/systemd1/unit/ssh_2eservice", "Stop")
            .and_then(|b| b.interface("org.freedesktop.systemd1.Unit"))
            .and_then(|b| b.build(&("replace",)))
            .expect("call");
        assert!(matches!(outbound(&unit_stop), Verdict::Refuse(_)));
    }

    #[test]
    fn properties_may_be_read_anywhere() {
        let get = Message::method_call("/org/freedesktop/systemd1/unit/quantum_2da_2e1_2eservice", "GetAll")
            .and_then(|b| b.interface(PROPERTIES))
            .and_then(|b| b.build(&("org.freedesktop.systemd1.Service",)))
            .expect("call");
        assert_eq!(outbound(&get), Verdict::Forward);
        assert_eq!(outbound(&manager_call("Subscribe", &())), Verdict::Forward);
    }

    #[test]
    fn only_signals_about_quantum_units_reach_quantumd() {
        let changed = |path: &str| {
            let changed: std::collections::HashMap<&str, Value<'_>> = [("ActiveState", Value::from("active"))].into();
            signal(
                path,
                PROPERTIES,
                "PropertiesChanged",
                &("org.freedesktop.systemd1.Unit", changed, Vec::<&str>::new()),
            )
        };
        assert!(inbound(&changed("/org/freedesktop/systemd1/unit/quantum_2da_2e1_2eservice")));
        assert!(!inbound(&changed("/org/freedesktop/systemd1/unit/ssh_2eservice")));
        let job = |unit: &str| {
            let path = zbus::zvariant::ObjectPath::try_from("/org/freedesktop/systemd1/job/7").expect("path");
            signal(MANAGER_PATH, MANAGER, "JobRemoved", &(7u32, path, unit, "done"))
        };
        assert!(inbound(&job("quantum-a.1.service")));
        assert!(!inbound(&job("apt-daily.service")));
        assert!(!inbound(&signal(MANAGER_PATH, MANAGER, "Reloading", &(true,))));
    }
}
