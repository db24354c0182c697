//! The assistant as a person uses it: a real quantumd (cgroup backend) on a
//! private dbus-daemon, a real sway with a headless output, the assistant in
//! it as an unprivileged user; the request is typed with a virtual keyboard
//! (wtype), the plan confirmed with Ctrl+Enter, and what is on screen read
//! back through the assistant's `org.quantumos.Assistant1.Widgets` and
//! photographed with grim into `target/desktop-screenshots/`.
//!
//! Runs as root (it mounts cgroup2 and starts quantumd, as the host tier
//! does); `make test-desktop` installs sway, grim and wtype first.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The unprivileged user the desktop runs as (sway refuses to run as root).
const USER: u32 = 65534;
/// The first request also waits for quantumd to load the intent model.
const LONG: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `quantumd` beside the assistant (`cargo build --workspace --bins`), or `$QUANTUMD`.
fn quantumd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("QUANTUMD") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_BIN_EXE_quantum-assistant")).with_file_name("quantumd");
    assert!(p.exists(), "{} not built: run `cargo build --workspace --bins` first", p.display());
    p
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("desktop-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A child killed when dropped (a failing test leaves nothing running).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        kill(&mut self.0);
    }
}

/// quantumd on a private bus with the standard catalog, sway, and the
/// directories the desktop user owns.
struct Desktop {
    dir: tempfile::TempDir,
    bus: String,
    dbus: Child,
    quantumd: Option<Child>,
    sway: Option<Child>,
    mount: PathBuf,
    cgroup_root: PathBuf,
    runtime: tokio::runtime::Runtime,
    conn: Option<zbus::Connection>,
}

impl Desktop {
    fn start() -> Desktop {
        let dir = tempfile::tempdir().expect("tempdir");
        // The desktop user reaches the bus socket and its home through here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let sock = dir.path().join("bus");
        let dbus = Command::new("dbus-daemon")
            .arg(format!(
                "--config-file={}",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/private-bus.conf").display()
            ))
            .arg(format!("--address=unix:path={}", sock.display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .spawn()
            .expect("dbus-daemon (apt install dbus)");
        wait_for("the private bus socket", Duration::from_secs(10), || sock.exists().then_some(()));

        let mount = dir.path().join("cgroup2");
        std::fs::create_dir_all(&mount).expect("mkdir");
        let st = Command::new("mount")
            .args(["-t", "cgroup2", "none"])
            .arg(&mount)
            .status()
            .expect("mount");
        assert!(st.success(), "cannot mount cgroup2 (this test runs as root)");
        let cgroup_root = mount.join(format!("qdesktop-{}", std::process::id()));
        std::fs::create_dir_all(&cgroup_root).expect("test cgroup");

        let home = dir.path().join("home");
        let runtime_dir = dir.path().join("run");
        for d in [&home, &runtime_dir] {
            std::fs::create_dir_all(d).expect("mkdir");
            std::os::unix::fs::chown(d, Some(USER), Some(USER)).expect("chown");
        }
        std::fs::set_permissions(&runtime_dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");

        // The desktop user may not be able to reach the checkout (a clone
        // under /root): it gets its own copies of the assistant and catalog.
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        std::fs::copy(env!("CARGO_BIN_EXE_quantum-assistant"), bin.join("quantum-assistant")).expect("copy the assistant");
        let copied = Command::new("cp")
            .arg("-r")
            .arg(repo().join("packaging/cells"))
            .arg(dir.path().join("cells"))
            .status()
            .expect("cp");
        assert!(copied.success(), "cannot copy the catalog");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
        let mut desktop = Desktop {
            bus: format!("unix:path={}", sock.display()),
            dir,
            dbus,
            quantumd: None,
            sway: None,
            mount,
            cgroup_root,
            runtime,
            conn: None,
        };
        desktop.start_quantumd();
        desktop.start_sway();
        desktop
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_quantumd(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("quantumd.log"))
            .expect("log");
        let config = self.path("quantumd.toml");
        std::fs::write(&config, "").expect("quantumd.toml");
        let child = Command::new(quantumd_bin())
            .args(["--backend", "cgroup", "--config"])
            .arg(&config)
            .arg("--cgroup-root")
            .arg(&self.cgroup_root)
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--cache-dir")
            .arg(self.path("cache"))
            .arg("--catalog")
            .arg(repo().join("packaging/cells"))
            .arg("--channels")
            .arg(self.path("channels.sock"))
            .env("QUANTUM_BUS_ADDRESS", &self.bus)
            .env("RUST_LOG", "info")
            .stderr(log)
            .spawn()
            .expect("quantumd");
        self.quantumd = Some(child);
        let conn = self
            .runtime
            .block_on(zbus::connection::Builder::address(self.bus.as_str()).expect("address").build())
            .expect("a connection to the private bus");
        self.conn = Some(conn);
        wait_for("quantumd on the bus", LONG, || self.has_owner(quantum_bus::BUS_NAME).then_some(()));
    }

    /// kill -9, as a crash would.
    fn kill_quantumd(&mut self) {
        if let Some(mut c) = self.quantumd.take() {
            kill(&mut c);
        }
    }

    fn conn(&self) -> &zbus::Connection {
        self.conn.as_ref().expect("connected")
    }

    fn has_owner(&self, name: &'static str) -> bool {
        self.runtime.block_on(async {
            let dbus = zbus::fdo::DBusProxy::new(self.conn()).await.expect("the bus's own interface");
            let name = zbus::names::BusName::try_from(name).expect("a bus name");
            dbus.name_has_owner(name).await.unwrap_or(false)
        })
    }

    /// A command run as the desktop user in the desktop's session.
    fn as_user(&self, program: &str) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={USER}"),
            &format!("--regid={USER}"),
            "--clear-groups",
            "--",
            program,
        ])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", self.path("home"))
        .env("XDG_RUNTIME_DIR", self.path("run"))
        .env("WAYLAND_DISPLAY", "wayland-1")
        .env("DBUS_SESSION_BUS_ADDRESS", &self.bus)
        .env("LANG", "C.UTF-8");
        cmd
    }

