//! The QuantumOS live ISO with a desktop (variant iso-desktop, built by
//! `ISO_VARIANT=iso-desktop make iso`) boots to what a person sees on it,
//! under QEMU (TCG, BIOS firmware) with a TPM (swtpm) and virtio-gpu as the
//! screen (`-vga virtio`, as the variant's README says: QEMU's default std
//! VGA, bochs-drm, is a display bookworm's sway cannot drive):
//!
//!   1. the live system boots and quantumd reaches READY (Type=notify,
//!      active); the TPM is there
//!   2. user `quantum` is logged in on tty1 and its login shell became
//!      sway (`pgrep -u quantum -x sway`, on tty1); through sway's own IPC
//!      socket (`/run/user/<uid>/sway-ipc.<uid>.<pid>.sock`) the tree shows
//!      the assistant's window (app_id `org.quantumos.Assistant`) mapped and
//!      visible, and the assistant's session-bus interface
//!      (`org.quantumos.Assistant1.Widgets`) shows its request box, its Ask
//!      button and a title saying it is connected to quantumd
//!   3. `grim`, run as `quantum` on the session's Wayland display, takes a
//!      screenshot, which is copied out to
//!      `<target>/desktop-screenshots/iso-desktop.png` and checked: a PNG of
//!      the output's size (`swaymsg -t get_outputs`), not one colour, nor
//!      one colour where the assistant's window is
//!
//! The ISO is `QUANTUM_ISO` if set, else `$QUANTUM_CACHE/iso/current` when
//! that is variant iso-desktop, else the newest iso-desktop ISO in the cache
//! (`make iso` of variant iso moves `current`). None skips the test with a
//! message, unless QUANTUM_VMTEST_REQUIRE_IMAGE=1 (`make test-iso-desktop`
//! sets it, having built the ISO).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use quantum_vmtest::{eventually, identity_sealed_by_tpm, report, BootConfig, Firmware, Guest, Image, IsoImage, Scenarios};
use serde_json::Value;

const VARIANT: &str = "iso-desktop";
/// The live user (image.conf LIVE_USER), logged in on tty1.
const USER: &str = "quantum";
/// The assistant's Wayland app_id (its GtkApplication id).
const APP_ID: &str = "org.quantumos.Assistant";
/// The screenshot's name under `<target>/desktop-screenshots/`.
const SCREENSHOT: &str = "iso-desktop.png";

#[test]
fn iso_desktop_boots_to_sway_with_the_assistant() {
    let test = "iso desktop";
    let Some(iso) = desktop_iso_or_skip(test) else {
        return;
    };
    report(format_args!(
        "[iso-desktop] {} ({}), kernel {}",
        iso.iso.display(),
        iso.short_hash(),
        iso.kernel_version
    ));
    let mut machine = iso.machine(Firmware::Bios);
    // virtio-gpu, as the README's QEMU line has it: bookworm's sway
    // (wlroots 0.15) needs PRIME import, which QEMU's default std VGA
    // (bochs-drm) lacks.
    machine.vga = Some("virtio".to_owned());
    let mut config = BootConfig::for_backend(quantum_vmtest::Backend::Qemu);
    // As for variant iso: firmware, GRUB, the initramfs and the squashfs
    // from an emulated CD-ROM under TCG, and here a desktop on top.
    if std::env::var_os("QUANTUM_VM_READY_TIMEOUT").is_none() {
        config.ready_timeout = Duration::from_secs(600);
    }
    config.command_timeout = Duration::from_secs(300);
    let started = Instant::now();
    let guest = Guest::boot_machine(&machine, config).unwrap_or_else(|e| panic!("{test}: booting the ISO: {e:#}"));
    let ready = guest.wait_ready().unwrap_or_else(|e| panic!("{test}: {e:#}"));
    let mut times = vec![("boot to agent ready (QEMU start to prompt)".to_owned(), ready)];
    if let Ok(out) = guest.run("systemctl show -p ActiveEnterTimestampMonotonic --value quantumd.service") {
        if let Ok(us) = out.stdout.trim().parse::<u64>() {
            if us > 0 {
                times.push(("kernel start to quantumd READY".to_owned(), Duration::from_micros(us)));
            }
        }
    }

    let mut session = None;
    let mut window = None;
    let mut scenarios = Scenarios::new(&guest);
    scenarios.run("desktop-quantumd-ready", quantumd_ready);
    scenarios.run("desktop-tpm", identity_sealed_by_tpm);
    scenarios.run("desktop-sway-on-tty1-as-quantum", |g| {
        session = Some(sway_session(g)?);
        Ok(())
    });
    scenarios.run("desktop-assistant-window-mapped", |g| {
        let s = session.as_ref().context("no sway session (see the scenario before)")?;
        let w = assistant_window(g, s)?;
        times.push(("QEMU start to the assistant's window mapped".to_owned(), started.elapsed()));
        window = Some(w);
        Ok(())
    });
    scenarios.run("desktop-assistant-widgets", |g| {
        let s = session.as_ref().context("no sway session (see the scenarios before)")?;
        assistant_widgets(g, s)
    });
    scenarios.run("desktop-screenshot", |g| {
        let s = session.as_ref().context("no sway session (see the scenarios before)")?;
        let w = window.as_ref().context("no assistant window (see the scenarios before)")?;
        screenshot(g, s, w)
    });
    let result = scenarios.finish();
    report(format_args!("[iso-desktop] figures (TCG):"));
    for (what, took) in &times {
        report(format_args!("[iso-desktop]   {what}: {:.1} s", took.as_secs_f64()));
    }
    if let Err(e) = result {
        panic!("{test}: {e:#}");
    }
}

