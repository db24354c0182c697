#!/usr/bin/python3
"""Cell start latency inside a QuantumOS guest: `quantumctl run` vs
`systemd-run` of the same command, from the client's invocation to the unit's
main process running (systemd's ExecMainStartTimestampMonotonic), p50/p95,
and the rate of N concurrent starts; and a foreground task (`quantumctl run`
of a `kind = "task"` cell, its output on the caller's stdout) vs
`systemd-run --pipe --wait` of the same command, from invocation to the
client's exit with the output read; and the same task pre-warmed (a catalog
cell pinned in [prewarm], its unit waiting) against both, with the warm
unit's memory. Runs as root; prints one JSON object.

Both sides are measured the same way: a client process is started at t0 and
systemd records when the main process was exec'd. Runs are interleaved so
that drift (other load, caches) hits both alike.
"""
import concurrent.futures
import json
import os
import subprocess
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100
CONCURRENT = int(sys.argv[2]) if len(sys.argv) > 2 else 256
COMMAND = ["/bin/sleep", "600"]

CELL_DIR = "/run/quantum-bench/sleeper"
os.makedirs(CELL_DIR, exist_ok=True)
with open(os.path.join(CELL_DIR, "cell.toml"), "w") as f:
    f.write(
        '[cell]\nname = "bench-sleeper"\nversion = "1.0.0"\n'
        'description = "sleeps, for benchmarks"\n'
        'exec = ["/bin/sleep", "600"]\n'
        '[resources]\nmemory-min = "0"\nmemory-max = "16M"\ntasks-max = 4\n'
        '[lifecycle]\nidle-timeout = "0"\nrestart = "no"\n'
    )
MANIFEST = os.path.join(CELL_DIR, "cell.toml")

TASK_DIR = "/run/quantum-bench/echo"
os.makedirs(TASK_DIR, exist_ok=True)
with open(os.path.join(TASK_DIR, "cell.toml"), "w") as f:
    f.write(
        '[cell]\nname = "bench-echo"\nversion = "1.0.0"\n'
        'description = "prints a line, for benchmarks"\n'
        'exec = ["/bin/echo", "hello from a cell"]\n'
        '[resources]\nmemory-min = "0"\nmemory-max = "16M"\ntasks-max = 4\n'
        '[lifecycle]\nkind = "task"\nrestart = "no"\n'
    )
TASK = os.path.join(TASK_DIR, "cell.toml")


