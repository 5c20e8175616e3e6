"""Helpers shared by the benchmarks: generated manifest sets and robust timing."""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path
from collections.abc import Callable, Sequence

TEMPLATE = """\
command: ["{{ python }}", "-c", "import time; time.sleep(3600)", "{{ name }}", "--port", "{{ vars.port }}"]
readiness: {tcp: "127.0.0.1:{{ vars.port }}", timeout: 10s}
liveness: {http: "http://127.0.0.1:{{ vars.port }}/health", period: 10s, failures: 3}
restart: {policy: exponential-backoff, delay: 1s, multiplier: 2, max_delay: 60s, max_attempts: 5, window: 10m, reset_after: 5m}
resources:
  cpu_percent: {warning: 70, critical: 90}
  memory_mb: {warning: 300, critical: 400, limit: 512}
  warmup: 30s
env: {PYTHONUNBUFFERED: "1", ROLE: "{{ name }}"}
"""


def dag_set(root: Path, *, agents: int, levels: int, base_port: int = 20000) -> Path:
    """Write a manifest set of `agents` agents in `levels` dependency levels; each depends on up to 3 of the level before."""
    manifests = root / "manifests"
    (manifests / "agents").mkdir(parents=True, exist_ok=True)
    (manifests / "templates").mkdir(exist_ok=True)
    (manifests / "templates" / "worker.yaml").write_text(TEMPLATE)
    (manifests / "orchestrator.yaml").write_text("project: bench\n")
    per_level = agents // levels
    for index in range(agents):
        level = min(index // per_level, levels - 1)
        deps = []
        if level:
            start = (level - 1) * per_level
            deps = sorted({f"agent-{start + (index * k) % per_level:04d}" for k in (1, 3, 7)})
        (manifests / "agents" / f"agent-{index:04d}.yaml").write_text(
            f"name: agent-{index:04d}\nextends: worker\nvars: {{port: {base_port + index}}}\n"
            f"priority: {index % 100}\ndepends_on: [{', '.join(deps)}]\n")
    return manifests


def median_seconds(action: Callable[[], object], runs: int) -> tuple[float, list[float]]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), samples


def run(argv: Sequence[str]) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