/// The desktop ISO (see the module's comment for where it is looked for),
/// or `None` (after saying why) when none has been built; with
/// QUANTUM_VMTEST_REQUIRE_IMAGE=1 a missing one fails instead.
fn desktop_iso_or_skip(test: &str) -> Option<IsoImage> {
    let explicit = std::env::var_os("QUANTUM_ISO").is_some_and(|p| !p.is_empty());
    match IsoImage::locate() {
        Ok(Some(iso)) if iso.variant == VARIANT => return Some(iso),
        Ok(Some(iso)) if explicit => panic!("{test}: QUANTUM_ISO is an ISO of variant {}, not {VARIANT}", iso.variant),
        Err(e) if explicit => panic!("{test}: QUANTUM_ISO cannot be used: {e:#}"),
        _ => {}
    }
    let isos = Image::cache_dir().join("iso");
    let mut newest: Option<(std::time::SystemTime, IsoImage)> = None;
    for entry in fs::read_dir(&isos).into_iter().flatten().flatten() {
        let dir = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "current" || name.starts_with('.') || name.ends_with(".tmp") {
            continue;
        }
        let env = dir.join("iso.env");
        let Ok(modified) = fs::metadata(&env).and_then(|m| m.modified()) else {
            continue;
        };
        if let Ok(iso) = IsoImage::load(&env) {
            if iso.variant == VARIANT && newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                newest = Some((modified, iso));
            }
        }
    }
    if let Some((_, iso)) = newest {
        return Some(iso);
    }
    let why = format!("no ISO of variant {VARIANT} under {}", isos.display());
    assert!(
        !std::env::var("QUANTUM_VMTEST_REQUIRE_IMAGE").is_ok_and(|v| v == "1"),
        "{test}: {why} although QUANTUM_VMTEST_REQUIRE_IMAGE=1"
    );
    report(format_args!(
        "SKIPPED {test}: {why}; `make test-iso-desktop` builds it and runs this"
    ));
    None
}

/// quantumd.service is Type=notify: active (running) means it said READY=1.
fn quantumd_ready(g: &Guest) -> Result<()> {
    let show = eventually("quantumd to be active", Duration::from_secs(180), || {
        let show = g.run_ok("systemctl show quantumd.service -p ActiveState,SubState,Type")?;
        if show.contains("ActiveState=activating") {
            return Ok(None);
        }
        Ok(Some(show))
    })?;
    ensure!(
        show.contains("ActiveState=active") && show.contains("SubState=running") && show.contains("Type=notify"),
        "quantumd is not running:\n{show}\n{}",
        g.run("journalctl -b -u quantumd.service --no-pager | tail -n 40")?.stdout
    );
    Ok(())
}

/// The live user's sway: its uid, pid, IPC socket and runtime directory.
struct Session {
    uid: u32,
    pid: u32,
    swaysock: String,
}

impl Session {
    fn runtime_dir(&self) -> String {
        format!("/run/user/{}", self.uid)
    }

    /// A shell command line running `command` as the live user, in its
    /// session's environment (runtime directory, sway's socket, session
    /// bus), plus `env` (`KEY=VALUE ...`).
    fn as_user(&self, env: &str, command: &str) -> String {
        let run = self.runtime_dir();
        format!(
            "runuser -u {USER} -- env XDG_RUNTIME_DIR={run} SWAYSOCK={sock} \
             DBUS_SESSION_BUS_ADDRESS=unix:path={run}/bus {env} {command}",
            sock = self.swaysock
        )
    }

