"""Run a command while every core is kept busy: the integration tests as a slower, busier machine sees them.

    python tests/contend.py [--burners N] -- COMMAND...

Starts N CPU burners (default: one per core), each a plain Python busy loop
at normal priority, runs COMMAND, and stops the burners whatever happens
(they are this script's own children, ended by PID). Exits with COMMAND's
exit status. Used by `make test-contended`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

BURN = "while True:\n    pass\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="contend")
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 2)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(args.burners)]
    print(f"contend: {len(burners)} CPU burner(s) running (pids {', '.join(str(b.pid) for b in burners)})", flush=True)
    try:
        return subprocess.call(command)
    finally:
        for burner in burners:
            burner.kill()
        for burner in burners:
            burner.wait()
        print("contend: burners stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
