"""A toy agent for integration tests: it records when it starts, becomes ready and stops.

    python toy.py NAME --port P --log FILE [--delay S] [--never-ready] [--close-after S]

It appends `start`, `ready` and `stop` lines (wall-clock times) to FILE, becomes
ready (listens on 127.0.0.1:P) after --delay seconds, and stops cleanly on
SIGTERM. With --never-ready it never listens and complains on stderr.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time


def record(log: str, name: str, what: str) -> None:
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"{name} {what} {time.time():.6f} {os.getpid()}\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--never-ready", action="store_true")
    parser.add_argument("--variant", default="")
    parser.add_argument("--close-after", type=float, default=None, help="stop listening (but keep running) after S seconds")
    args = parser.parse_args()
    stop = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        record(args.log, args.name, "stop")
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    record(args.log, args.name, "start")
    if args.never_ready:
        for line in ("warming up the cache", "cache warm-up failed: upstream refused", f"{args.name}: not listening"):
            print(line, file=sys.stderr, flush=True)
        stop.wait()
        return
    if stop.wait(args.delay):
        return
    server = socket.create_server(("127.0.0.1", args.port))
    server.settimeout(0.1)
    record(args.log, args.name, "ready")
    ready_at = time.monotonic()
    while not stop.is_set():
        if args.close_after is not None and time.monotonic() - ready_at > args.close_after:
            server.close()
            record(args.log, args.name, "unhealthy")
            stop.wait()
            break
        try:
            conn, _ = server.accept()
            conn.close()
        except (TimeoutError, OSError):
            continue
    server.close()


if __name__ == "__main__":
    main()