    fn swaymsg(&self, g: &Guest, kind: &str) -> Result<Value> {
        let out = g.run(&self.as_user("", &format!("swaymsg -r -t {kind}")))?;
        ensure!(out.success(), "swaymsg -t {kind}: {out}");
        serde_json::from_str(&out.stdout).with_context(|| format!("swaymsg -t {kind} printed no JSON: {out}"))
    }
}

/// sway runs as the live user on tty1 (the autologin's shell exec'd it) and
/// answers on its IPC socket.
fn sway_session(g: &Guest) -> Result<Session> {
    let uid: u32 = g
        .run_ok(&format!("id -u {USER}"))?
        .trim()
        .parse()
        .context("id -u printed no number")?;
    // A sway that answers: its IPC socket is there (one that cannot start
    // shows in pgrep for a second and never makes one).
    let found = eventually(
        "sway to run as the live user, with its IPC socket",
        Duration::from_secs(300),
        || {
            let out = g.run(&format!(
                "for p in $(pgrep -u {USER} -x sway); do \
             [ -S /run/user/{uid}/sway-ipc.{uid}.$p.sock ] && echo $p; done; true"
            ))?;
            Ok(out.stdout.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        },
    );
    let pid = match found {
        Ok(pid) => pid,
        Err(e) => bail!(
            "{e:#}\n--- sway's log\n{}\n--- logins on tty1\n{}",
            g.run(&format!("tail -n 30 /run/user/{uid}/sway.log"))?,
            g.run(&format!(
                "systemctl show getty@tty1.service -p NRestarts -p ActiveState; loginctl list-sessions --no-pager; \
                 journalctl -b --no-pager -o short-monotonic _UID={uid} | tail -n 40"
            ))?
            .stdout
        ),
    };
    let ps = g.run_ok(&format!("ps -o user=,tty=,args= -p {pid}"))?;
    let fields: Vec<&str> = ps.split_whitespace().collect();
    ensure!(
        fields.first() == Some(&USER) && fields.get(1) == Some(&"tty1"),
        "sway is not the live user's on tty1: {ps}"
    );
    // logind put the login on seat0, active: sway got the display from it.
    let sessions = g.run_ok(&format!(
        "for s in $(loginctl list-sessions --no-legend | awk '$3 == \"{USER}\" {{ print $1 }}'); do \
         loginctl show-session \"$s\" -p TTY -p Seat -p Active -p State; echo; done"
    ))?;
    ensure!(
        sessions
            .split("\n\n")
            .any(|s| s.contains("TTY=tty1") && s.contains("Seat=seat0") && s.contains("Active=yes")),
        "no active logind session of {USER} on tty1, seat0:\n{sessions}"
    );
    // One login: getty has not logged in again after a session ended.
    let restarts = g.run_ok("systemctl show getty@tty1.service -p NRestarts --value")?;
    ensure!(restarts.trim() == "0", "getty@tty1 has restarted {} times", restarts.trim());
    let swaysock = format!("/run/user/{uid}/sway-ipc.{uid}.{pid}.sock");
    let session = Session { uid, pid, swaysock };
    let version = session.swaymsg(g, "get_version")?;
    report(format_args!(
        "[iso-desktop] sway {} as {USER} (uid {uid}, pid {}) on tty1",
        version["human_readable"].as_str().unwrap_or("?"),
        session.pid
    ));
    Ok(session)
}

/// The assistant's window as sway has it.
struct Window {
    pid: u32,
    /// x, y, width, height in the output's pixels (scale 1).
    rect: [i64; 4],
    output: (u32, u32),
}

/// Every node of sway's tree (containers and floating ones).
fn nodes(tree: &Value, out: &mut Vec<Value>) {
    out.push(tree.clone());
    for key in ["nodes", "floating_nodes"] {
        if let Some(children) = tree[key].as_array() {
            for child in children {
                nodes(child, out);
            }
        }
    }
}

/// sway's tree shows the assistant's window, mapped and visible on the one
/// active output; returns it with the output's size.
fn assistant_window(g: &Guest, s: &Session) -> Result<Window> {
    let waited = eventually("the assistant's window in sway's tree", Duration::from_secs(300), || {
        let tree = s.swaymsg(g, "get_tree")?;
        let mut all = Vec::new();
        nodes(&tree, &mut all);
        Ok(all
            .into_iter()
            .find(|n| n["app_id"].as_str() == Some(APP_ID) && n["visible"].as_bool() == Some(true)))
    });
    let node = match waited {
        Ok(node) => node,
        Err(e) => bail!(
            "{e:#}\n--- sway's windows\n{}\n--- the live user's journal\n{}\n--- processes of {USER}\n{}",
            g.run(&s.as_user("", "swaymsg -t get_tree"))?.stdout,
            g.run(&format!("journalctl -b --no-pager -o short-monotonic _UID={} | tail -n 80", s.uid))?
                .stdout,
            g.run(&format!("ps -o pid,args -u {USER}"))?.stdout
        ),
    };
    let pid = node["pid"].as_u64().context("the window has no pid")? as u32;
    let exe = g.run_ok(&format!("readlink /proc/{pid}/exe"))?;
    ensure!(
        exe.trim() == "/usr/bin/quantum-assistant",
        "the window's process is {exe:?}, not /usr/bin/quantum-assistant"
    );
    let owner = g.run_ok(&format!("ps -o user= -p {pid}"))?;
    ensure!(owner.trim() == USER, "the assistant runs as {owner:?}, not {USER}");
    let r = &node["rect"];
    let rect = [&r["x"], &r["y"], &r["width"], &r["height"]].map(|v| v.as_i64().unwrap_or(0));
    ensure!(rect[2] > 100 && rect[3] > 100, "the assistant's window is {rect:?}");

    let outputs = s.swaymsg(g, "get_outputs")?;
    let active: Vec<&Value> = outputs
        .as_array()
        .context("get_outputs is not a list")?
        .iter()
        .filter(|o| o["active"].as_bool() == Some(true))
        .collect();
    ensure!(active.len() == 1, "not one active output: {outputs}");
    let mode = &active[0]["current_mode"];
    let output = (
        mode["width"].as_u64().context("no output width")? as u32,
        mode["height"].as_u64().context("no output height")? as u32,
    );
    let scale = active[0]["scale"].as_f64().unwrap_or(1.0);
    ensure!((scale - 1.0).abs() < f64::EPSILON, "output scale {scale}: the checks assume 1");
    report(format_args!(
        "[iso-desktop] the assistant (pid {pid}) is mapped at {rect:?} on {} {}x{}",
        active[0]["name"].as_str().unwrap_or("?"),
        output.0,
        output.1
    ));
    Ok(Window { pid, rect, output })
}

/// The assistant's own view of its window (`org.quantumos.Assistant1.Widgets`
/// on the live user's session bus): the request box, the Ask button, and a
/// title saying which quantumd it is connected to.
fn assistant_widgets(g: &Guest, s: &Session) -> Result<()> {
    let call = s.as_user(
        "",
        "busctl --user --json=short call org.quantumos.Assistant1 /org/quantumos/Assistant1 \
         org.quantumos.Assistant1 Widgets",
    );
    let mut last = String::new();
    let found = eventually(
        "the assistant to show its request box, connected to quantumd",
        Duration::from_secs(180),
        || {
            let out = g.run(&call)?;
            if !out.success() {
                last = out.to_string();
                return Ok(None);
            }
            let reply: Value = serde_json::from_str(&out.stdout).with_context(|| format!("busctl printed no JSON: {out}"))?;
            let json = reply["data"][0].as_str().context("Widgets answered no string")?;
            let tree: Value = serde_json::from_str(json).context("Widgets answered no JSON")?;
            let mut names = HashSet::new();
            let mut texts = Vec::new();
            walk_widgets(&tree, &mut names, &mut texts);
            last = format!("names {names:?}\ntexts {texts:?}");
            let connected = texts.iter().any(|t| t.starts_with("quantumd ") && t.ends_with(" backend"));
            Ok((names.contains("request") && names.contains("ask") && connected).then_some(texts))
        },
    );
    match found {
        Ok(texts) => {
            report(format_args!("[iso-desktop] the assistant shows: {texts:?}"));
            Ok(())
        }
        Err(e) => bail!("{e:#}; last answer:\n{last}"),
    }
}

fn walk_widgets(node: &Value, names: &mut HashSet<String>, texts: &mut Vec<String>) {
    if let Some(list) = node.as_array() {
        for n in list {
            walk_widgets(n, names, texts);
        }
        return;
    }
    if let Some(name) = node["name"].as_str() {
        names.insert(name.to_owned());
    }
    if let Some(text) = node["text"].as_str() {
        if !text.is_empty() {
            texts.push(text.to_owned());
        }
    }
    if let Some(children) = node.get("children") {
        walk_widgets(children, names, texts);
    }
}

/// Where the screenshots go: `<target>/desktop-screenshots/`, as for the
/// desktop crate's own tests.
fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("desktop-screenshots");
    fs::create_dir_all(&dir).expect("the screenshot directory");
    dir
}

