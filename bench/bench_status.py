"""`orchestrator status` at 500 running agents against `supervisorctl status` on the same supervisord.

500 agents, each `sleep 3600` with no readiness probe, in a 10-level DAG
(the set bench_noop uses), brought up once by `orchestrator up`, with the
exporter running under supervisord as `up` starts it. Then, against that
same supervisord:

  - orchestrator: `orchestrator -m DIR status --output json`, the whole
    command as users run it (Python start-up included): supervisord's process
    list, the live version, the keeper's records, the open alerts, and the
    CPU and memory of every agent's process tree from the exporter's latest
    sample (state.samples), with the health score of each agent;
  - baseline: `supervisorctl -c STATE/supervisord.conf status`, supervisord's
    own listing (states, PIDs, uptimes; no figures).

Median of RUNS runs each, interleaved. Each orchestrator run is checked: 500
rows, every one RUNNING with a PID and its CPU and memory figures (so the
exporter's sample was used, not a sample taken by status itself, which waits
0.25 s for its CPU readings). Also printed for scale: the same command with
the exporter's sample withheld (status samples the 500 trees itself).

Goal: status under 500 ms at 500 agents. Exit 1 when missed.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import check, sleeping_dag_set, stop_everything, terminate_as_interrupt, up_argv  # noqa: E402
from orchestrator.config.manifest import LoadOptions, load  # noqa: E402
from orchestrator.core.names import EXPORTER, RUNTIME_DIR  # noqa: E402
from orchestrator.state import samples  # noqa: E402

AGENTS, LEVELS, RUNS = 500, 10, 9
GOAL = 0.5  # seconds
BIN = Path(sys.executable).parent
ORCHESTRATOR, SUPERVISORCTL = str(BIN / "orchestrator"), str(BIN / "supervisorctl")


def timed(argv: list[str], ok: tuple[int, ...] = (0,)) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    took = time.perf_counter() - started
    if done.returncode not in ok:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return took, done.stdout


def checked_rows(out: str) -> list[dict[str, object]]:
    rows = json.loads(out)
    complete = [r for r in rows if r["state"] == "RUNNING" and r["pid"] and r["cpu_percent"] is not None
                and r["memory_rss_bytes"] is not None]
    if len(rows) != AGENTS or len(complete) != AGENTS:
        raise SystemExit(f"expected {AGENTS} running rows with figures, got {len(rows)} rows, {len(complete)} complete")
    return rows


def wait_for_sample(state_dir: str, pids: set[int], timeout: float = 120) -> None:
    """Until the exporter's latest sample is fresh and has the CPU and memory of every agent's pid (a CPU
    percentage needs two samples of the same pid)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        figures = samples.read(state_dir, time.time())
        if figures is not None and all(None not in figures.get(pid, (None, None)) for pid in pids):
            return
        time.sleep(0.2)
    raise SystemExit("the exporter's sample never covered every agent")


def main() -> None:
    terminate_as_interrupt()
    sleep = shutil.which("sleep")
    if sleep is None:
        raise SystemExit("no `sleep` on PATH")
    tmp = Path(tempfile.mkdtemp(prefix="os-", dir="/tmp"))  # short: the supervisord socket path must fit
    manifests = sleeping_dag_set(tmp, agents=AGENTS, levels=LEVELS, sleep=sleep)
    state_dir = load(LoadOptions(str(manifests))).state_dir
    config = str(Path(state_dir, "supervisord.conf"))
    status = [ORCHESTRATOR, "-m", str(manifests), "status", "--output", "json"]
    ours, baseline, unsampled = [], [], []
    try:
        check(up_argv(ORCHESTRATOR, manifests))
        _, out = timed(status, ok=(0, 3))
        wait_for_sample(state_dir, {int(r["pid"]) for r in json.loads(out) if r["pid"]})
        for _ in range(RUNS):
            took, out = timed(status)
            checked_rows(out)
            ours.append(took)
            baseline.append(timed([SUPERVISORCTL, "-c", config, "status"])[0])
        # for scale: without the exporter's sample, status samples every tree itself
        check([SUPERVISORCTL, "-c", config, "stop", f"{EXPORTER}:*"])
        Path(state_dir, RUNTIME_DIR, samples.FILE).unlink(missing_ok=True)
        for _ in range(3):
            unsampled.append(timed(status)[0])
    finally:
        stop_everything(ORCHESTRATOR, manifests, state_dir)
        shutil.rmtree(tmp, ignore_errors=True)

    mine, theirs = statistics.median(ours), statistics.median(baseline)
    print(f"status, {AGENTS} running agents (median of {RUNS} runs each, interleaved, whole command)")
    print(f"  orchestrator status --output json    {mine * 1000:8.0f} ms   runs: {', '.join(f'{s * 1000:.0f}' for s in ours)}")
    print(f"  baseline: supervisorctl status       {theirs * 1000:8.0f} ms   "
          f"runs: {', '.join(f'{s * 1000:.0f}' for s in baseline)}")
    print(f"  ratio status / supervisorctl status  {mine / theirs:8.2f}x")
    print(f"  for scale: without the exporter's sample (status samples the trees itself): "
          f"{statistics.median(unsampled) * 1000:.0f} ms")
    print(f"  goal: under {GOAL * 1000:.0f} ms: {'met' if mine < GOAL else 'MISSED'}")
    if mine >= GOAL:
        sys.exit(1)


if __name__ == "__main__":
    main()
