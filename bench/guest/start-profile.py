#!/usr/bin/python3
"""Where a cell start's time goes, in a QuantumOS guest: N sequential
`quantumctl run MANIFEST --json`, each split into the client's part (from
its invocation to quantumd receiving the call) and quantumd's stages (the
`start path` debug lines, target quantumd::start_path, see
quantumd/daemon/src/start_profile.rs), with where in them systemd exec'd the
cell (ExecMainStartTimestamp). Prints one JSON object: the median of each
stage in microseconds, as [stage, median] pairs in the order they happen.

Turns the debug target on for quantumd with a runtime drop-in and restarts
it; removes the drop-in and restarts it again at the end.
"""
import json
import os
import statistics
import subprocess
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 50
DROPIN_DIR = "/run/systemd/system/quantumd.service.d"
DROPIN = os.path.join(DROPIN_DIR, "50-start-profile.conf")

CELL_DIR = "/run/quantum-bench/profiled"
os.makedirs(CELL_DIR, exist_ok=True)
MANIFEST = os.path.join(CELL_DIR, "cell.toml")
with open(MANIFEST, "w") as f:
    f.write(
        '[cell]\nname = "bench-profiled"\nversion = "1.0.0"\n'
        'description = "sleeps, for the start profile"\n'
        'exec = ["/bin/sleep", "600"]\n'
        '[resources]\nmemory-min = "0"\nmemory-max = "16M"\ntasks-max = 4\n'
        '[lifecycle]\nidle-timeout = "0"\nrestart = "no"\n'
    )


def sh(*args):
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def restart_quantumd():
    sh("systemctl", "daemon-reload")
    sh("systemctl", "restart", "quantumd.service")
    sh("systemctl", "is-active", "--wait", "quantumd.service")


def now_usec():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def main_start_usec(unit):
    return int(sh("systemctl", "show", "-P", "ExecMainStartTimestampMonotonic", unit).strip() or 0)


def profile_lines(since_usec):
    """quantumd's `start path` entries logged since `since_usec` (monotonic)."""
    out = sh("journalctl", "-u", "quantumd.service", "-o", "json", "--no-pager", "-b")
    lines = {}
    for line in out.splitlines():
        e = json.loads(line)
        if e.get("MESSAGE") != "start path":
            continue
        if int(e.get("__MONOTONIC_TIMESTAMP", 0)) < since_usec:
            continue
        # tracing-journald prefixes the fields with F_.
        lines[e["F_INSTANCE"]] = (int(e["F_ARRIVED_MONOTONIC_US"]), e["F_STAGES"])
    return lines


os.makedirs(DROPIN_DIR, exist_ok=True)
with open(DROPIN, "w") as f:
    f.write("[Service]\nEnvironment=RUST_LOG=info,quantumd::start_path=debug\n")
restart_quantumd()
try:
    begun = now_usec()
    runs = []
    for _ in range(N):
        t0 = now_usec()
        out = subprocess.run(["quantumctl", "run", MANIFEST, "--json"], capture_output=True, text=True)
        t1 = now_usec()
        if out.returncode != 0:
            raise SystemExit(f"quantumctl run failed: {out.stderr}")
        info = json.loads(out.stdout)
        runs.append((info["instance"], info["unit"], t0, t1))
    time.sleep(1)  # let journald take the last lines
    logged = profile_lines(begun)
    per_stage = {}
    order = []
    for instance, unit, t0, t1 in runs:
        if instance not in logged:
            raise SystemExit(f"no start path line for {instance}: is RUST_LOG taken?")
        arrived, stages = logged[instance]
        values = dict(kv.split("=") for kv in stages.split())
        total = int(values["total"])
        logged_at = arrived + total
        row = {"client: invocation -> call reaches quantumd": arrived - t0}
        for kv in stages.split():
            name, v = kv.split("=")
            if name != "total":
                row[f"quantumd: {name}"] = int(v)
        row["quantumd: total"] = total
        row["client: reply -> exit"] = t1 - logged_at
        row["cell exec'd, after the call reached quantumd"] = main_start_usec(unit) - arrived
        row["client: invocation -> exit"] = t1 - t0
        for k, v in row.items():
            if k not in per_stage:
                order.append(k)
            per_stage.setdefault(k, []).append(v)
        sh("systemctl", "stop", unit)
    print(json.dumps({"starts": N, "median_us": [[k, statistics.median(per_stage[k])] for k in order]}))
finally:
    os.remove(DROPIN)
    restart_quantumd()