/// grim, as the live user on the assistant's Wayland display, photographs
/// the screen; the PNG comes out through the share and is checked.
fn screenshot(g: &Guest, s: &Session, w: &Window) -> Result<()> {
    // The display the assistant was started on (sway's WAYLAND_DISPLAY).
    let display = g.run_ok(&format!(
        "tr '\\0' '\\n' </proc/{}/environ | sed -n 's/^WAYLAND_DISPLAY=//p'",
        w.pid
    ))?;
    let display = display.trim();
    ensure!(!display.is_empty(), "the assistant has no WAYLAND_DISPLAY");
    // Let the window draw what it has just been told (the connection).
    std::thread::sleep(Duration::from_secs(3));
    let shot = format!("/tmp/{SCREENSHOT}");
    let out = g.run(&format!(
        "rm -f {shot} && {} && install -m 0644 {shot} /mnt/share/{SCREENSHOT}",
        s.as_user(&format!("WAYLAND_DISPLAY={display}"), &format!("grim {shot}"))
    ))?;
    ensure!(out.success(), "grim as {USER} on {display}: {out}");
    let png = fs::read(g.share().join(SCREENSHOT)).context("the screenshot in the share")?;
    let dest = screenshots().join(SCREENSHOT);
    fs::write(&dest, &png).with_context(|| format!("writing {}", dest.display()))?;
    report(format_args!("[iso-desktop] screenshot: {} ({} bytes)", dest.display(), png.len()));

    let image = Png::decode(&png).with_context(|| format!("{} is not a PNG this test reads", dest.display()))?;
    ensure!(
        (image.width, image.height) == w.output,
        "the screenshot is {}x{}, the output {}x{}",
        image.width,
        image.height,
        w.output.0,
        w.output.1
    );
    let all = image.colours(0, 0, image.width, image.height, 10_000);
    ensure!(all > 16, "the screenshot has {all} colours: an empty screen");
    let [x, y, width, height] = w.rect;
    let clip = |v: i64, max: u32| v.clamp(0, i64::from(max)) as u32;
    let (x0, y0) = (clip(x, image.width), clip(y, image.height));
    let (x1, y1) = (clip(x + width, image.width), clip(y + height, image.height));
    let window = image.colours(x0, y0, x1, y1, 10_000);
    ensure!(
        window > 4,
        "the assistant's window ({x0},{y0})-({x1},{y1}) has {window} colours: nothing drawn"
    );
    report(format_args!(
        "[iso-desktop] screenshot {}x{}: {}{all} colours, {}{window} in the assistant's window",
        image.width,
        image.height,
        if all >= 10_000 { ">= " } else { "" },
        if window >= 10_000 { ">= " } else { "" }
    ));
    Ok(())
}

