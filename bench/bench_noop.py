"""A no-op `orchestrator apply` at 500 agents against `supervisorctl update` on the same config.

500 agents, each `sleep 3600` with no readiness probe (ready once RUNNING,
`min_uptime: 0s`), in a 10-level DAG where each depends on 1 to 3 agents of
the level before. `orchestrator up` brings them up once (its time is
printed for scale); then, against that same running supervisord:

  - orchestrator: `orchestrator -m DIR apply`, which must print "Nothing to
    do" and exit 0 (load and validate the manifests, render, compare with
    the live version and with supervisord's process states);
  - baseline: `supervisorctl -c STATE/supervisord.conf update`, supervisord's
    own no-op: it rereads the same configuration and finds nothing changed.

Both measured as users run them: the whole command, Python start-up
included, median of several runs. Also checked and printed: no agent's PID
changed across all the runs (`orchestrator status --output json` before and
after).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import check, median_seconds, sleeping_dag_set, stop_everything, terminate_as_interrupt  # noqa: E402
from orchestrator.config.manifest import LoadOptions, load  # noqa: E402

AGENTS, LEVELS, RUNS = 500, 10, 7
BIN = Path(sys.executable).parent
ORCHESTRATOR, SUPERVISORCTL = str(BIN / "orchestrator"), str(BIN / "supervisorctl")


def pids(manifests: Path) -> dict[str, int]:
    rows = json.loads(check([ORCHESTRATOR, "-m", str(manifests), "status", "--output", "json"], ok=(0, 3)))
    found = {row["agent"]: row["pid"] for row in rows}
    if len(found) != AGENTS or not all(found.values()):
        down = sorted(name for name, pid in found.items() if not pid)
        raise SystemExit(f"expected {AGENTS} running agents, status shows {len(found)}; without a PID: {down[:10]}")
    return found


def noop_apply(manifests: Path) -> None:
    out = check([ORCHESTRATOR, "-m", str(manifests), "apply"])
    if "Nothing to do" not in out:
        raise SystemExit(f"apply was not a no-op:\n{out}")


def noop_update(config: str) -> None:
    out = check([SUPERVISORCTL, "-c", config, "update"])
    if out.strip():
        raise SystemExit(f"supervisorctl update was not a no-op:\n{out}")


def main() -> None:
    terminate_as_interrupt()
    sleep = shutil.which("sleep")
    if sleep is None:
        raise SystemExit("no `sleep` on PATH")
    tmp = Path(tempfile.mkdtemp(prefix="ob-", dir="/tmp"))  # short: the supervisord socket path must fit
    manifests = sleeping_dag_set(tmp, agents=AGENTS, levels=LEVELS, sleep=sleep)
    state_dir = load(LoadOptions(str(manifests))).state_dir
    config = str(Path(state_dir, "supervisord.conf"))
    try:
        started = time.perf_counter()
        check([ORCHESTRATOR, "-m", str(manifests), "up"])
        up = time.perf_counter() - started
        before = pids(manifests)
        apply, apply_samples = median_seconds(lambda: noop_apply(manifests), RUNS)
        update, update_samples = median_seconds(lambda: noop_update(config), RUNS)
        after = pids(manifests)
        started = time.perf_counter()
        check([ORCHESTRATOR, "-m", str(manifests), "down", "--yes"])
        down = time.perf_counter() - started
    finally:
        stop_everything(ORCHESTRATOR, manifests, state_dir)
        shutil.rmtree(tmp, ignore_errors=True)

    changed = sorted(name for name in before if after.get(name) != before[name])
    print(f"no-op apply, {AGENTS} agents in a {LEVELS}-level DAG, all running (median of {RUNS} runs, whole command)")
    print(f"  orchestrator apply (Nothing to do)   {apply * 1000:8.0f} ms   "
          f"runs: {', '.join(f'{s * 1000:.0f}' for s in apply_samples)}")
    print(f"  baseline: supervisorctl update       {update * 1000:8.0f} ms   "
          f"runs: {', '.join(f'{s * 1000:.0f}' for s in update_samples)}")
    print(f"  ratio apply / supervisorctl update   {apply / update:8.2f}x")
    print(f"  PIDs unchanged across all {2 * RUNS} runs: "
          + ("yes, all " + str(len(before)) if not changed else f"NO, {len(changed)} changed: {changed[:10]}"))
    print(f"  for scale: up {up:.2f} s (fresh supervisord, {AGENTS} starts), down {down:.2f} s; "
          f"no-op apply {apply / AGENTS * 1e6:.0f} us per agent")
    if changed:
        sys.exit(1)


if __name__ == "__main__":
    main()