    fn start_sway(&mut self) {
        let config = self.path("sway.conf");
        std::fs::write(
            &config,
            "xwayland disable\noutput HEADLESS-1 resolution 1280x800 position 0 0\ndefault_border none\n",
        )
        .expect("sway config");
        let log = std::fs::File::create(self.path("sway.log")).expect("log");
        let child = self
            .as_user("sway")
            .arg("--config")
            .arg(&config)
            .env_remove("WAYLAND_DISPLAY")
            .env("WLR_BACKENDS", "headless")
            .env("WLR_LIBINPUT_NO_DEVICES", "1")
            .env("WLR_RENDERER", "pixman")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sway (apt install sway)");
        self.sway = Some(child);
        let socket = self.path("run/wayland-1");
        wait_for("sway's Wayland socket", LONG, || socket.exists().then_some(()));
    }

    /// The assistant as the desktop user, `dark` with the dark style.
    fn assistant(&self, dark: bool, log_name: &str) -> Running {
        let log = std::fs::File::create(self.path(log_name)).expect("log");
        let mut cmd = self.as_user(&self.path("bin/quantum-assistant").display().to_string());
        cmd.env("QUANTUM_BUS_ADDRESS", &self.bus)
            .env("QUANTUM_CATALOG", self.path("cells"))
            .env("GDK_BACKEND", "wayland")
            // pixman has no GL to offer.
            .env("GSK_RENDERER", "cairo")
            .env("GTK_A11Y", "none")
            .env("RUST_LOG", "debug");
        if dark {
            cmd.env("ADW_DEBUG_COLOR_SCHEME", "prefer-dark");
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(log).spawn().expect("quantum-assistant");
        let logname = log_name.to_owned();
        let start = Instant::now();
        while !self.has_owner("org.quantumos.Assistant1") {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the assistant ended ({status}):\n{}", self.log(&logname));
            }
            assert!(
                start.elapsed() < LONG,
                "no org.quantumos.Assistant1 on the bus after {LONG:?}; assistant log:\n{}\nsway log:\n{}",
                self.log(&logname),
                self.log("sway.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Running(child)
    }

    /// Calls a method of org.quantumos.Assistant1.
    fn call(&self, method: &'static str, arg: Option<&str>) -> Result<String, String> {
        self.runtime.block_on(async {
            let proxy = zbus::Proxy::new(
                self.conn(),
                "org.quantumos.Assistant1",
                "/org/quantumos/Assistant1",
                "org.quantumos.Assistant1",
            )
            .await
            .map_err(|e| e.to_string())?;
            let reply = match (method, arg) {
                ("Widgets", _) => proxy.call::<_, _, String>(method, &()).await,
                (_, Some(a)) => proxy.call::<_, _, ()>(method, &(a,)).await.map(|()| String::new()),
                (_, None) => proxy.call::<_, _, ()>(method, &()).await.map(|()| String::new()),
            };
            reply.map_err(|e| e.to_string())
        })
    }

    /// Esc with nothing shown: the window closes, and the assistant may
    /// end before its reply has left (NoReply), which is as good.
    fn close_window(&self) {
        match self.call("Cancel", None) {
            Ok(_) => {}
            Err(e) if e.contains("NoReply") => {}
            Err(e) => panic!("Esc closes: {e}"),
        }
    }

    fn widgets(&self) -> Value {
        let json = self.call("Widgets", None).expect("Widgets");
        serde_json::from_str(&json).expect("Widgets answers JSON")
    }

    /// Waits until the screen shows what `check` looks for.
    fn wait_screen<T>(&self, what: &str, mut check: impl FnMut(&Screen) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            let last = Screen::of(&self.widgets());
            if let Some(v) = check(&last) {
                return v;
            }
            assert!(
                start.elapsed() < LONG,
                "timed out waiting for {what}; on screen:\n{}\nassistant log:\n{}",
                last.texts.join("\n"),
                self.log("assistant.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Tells sway something, as its IPC client.
    fn swaymsg(&self, args: &[&str]) {
        let run = self.path("run");
        let socket = std::fs::read_dir(&run)
            .expect("the runtime directory")
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("sway-ipc.")))
            .expect("sway's IPC socket");
        let out = self
            .as_user("swaymsg")
            .env("SWAYSOCK", socket)
            .args(args)
            .output()
            .expect("swaymsg");
        assert!(out.status.success(), "swaymsg {args:?}: {}", String::from_utf8_lossy(&out.stdout));
    }

    /// Types with the virtual keyboard, as the person at the desk would.
    fn keys(&self, args: &[&str]) {
        // Each wtype is a new virtual keyboard with a keymap of its own; the
        // first key after the keymap arrives can be lost, so a lone Shift
        // goes first, after a pause.
        let out = self
            .as_user("wtype")
            .args(["-s", "300", "-k", "Shift_L", "-s", "100"])
            .args(args)
            .output()
            .expect("wtype (apt install wtype)");
        assert!(out.status.success(), "wtype {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A PNG of the whole output, kept as `NAME.png`; checked to be more
    /// than an empty output (a blank 1280x800 PNG is about 5 kB).
    fn screenshot(&self, name: &str) -> PathBuf {
        // Let sway show the frame the last change drew.
        std::thread::sleep(Duration::from_millis(700));
        let tmp = self.path(&format!("home/{name}.png"));
        let out = self.as_user("grim").arg(&tmp).output().expect("grim (apt install grim)");
        assert!(out.status.success(), "grim: {}", String::from_utf8_lossy(&out.stderr));
        let dest = screenshots().join(format!("{name}.png"));
        std::fs::copy(&tmp, &dest).expect("copy the screenshot");
        let size = std::fs::metadata(&dest).expect("screenshot").len();
        assert!(size > 20_000, "{} is {size} bytes: an empty screen?", dest.display());
        dest
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// The desktop user's own session bus, which starts the assistant by
    /// D-Bus activation from the service file quantumos-desktop installs
    /// (`desktop/data/`, its Exec pointed at this test's copy). What the
    /// activated assistant inherits from it: this bus as its session bus,
    /// the private bus for quantumd and org.quantumos.Assistant1, and the
    /// rendering the other runs have. Returns it with its address.
    fn activating_session_bus(&self) -> (Running, String) {
        let services = self.path("services");
        std::fs::create_dir_all(&services).expect("mkdir");
        let packaged = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/org.quantumos.Assistant.service"))
            .expect("the D-Bus service file");
        assert!(
            packaged
                .lines()
                .any(|l| l == "Exec=/usr/bin/quantum-assistant --gapplication-service"),
            "{packaged}"
        );
        let exec = self.path("bin/quantum-assistant").display().to_string();
        std::fs::write(
            services.join("org.quantumos.Assistant.service"),
            packaged.replace("/usr/bin/quantum-assistant", &exec),
        )
        .expect("service file");
        let sock = self.path("run/session-bus");
        let config = self.path("session-bus.conf");
        std::fs::write(
            &config,
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"
 \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <servicedir>{}</servicedir>
  <policy context=\"default\">
    <allow user=\"*\"/>
    <allow own=\"*\"/>
    <allow send_destination=\"*\" eavesdrop=\"true\"/>
    <allow eavesdrop=\"true\"/>
  </policy>
</busconfig>
",
                sock.display(),
                services.display()
            ),
        )
        .expect("bus config");
        let address = format!("unix:path={}", sock.display());
        let log = std::fs::File::create(self.path("assistant-activated.log")).expect("log");
        let child = self
            .as_user("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .env("QUANTUM_BUS_ADDRESS", &self.bus)
            .env("QUANTUM_ASSISTANT_CONTROL_BUS", &self.bus)
            .env("QUANTUM_CATALOG", self.path("cells"))
            .env("GDK_BACKEND", "wayland")
            .env("GSK_RENDERER", "cairo")
            .env("GTK_A11Y", "none")
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dbus-daemon");
        wait_for("the session bus socket", Duration::from_secs(10), || sock.exists().then_some(()));
        (Running(child), address)
    }

    /// What a launcher does for a DBusActivatable entry: Activate on the
    /// application's name, which the session bus starts when nobody owns it.
    fn launch(&self, address: &str) {
        self.runtime.block_on(async {
            let conn = zbus::connection::Builder::address(address)
                .expect("the session bus address")
                .build()
                .await
                .expect("the session bus");
            let proxy = zbus::Proxy::new(
                &conn,
                "org.quantumos.Assistant",
                "/org/quantumos/Assistant",
                "org.freedesktop.Application",
            )
            .await
            .expect("proxy");
            let platform_data = std::collections::HashMap::<&str, zbus::zvariant::Value>::new();
            proxy
                .call::<_, _, ()>("Activate", &(platform_data,))
                .await
                .unwrap_or_else(|e| panic!("Activate: {e}\n{}", self.log("assistant-activated.log")));
        });
    }
}

impl Drop for Desktop {
    fn drop(&mut self) {
        if let Some(c) = self.sway.as_mut() {
            kill(c);
        }
        if let Some(c) = self.quantumd.as_mut() {
            kill(c);
        }
        // Every cell of this test, then its cgroups.
        let mut dirs = vec![self.cgroup_root.clone()];
        let mut all = Vec::new();
        while let Some(d) = dirs.pop() {
            all.push(d.clone());
            if let Ok(rd) = std::fs::read_dir(&d) {
                dirs.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
            }
        }
        for d in &all {
            let _ = std::fs::write(d.join("cgroup.kill"), "1");
        }
        std::thread::sleep(Duration::from_millis(100));
        for d in all.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        kill(&mut self.dbus);
    }
}

/// The visible widgets, flattened: every text in order, and every name.
#[derive(Default)]
struct Screen {
    texts: Vec<String>,
    names: Vec<String>,
    insensitive: Vec<String>,
}

impl Screen {
    fn of(tree: &Value) -> Screen {
        let mut s = Screen::default();
        fn walk(v: &Value, s: &mut Screen) {
            match v {
                Value::Array(a) => a.iter().for_each(|c| walk(c, s)),
                Value::Object(o) => {
                    if let Some(t) = o.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                        s.texts.push(t.to_owned());
                    }
                    if let Some(n) = o.get("name").and_then(Value::as_str) {
                        s.names.push(n.to_owned());
                        if o.get("insensitive") == Some(&Value::Bool(true)) {
                            s.insensitive.push(n.to_owned());
                        }
                    }
                    if let Some(c) = o.get("children") {
                        walk(c, s);
                    }
                }
                _ => {}
            }
        }
        walk(tree, &mut s);
        s
    }

    fn has_text(&self, needle: &str) -> bool {
        self.texts.iter().any(|t| t.contains(needle))
    }

    fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

/// GET `path` on 127.0.0.1:`port`; the body, or None when nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

#[test]
fn a_person_asks_confirms_watches_and_stops_a_cell() {
    let mut desktop = Desktop::start();
    let www = desktop.path("www");
    std::fs::create_dir_all(&www).expect("mkdir");
    std::fs::write(www.join("hello.txt"), "hello from the desktop\n").expect("write");
    let port = 18000 + (std::process::id() % 1000) as u16;
    let request = format!("serve {} on port {port}", www.display());

    // The empty state: the request box has the focus, quantumd is reached.
    let mut assistant = desktop.assistant(false, "assistant.log");
    desktop.wait_screen("the empty state, connected", |s| {
        (s.has("empty") && s.texts.iter().any(|t| t.starts_with("quantumd ") && t.ends_with("backend"))).then_some(())
    });
    let screen = Screen::of(&desktop.widgets());
    assert!(screen.has_text("What do you need?"), "{:?}", screen.texts);
    assert!(screen.has("request") && screen.has("ask"), "{:?}", screen.names);
    assert!(!screen.has("plan") && !screen.has("cells"), "{:?}", screen.names);
    desktop.screenshot("1-empty");

    // Typed and asked with Enter, as a person would.
    desktop.keys(&[&request, "-k", "Return"]);
    desktop.wait_screen("the plan preview", |s| s.has("confirm").then_some(()));
    let screen = Screen::of(&desktop.widgets());
    assert!(screen.has_text(&format!("Plan for “{request}”")), "{:?}", screen.texts);
    assert!(screen.has_text("1. web-server — Serve a directory over HTTP"), "{:?}", screen.texts);
    assert!(
        screen.texts.iter().any(|t| t == &port.to_string()),
        "the port is shown: {:?}",
        screen.texts
    );
    assert!(screen.texts.iter().any(|t| t == "may touch"), "{:?}", screen.texts);
    assert!(screen.has_text("Nothing runs until you press Run plan"), "{:?}", screen.texts);
    assert!(
        screen.has_text(&www.display().to_string()),
        "the folder it may read: {:?}",
        screen.texts
    );
    assert!(
        http_get(port, "/hello.txt").is_none(),
        "nothing may run before the plan is confirmed"
    );
    desktop.screenshot("2-plan");

    // Ctrl+Enter runs it; the cell appears, live, and really serves.
    desktop.keys(&["-M", "ctrl", "-k", "Return", "-m", "ctrl"]);
    let instance = desktop.wait_screen("the running cell with its figures", |s| {
        let name = s.names.iter().find(|n| n.starts_with("cell:web-server."))?;
        let running = s.texts.iter().any(|t| t.starts_with("running · pid ") && t.contains("\nCPU "));
        running.then(|| name.trim_start_matches("cell:").to_owned())
    });
    let body = wait_for("the web server to answer", LONG, || http_get(port, "/hello.txt"));
    assert_eq!(body, "hello from the desktop\n");
    desktop.wait_screen("the trail", |s| s.has_text("execute").then_some(()));
    // The service says where it answers, with a button that opens it.
    let reach = format!("reach it at http://127.0.0.1:{port}/");
    desktop.wait_screen("how to reach the web server", |s| {
        (s.has_text(&reach) && s.has(&format!("open:{instance}"))).then_some(())
    });
    let screen = Screen::of(&desktop.widgets());
    assert!(!screen.has("plan"), "the plan is gone once it ran: {:?}", screen.names);
    assert!(screen.has(&format!("stop:{instance}")), "{:?}", screen.names);
    assert!(
        screen.has_text("recent: "),
        "the state change is among the recent events: {:?}",
        screen.texts
    );
    desktop.screenshot("3-cells");

    // Inspect shows what quantumd applied.
    desktop.call("Inspect", Some(&instance)).expect("Inspect");
    let command = format!("--directory {} {port}", www.display());
    desktop.wait_screen("the detail dialog", |s| {
        (s.has("detail") && s.has_text("limits and sandbox") && s.has_text(&command)).then_some(())
    });
    desktop.screenshot("4-inspect");
    desktop.keys(&["-k", "Escape"]);
    desktop.wait_screen("the dialog to close", |s| (!s.has("detail")).then_some(()));

    // Something nothing fits: no plan, and Confirm refuses.
    desktop.call("Ask", Some("order a pizza with extra cheese")).expect("Ask");
    desktop.wait_screen("the refusal", |s| s.has_text("No plan for “order a pizza").then_some(()));
    let refused = desktop.call("Confirm", None);
    assert!(refused.is_err(), "a refusal cannot be confirmed: {refused:?}");
    desktop.keys(&["-k", "Escape"]);
    desktop.wait_screen("the refusal to go", |s| (!s.has_text("No plan for")).then_some(()));
    // Esc with nothing shown closes the window, and the assistant ends.
    desktop.keys(&["-k", "Escape"]);
    let status = wait_for("the assistant to end", LONG, || assistant.0.try_wait().ok().flatten());
    assert!(status.success(), "{status}\n{}", desktop.log("assistant.log"));

    // Opened again, in the dark style and at twice the scale (a HiDPI
    // screen): it finds the running cell and stops it.
    desktop.swaymsg(&["output", "HEADLESS-1", "resolution", "2560x1600", "scale", "2"]);
    let mut dark = desktop.assistant(true, "assistant-dark.log");
    desktop.wait_screen("the running cell, again", |s| s.has(&format!("stop:{instance}")).then_some(()));
    desktop.screenshot("5-cells-dark-2x");

    // quantumd crashes: the window says so, and finds it again when it is
    // back (it re-adopts the running cell).
    desktop.kill_quantumd();
    desktop.wait_screen("quantumd's absence", |s| s.has_text("quantumd is not reachable").then_some(()));
    desktop.start_quantumd();
    desktop.wait_screen("quantumd again, with the cell", |s| {
        (s.texts.iter().any(|t| t.starts_with("quantumd ") && t.ends_with("backend")) && s.has(&format!("stop:{instance}"))).then_some(())
    });
    desktop.call("Stop", Some(&instance)).expect("Stop");
    desktop.wait_screen("the cell to stop", |s| {
        (!s.has(&format!("stop:{instance}")) && s.texts.iter().any(|t| t.starts_with("stopped") || t.starts_with("exited"))).then_some(())
    });
    wait_for("the web server to be gone", LONG, || {
        http_get(port, "/hello.txt").is_none().then_some(())
    });
    desktop.close_window();
    let status = wait_for("the dark assistant to end", LONG, || dark.0.try_wait().ok().flatten());
    assert!(status.success(), "{status}");

    // Started as the desktop's launcher starts it (the .desktop entry is
    // DBusActivatable): the session bus runs the service file's command,
    // which opens no window until Activate; then one window, which a second
    // Activate raises rather than doubles. Closed, the service leaves the bus.
    let (_session, address) = desktop.activating_session_bus();
    desktop.launch(&address);
    wait_for("org.quantumos.Assistant1 of the activated assistant", LONG, || {
        desktop.has_owner("org.quantumos.Assistant1").then_some(())
    });
    desktop.wait_screen("the activated window, connected", |s| {
        (s.has("request") && s.texts.iter().any(|t| t.starts_with("quantumd ") && t.ends_with("backend"))).then_some(())
    });
    desktop.launch(&address);
    let windows = desktop.widgets();
    assert_eq!(
        windows.as_array().map(Vec::len),
        Some(1),
        "one window after two launches: {windows}"
    );
    desktop.close_window();
    wait_for("the activated assistant to leave the bus", LONG, || {
        (!desktop.has_owner("org.quantumos.Assistant1")).then_some(())
    });

    for log in ["assistant.log", "assistant-dark.log", "assistant-activated.log"] {
        let text = desktop.log(log);
        assert!(!text.contains("CRITICAL"), "GTK criticals in {log}:\n{text}");
        assert!(!text.contains(" ERROR "), "errors in {log}:\n{text}");
    }
    eprintln!("screenshots in {}", screenshots().display());
}

#[test]
fn the_desktop_entry_is_valid_and_starts_the_assistant() {
    let entry = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/org.quantumos.Assistant.desktop");
    let out = Command::new("desktop-file-validate")
        .arg(&entry)
        .output()
        .expect("desktop-file-validate (apt install desktop-file-utils)");
    // It prints problems and hints alike, and exits 0 even for hints.
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&entry).expect("the desktop entry");
    assert!(text.lines().any(|l| l == "Exec=quantum-assistant"), "{text}");
}
