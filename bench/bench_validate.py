"""`orchestrator validate` on 500 agents in a 10-level DAG: the goal is under 2 seconds.

Measured as users run it: the whole command, Python start-up included, median
of several runs. The baseline, measured in the same run, is supervisord's own
parsing of the same rendered configuration (a fresh Python that imports
supervisor and runs `ServerOptions.process_config`, as `supervisord -c` does
first): the part of validation that supervisord itself would do anyway.
Also printed: where validate's time goes, in-process.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import dag_set, median_seconds, run  # noqa: E402
from orchestrator.supervisord import render  # noqa: E402
from orchestrator.config.manifest import LoadOptions, load  # noqa: E402

AGENTS, LEVELS, RUNS, GOAL = 500, 10, 7, 2.0
ORCHESTRATOR = str(Path(sys.executable).parent / "orchestrator")

PARSE_ONLY = """
import sys
from supervisor.options import ServerOptions
options = ServerOptions()
options.configfile = sys.argv[1]
options.process_config(do_usage=False)
# every agent is a group; so is orchestrator's event listener, the one name starting with '_'
assert len([g for g in options.process_group_configs if not g.name.startswith("_")]) == int(sys.argv[2])
"""


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        manifests = dag_set(Path(tmp), agents=AGENTS, levels=LEVELS)
        out = Path(tmp) / "rendered"
        run([ORCHESTRATOR, "-m", str(manifests), "render", "--out", str(out)])
        (Path(tmp) / ".orchestrator" / "logs").mkdir(parents=True)

        validate, samples = median_seconds(lambda: run([ORCHESTRATOR, "-m", str(manifests), "validate"]), RUNS)
        parse, parse_samples = median_seconds(
            lambda: run([sys.executable, "-c", PARSE_ONLY, str(out / "supervisord.conf"), str(AGENTS)]), RUNS)

        started = time.perf_counter()
        loaded = load(LoadOptions(str(manifests)))
        load_time = time.perf_counter() - started
        started = time.perf_counter()
        problems = render.check(loaded)
        check_time = time.perf_counter() - started
        assert not problems, problems

    print(f"validate, {AGENTS} agents in a {LEVELS}-level DAG (median of {RUNS} runs, whole command)")
    print(f"  orchestrator validate              {validate * 1000:8.0f} ms   runs: {', '.join(f'{s * 1000:.0f}' for s in samples)}")
    print(f"  baseline: supervisord parse only   {parse * 1000:8.0f} ms   runs: {', '.join(f'{s * 1000:.0f}' for s in parse_samples)}")
    print(f"  ratio validate / supervisord parse {validate / parse:8.2f}x")
    print(f"  in-process: load+validate {load_time * 1000:.0f} ms, render+supervisord check {check_time * 1000:.0f} ms")
    verdict = "meets" if validate < GOAL else "MISSES"
    print(f"  {verdict} the goal of {GOAL:.0f} s")
    if validate >= GOAL:
        sys.exit(1)


if __name__ == "__main__":
    main()