def now_usec():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def main_start_usec(unit):
    out = subprocess.run(
        ["systemctl", "show", "-P", "ExecMainStartTimestampMonotonic", unit],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    return int(out or 0)


def start_quantum(env=None):
    t0 = now_usec()
    out = subprocess.run(["quantumctl", "run", MANIFEST, "--json"], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"quantumctl run failed: {out.stderr}")
    return t0, json.loads(out.stdout)["unit"]


# quantumctl over the system bus, as before the direct socket (and as users
# outside group quantum still go): an empty QUANTUM_SOCKET turns it off.
BUS_ONLY = dict(os.environ, QUANTUM_SOCKET="")


def start_quantum_bus():
    return start_quantum(BUS_ONLY)


counter = [0]


def start_systemd_run():
    counter[0] += 1
    unit = f"bench-plain-{os.getpid()}-{counter[0]}.service"
    t0 = now_usec()
    # The same limits quantumd sets, so both do the same work in systemd.
    subprocess.run(
        ["systemd-run", "--quiet", "--unit", unit, "--slice", "quantum.slice",
         "-p", "MemoryMax=16M", "-p", "TasksMax=4", "-p", "DynamicUser=yes",
         "-p", "PrivateNetwork=yes", "-p", "ProtectSystem=strict", "--", *COMMAND],
        check=True,
    )
    return t0, unit


# Every sandbox setting quantumd gives a cell (runtime/systemd.rs
# unit_properties) and its Type=exec: the same work for systemd, so a ratio
# against it is quantumd's own cost. Each namespace systemd sets up costs
# milliseconds, and PrivateDevices= a BPF device program per unit.
FULL_SANDBOX = [
    "-p", "Type=exec", "-p", "CPUQuota=100%", "-p", "ProtectHome=yes", "-p", "PrivateTmp=yes",
    "-p", "PrivateDevices=yes", "-p", "ProtectKernelTunables=yes",
    "-p", "ProtectKernelModules=yes", "-p", "ProtectKernelLogs=yes",
    "-p", "ProtectControlGroups=yes", "-p", "ProtectClock=yes",
    "-p", "RestrictSUIDSGID=yes", "-p", "RestrictRealtime=yes",
    "-p", "LockPersonality=yes", "-p", "NoNewPrivileges=yes",
    "-p", "InaccessiblePaths=-/var/lib/quantumd",
]


def start_systemd_run_full():
    counter[0] += 1
    unit = f"bench-plain-{os.getpid()}-{counter[0]}.service"
    t0 = now_usec()
    subprocess.run(
        ["systemd-run", "--quiet", "--unit", unit, "--slice", "quantum.slice",
         "-p", "MemoryMax=16M", "-p", "TasksMax=4", "-p", "DynamicUser=yes",
         "-p", "PrivateNetwork=yes", "-p", "ProtectSystem=strict", *FULL_SANDBOX, "--", *COMMAND],
        check=True,
    )
    return t0, unit


def latency(start):
    t0, unit = start()
    started = 0
    for _ in range(200):
        started = main_start_usec(unit)
        if started:
            break
        time.sleep(0.01)
    return unit, started - t0


def stop_all():
    subprocess.run(["quantumctl", "stop", "bench-sleeper"], capture_output=True)
    units = subprocess.run(
        ["systemctl", "list-units", "--plain", "--no-legend", "bench-plain-*"],
        capture_output=True, text=True,
    ).stdout.split()
    plain = [u for u in units if u.startswith("bench-plain-")]
    if plain:
        subprocess.run(["systemctl", "stop", *plain], capture_output=True)


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


quantum, quantum_bus, plain, full = [], [], [], []
others = {
    "p": (start_systemd_run, plain),
    "f": (start_systemd_run_full, full),
}
for i in range(N):
    for kind in (("q", "b", "p", "f") if i % 2 == 0 else ("f", "p", "b", "q")):
        if kind in ("q", "b"):
            unit, us = latency(start_quantum if kind == "q" else start_quantum_bus)
            (quantum if kind == "q" else quantum_bus).append(us)
            subprocess.run(["quantumctl", "stop", unit.removeprefix("quantum-").removesuffix(".service")], capture_output=True)
        else:
            start, samples = others[kind]
            unit, us = latency(start)
            samples.append(us)
            subprocess.run(["systemctl", "stop", unit], capture_output=True)


def foreground(argv):
    """Invocation to exit, output read: what a person waits for."""
    t0 = time.monotonic_ns()
    out = subprocess.run(argv, capture_output=True, text=True)
    took = (time.monotonic_ns() - t0) // 1000
    if out.returncode != 0 or out.stdout != "hello from a cell\n":
        raise SystemExit(f"{argv[0]} failed ({out.returncode}): {out.stdout!r} {out.stderr!r}")
    return took


FOREGROUND_Q = ["quantumctl", "run", TASK]
# systemd-run with the limits and the few sandbox settings the start
# benchmark uses, as a person would type it ...
FOREGROUND_P = ["systemd-run", "--quiet", "--pipe", "--wait", "--slice", "quantum.slice",
                "-p", "MemoryMax=16M", "-p", "TasksMax=4", "-p", "DynamicUser=yes",
                "-p", "PrivateNetwork=yes", "-p", "ProtectSystem=strict",
                "--", "/bin/echo", "hello from a cell"]
# ... and with every sandbox setting quantumd gives a cell.
FOREGROUND_P_FULL = FOREGROUND_P[:-3] + FULL_SANDBOX + ["--", "/bin/echo", "hello from a cell"]
fg_quantum, fg_plain, fg_full = [], [], []
for i in range(N):
    order = ("q", "p", "f") if i % 2 == 0 else ("f", "p", "q")
    for kind in order:
        if kind == "q":
            fg_quantum.append(foreground(FOREGROUND_Q))
        elif kind == "p":
            fg_plain.append(foreground(FOREGROUND_P))
        else:
            fg_full.append(foreground(FOREGROUND_P_FULL))


# A pre-warmed task (issue 19 part 2): the same echo as a catalog cell
# pinned in [prewarm] cells, so that quantumd keeps a unit of it waiting;
# `quantumctl run` hands the run to that unit (an exec in place, no new
# unit). Measured as the foreground runs above, invocation to exit with the
# output read, interleaved with a cold `quantumctl run` of the same cell
# and `systemd-run --pipe --wait`; between runs the pool is refilled (a
# predicted cell's unit is ready before it is asked for), which is not
# counted. Then the warm unit's memory.
WARM_CELL = "bench-warm-echo"
WARM_DIR = f"/usr/share/quantumos/cells/{WARM_CELL}"
CONFIG = "/etc/quantumos/quantumd.toml"


def trail_warm_entries():
    out = subprocess.run(["quantumctl", "trail", "show", "-n", "0", "--cell", WARM_CELL, "--json"],
                         capture_output=True, text=True).stdout
    return [e["detail"] for e in json.loads(out or "[]") if e["action"] == "prewarm"]


def wait_warm(seen):
    for _ in range(600):
        warm = [d for d in trail_warm_entries() if d.startswith("warm ")]
        if len(warm) > seen:
            return len(warm)
        time.sleep(0.05)
    raise SystemExit("quantumd kept no warm unit of the bench cell")


def set_prewarm(on):
    try:
        with open(CONFIG) as f:
            text = f.read().split("\n# bench-prewarm\n")[0]
    except FileNotFoundError:
        text = ""
    os.makedirs(os.path.dirname(CONFIG), exist_ok=True)
    if on:
        text += f'\n# bench-prewarm\n[prewarm]\ncells = ["{WARM_CELL}"]\npredict = false\n'
    with open(CONFIG, "w") as f:
        f.write(text)
    subprocess.run(["systemctl", "restart", "quantumd.service"], check=True)
    for _ in range(300):
        if subprocess.run(["quantumctl", "list"], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise SystemExit("quantumd did not come back after its restart")


os.makedirs(WARM_DIR, exist_ok=True)
with open(os.path.join(WARM_DIR, "cell.toml"), "w") as f:
    f.write(
        f'[cell]\nname = "{WARM_CELL}"\nversion = "1.0.0"\n'
        'description = "prints a line, for benchmarks"\n'
        'exec = ["/bin/echo", "hello from a cell"]\n'
        '[resources]\nmemory-min = "0"\nmemory-max = "16M"\ntasks-max = 4\n'
        '[lifecycle]\nkind = "task"\nrestart = "no"\n'
    )
set_prewarm(True)
warm_seen = wait_warm(0)
warm_memory = []
fg_warm, fg_cold, fg_plain2 = [], [], []
for i in range(N):
    order = ("w", "c", "p") if i % 2 == 0 else ("p", "c", "w")
    for kind in order:
        if kind == "w":
            units = subprocess.run(["systemctl", "list-units", "--plain", "--no-legend", f"quantum-{WARM_CELL}.*"],
                                   capture_output=True, text=True).stdout.split()
            for u in units:
                if u.endswith(".service"):
                    mem = subprocess.run(["systemctl", "show", "-P", "MemoryCurrent", u],
                                         capture_output=True, text=True).stdout.strip()
                    if mem.isdigit():
                        warm_memory.append(int(mem))
            fg_warm.append(foreground(["quantumctl", "run", WARM_CELL]))
            warm_seen = wait_warm(warm_seen)
        elif kind == "c":
            fg_cold.append(foreground(FOREGROUND_Q))
        else:
            fg_plain2.append(foreground(FOREGROUND_P))
claimed = sum(d.startswith("claimed ") for d in trail_warm_entries())
set_prewarm(False)
subprocess.run(["rm", "-rf", WARM_DIR])


def burst(start):
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(lambda _: start(), range(CONCURRENT)))
    return time.monotonic() - t0


burst_q = burst(start_quantum)
running = int(subprocess.run(
    "quantumctl list --json | python3 -c 'import json,sys;print(sum(c[\"state\"]==\"running\" for c in json.load(sys.stdin)))'",
    shell=True, capture_output=True, text=True).stdout.strip() or 0)
stop_all()
burst_p = burst(start_systemd_run)
stop_all()
burst_f = burst(start_systemd_run_full)
stop_all()

def times(name, samples):
    """NAME_p50_ms and NAME_p95_ms of a list of microsecond samples."""
    return {f"{name}_p{p}_ms": pct(samples, p) / 1000 for p in (50, 95)}


def ratios(name, samples, base, ps=(50, 95)):
    """ratio[_NAME]_pP: samples against base, percentile by percentile."""
    prefix = f"ratio_{name}_" if name else "ratio_"
    return {f"{prefix}p{p}": pct(samples, p) / max(1, pct(base, p)) for p in ps}


result = {
    "starts": N,
    **times("quantumctl", quantum),
    **times("systemd_run", plain),
    **ratios("", quantum, plain),
    **times("systemd_run_full", full),
    **ratios("full", quantum, full),
    **times("quantumctl_bus", quantum_bus),
    **ratios("bus_full", quantum_bus, full, ps=(50,)),
    **times("foreground", fg_quantum),
    **times("pipe_wait", fg_plain),
    **ratios("foreground", fg_quantum, fg_plain),
    **times("pipe_wait_full", fg_full),
    **ratios("foreground_full", fg_quantum, fg_full),
    **times("warm", fg_warm),
    "warm_claimed": claimed,
    **times("cold", fg_cold),
    **times("pipe_wait2", fg_plain2),
    **ratios("warm", fg_warm, fg_plain2),
    **ratios("warm_cold", fg_warm, fg_cold, ps=(50,)),
    "warm_unit_memory_kib": (pct(warm_memory, 50) // 1024) if warm_memory else -1,
    "concurrent": CONCURRENT,
    "concurrent_running": running,
    "quantumctl_burst_s": burst_q,
    "systemd_run_burst_s": burst_p,
    "quantumctl_starts_per_s": CONCURRENT / burst_q,
    "systemd_run_starts_per_s": CONCURRENT / burst_p,
    "ratio_burst_time": burst_q / burst_p,
    "systemd_run_full_burst_s": burst_f,
    "systemd_run_full_starts_per_s": CONCURRENT / burst_f,
    "ratio_burst_full_time": burst_q / burst_f,
}
print(json.dumps(result))