/// A screenshot decoded by the `png` crate into 8-bit RGB or RGBA.
struct Png {
    width: u32,
    height: u32,
    /// Bytes per pixel: 3 (RGB) or 4 (RGBA).
    channels: usize,
    pixels: Vec<u8>,
}

impl Png {
    fn decode(data: &[u8]) -> Result<Png> {
        let mut decoder = png::Decoder::new(std::io::Cursor::new(data));
        // Palettes and 16-bit samples become 8-bit RGB(A), as grim's never are.
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().context("reading the PNG header")?;
        let mut pixels = vec![0; reader.output_buffer_size()];
        let frame = reader.next_frame(&mut pixels).context("decoding the PNG")?;
        let channels = match frame.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            other => bail!("a {other:?} PNG, not RGB or RGBA"),
        };
        pixels.truncate(frame.buffer_size());
        Ok(Png {
            width: frame.width,
            height: frame.height,
            channels,
            pixels,
        })
    }

    /// The distinct colours (RGB) of the pixels in [x0, x1) x [y0, y1),
    /// counted up to `cap`.
    fn colours(&self, x0: u32, y0: u32, x1: u32, y1: u32, cap: usize) -> usize {
        let mut seen = HashSet::new();
        for y in y0..y1 {
            for x in x0..x1 {
                let i = (y as usize * self.width as usize + x as usize) * self.channels;
                seen.insert([self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]);
                if seen.len() >= cap {
                    return cap;
                }
            }
        }
        seen.len()
    }
}
