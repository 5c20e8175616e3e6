"""Demo trading agents: five small programs that together simulate a trading system.

Owned here: the programs the default manifests run under supervisord, one role
per invocation (`python -m orchestrator.demo ROLE --port N [dependency URLs]`).
They are real processes talking JSON over HTTP on 127.0.0.1, so the supervisor
has something honest to start in dependency order, watch and restart:

    market-data        random-walk quotes          GET /quotes
    portfolio-tracker  fills, positions, P&L       POST /fills, GET /positions, GET /pnl
    strategy-engine    momentum signals            GET /signals
    risk-manager       pre-trade limit checks      POST /check
    order-executor     signal -> check -> fill     GET /orders

Every role serves GET /health (200 "ok", or 503 "degraded" while a dependency
is unreachable) and logs one flushed line per notable event to stdout.

Exit codes: 0 stopped by SIGTERM/SIGINT, 2 bad command line (argparse),
3 a dependency never answered at start, 4 the port could not be bound.
Standard library only, so it runs in any Python the supervisor has.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EXIT_OK, EXIT_DEPENDENCY, EXIT_BIND = 0, 3, 4
REQUEST_TIMEOUT = 1.0  # seconds; short so a dead peer cannot stall a work loop for long
RETRY_EVERY = 0.2  # seconds between dependency checks at start

START_PRICES = {"AAPL": 189.0, "MSFT": 415.0, "NVDA": 880.0, "ETH-USD": 3200.0}
PRICE_STEP = 0.002  # standard deviation of one random-walk step, as a fraction of price
HISTORY = 5  # the strategy compares the last price to the mean of this many
MOMENTUM_THRESHOLD = 0.002  # below this relative move there is no signal
SIGNAL_QTY = 10

# Command-line flag of each dependency URL -> the role that answers there.
DEPENDENCY_FLAGS = {
    "--market-data": "market-data",
    "--portfolio": "portfolio-tracker",
    "--strategy": "strategy-engine",
    "--risk": "risk-manager",
}

# Never use an HTTP proxy from the environment: every peer is on this machine.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class DependencyDown(Exception):
    """A dependency did not answer (connection refused, timeout, garbage)."""


class DependencyError(Exception):
    """A dependency answered, but with an HTTP error status."""


class BadRequest(Exception):
    """The client sent something we cannot use; becomes a 400."""


def http_json(method: str, url: str, body: Any = None, timeout: float = REQUEST_TIMEOUT) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with _OPENER.open(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def describe(exc: BaseException) -> str:
    """One short line for an exception, without urllib's wrapping."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


class Agent:
    """What every role shares: dependencies, health, the work loop, logging."""

    role = ""
    needs: tuple[str, ...] = ()  # flags from DEPENDENCY_FLAGS

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.interval: float = args.interval
        self.deps = {DEPENDENCY_FLAGS[f]: getattr(args, f[2:].replace("-", "_")) for f in self.needs}
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self._down: dict[str, str] = {}  # dependency role -> why it is unreachable

    def log(self, message: str) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        print(f"{stamp} {self.role} {message}", flush=True)

    # --- talking to dependencies -------------------------------------------------

    def call(self, dep: str, method: str, path: str, body: Any = None) -> Any:
        """Call a dependency, keeping /health in step with whether it answers."""
        url = self.deps[dep] + path
        try:
            result = http_json(method, url, body)
        except urllib.error.HTTPError as exc:
            self._mark_up(dep)  # it answered, so it is there; the request failed
            raise DependencyError(f"{dep} answered {method} {path} with HTTP {exc.code}") from exc
        except (OSError, ValueError) as exc:  # refused, timed out, reset, not JSON
            self._mark_down(dep, describe(exc))
            raise DependencyDown(f"{dep} at {self.deps[dep]} is unreachable: {describe(exc)}") from exc
        self._mark_up(dep)
        return result

    def _mark_down(self, dep: str, reason: str) -> None:
        with self.lock:
            new = dep not in self._down
            self._down[dep] = reason
        if new:
            self.log(f"dependency {dep} at {self.deps[dep]} went away: {reason}")

    def _mark_up(self, dep: str) -> None:
        with self.lock:
            was_down = self._down.pop(dep, None) is not None
        if was_down:
            self.log(f"dependency {dep} at {self.deps[dep]} is back")

    def wait_for_dependencies(self, timeout: float) -> str | None:
        """At start: None once every dependency's /health says 200, else an error line."""
        deadline = time.monotonic() + timeout
        for dep, url in self.deps.items():
            while True:
                remaining = deadline - time.monotonic()
                try:
                    http_json("GET", url + "/health", timeout=max(0.05, min(REQUEST_TIMEOUT, remaining)))
                    break
                except (OSError, ValueError) as exc:
                    reason = describe(exc)
                if time.monotonic() + RETRY_EVERY > deadline:
                    return (f"{self.role}: dependency {dep} at {url} is not reachable "
                            f"after {timeout:.1f}s: {reason}")
                if self.stop.wait(RETRY_EVERY):
                    return None  # asked to stop while waiting; main() exits 0
        return None

    # --- serving -----------------------------------------------------------------

    def health(self) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"status": "ok", "role": self.role, "pid": os.getpid(),
                                "uptime_seconds": round(time.monotonic() - self.started, 3)}
        with self.lock:
            down = dict(self._down)
        if down:
            body["status"] = "degraded"
            body["reason"] = "; ".join(f"{d} unreachable: {why}" for d, why in sorted(down.items()))
            return 503, body
        return 200, body

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        """GET /x calls self.get_x(); POST /x calls self.post_x(body). Anything else is 404."""
        if method == "GET" and path == "/health":
            return self.health()
        handler = getattr(self, f"{method.lower()}_{path.strip('/').replace('/', '_')}", None)
        if not path.startswith("/") or handler is None:
            return 404, {"error": f"no such endpoint: {method} {path}"}
        return 200, (handler(body) if method == "POST" else handler())

    # --- the work loop -----------------------------------------------------------

    def tick(self) -> None:
        """One round of the role's periodic work; by default, see the dependencies are up."""
        for dep in self.deps:
            self.call(dep, "GET", "/health")

    def work_loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.tick()
            except (DependencyDown, DependencyError):
                pass  # already logged once on the transition, and shown by /health
            except Exception as exc:  # noqa: BLE001 - one bad round must not kill the agent
                self.log(f"work loop error: {describe(exc)}")
            self.stop.wait(self.interval)  # returns at once when SIGTERM sets stop


class MarketData(Agent):
    """Random-walk prices for a few symbols; the root of the dependency graph."""

    role = "market-data"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.rng = random.Random(args.seed)  # seeded so a demo run is reproducible
        self.prices = dict(START_PRICES)

    def tick(self) -> None:
        with self.lock:
            for symbol, price in self.prices.items():
                self.prices[symbol] = round(price * (1 + self.rng.gauss(0, PRICE_STEP)), 2)

    def get_quotes(self) -> dict[str, float]:
        with self.lock:
            return dict(self.prices)


class StrategyEngine(Agent):
    """Momentum signals from market-data quotes: last price against the recent mean."""

    role = "strategy-engine"
    needs = ("--market-data",)

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.history: dict[str, deque[float]] = {}
        self.signals: dict[str, dict[str, Any]] = {}  # the latest signal per symbol
        self.next_id = 0

    def tick(self) -> None:
        quotes = self.call("market-data", "GET", "/quotes")
        with self.lock:
            for symbol, price in sorted(quotes.items()):
                prices = self.history.setdefault(symbol, deque(maxlen=HISTORY))
                prices.append(price)
                if len(prices) < HISTORY:
                    continue
                momentum = price / (sum(prices) / len(prices)) - 1
                if abs(momentum) < MOMENTUM_THRESHOLD:
                    continue  # keep the previous signal; ids only ever grow
                self.next_id += 1
                self.signals[symbol] = {"id": self.next_id, "symbol": symbol,
                                        "side": "buy" if momentum > 0 else "sell",
                                        "qty": SIGNAL_QTY, "price": price}

    def get_signals(self) -> list[dict[str, Any]]:
        with self.lock:
            return sorted(self.signals.values(), key=lambda s: s["id"])


def parse_order(body: Any) -> dict[str, Any]:
    """Validate {"symbol","side","qty","price"}; raise BadRequest naming the bad field."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    symbol, side, qty, price = (body.get(k) for k in ("symbol", "side", "qty", "price"))
    if not isinstance(symbol, str) or not symbol:
        raise BadRequest("symbol must be a non-empty string")
    if side not in ("buy", "sell"):
        raise BadRequest('side must be "buy" or "sell"')
    if isinstance(qty, bool) or not isinstance(qty, int) or qty <= 0:
        raise BadRequest("qty must be a positive integer")
    if isinstance(price, bool) or not isinstance(price, (int, float)) or price <= 0:
        raise BadRequest("price must be a positive number")
    return {"symbol": symbol, "side": side, "qty": qty, "price": float(price)}


class PortfolioTracker(Agent):
    """Records fills; reports positions and P&L marked to market-data quotes."""

    role = "portfolio-tracker"
    needs = ("--market-data",)

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.positions: dict[str, dict[str, float]] = {}  # symbol -> signed qty, avg_price
        self.realized = 0.0
        self.fills = 0

    def post_fills(self, body: Any) -> dict[str, Any]:
        fill = parse_order(body)
        delta = fill["qty"] if fill["side"] == "buy" else -fill["qty"]
        with self.lock:
            pos = self.positions.setdefault(fill["symbol"], {"qty": 0, "avg_price": 0.0})
            qty, avg, price = pos["qty"], pos["avg_price"], fill["price"]
            if qty == 0 or (qty > 0) == (delta > 0):  # opening or adding: average in
                pos["avg_price"] = (qty * avg + delta * price) / (qty + delta)
            else:  # reducing: realize P&L on the closed part; a flip opens at this price
                closed = min(abs(delta), abs(qty))
                self.realized += closed * (price - avg) * (1 if qty > 0 else -1)
                if abs(delta) > abs(qty):
                    pos["avg_price"] = price
                elif abs(delta) == abs(qty):
                    pos["avg_price"] = 0.0
            pos["qty"] = qty + delta
            self.fills += 1
            result = {"symbol": fill["symbol"], "qty": pos["qty"],
                      "avg_price": round(pos["avg_price"], 4)}
        self.log(f"fill {fill['side']} {fill['qty']} {fill['symbol']} @ {price:.2f}"
                 f" -> position {result['qty']}")
        return result

    def get_positions(self) -> dict[str, dict[str, float]]:
        with self.lock:
            return {s: {"qty": p["qty"], "avg_price": round(p["avg_price"], 4)}
                    for s, p in sorted(self.positions.items()) if p["qty"] != 0}

    def get_pnl(self) -> dict[str, Any]:
        quotes = self.call("market-data", "GET", "/quotes")  # DependencyDown -> 503
        with self.lock:
            unrealized = sum(p["qty"] * (quotes[s] - p["avg_price"])
                             for s, p in self.positions.items() if s in quotes)
            return {"realized": round(self.realized, 2), "unrealized": round(unrealized, 2),
                    "fills": self.fills}


class RiskManager(Agent):
    """Approves or rejects an order against position and notional limits."""

    role = "risk-manager"
    needs = ("--market-data", "--portfolio")

    def post_check(self, body: Any) -> dict[str, Any]:
        order = parse_order(body)
        symbol = order["symbol"]
        positions = self.call("portfolio-tracker", "GET", "/positions")
        current = positions.get(symbol, {}).get("qty", 0)
        after = current + (order["qty"] if order["side"] == "buy" else -order["qty"])
        if abs(after) <= abs(current):
            return {"approved": True, "reason": f"reduces the position in {symbol}"}
        if abs(after) > self.args.max_position:
            return {"approved": False, "reason": f"position in {symbol} would be {after},"
                    f" above the limit of {self.args.max_position}"}
        # Value the position at the market, not at the order's (possibly stale) price.
        price = self.call("market-data", "GET", "/quotes").get(symbol, order["price"])
        notional = abs(after) * price
        if notional > self.args.max_notional:
            return {"approved": False, "reason": f"notional in {symbol} would be {notional:.2f},"
                    f" above the limit of {self.args.max_notional:.2f}"}
        return {"approved": True, "reason": "within limits"}


class OrderExecutor(Agent):
    """Turns new strategy signals into risk checks and, when approved, fills."""

    role = "order-executor"
    needs = ("--strategy", "--risk", "--portfolio")

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.handled = 0  # highest signal id acted on; the strategy's ids only grow
        self.counts = {"submitted": 0, "approved": 0, "rejected": 0}

    def tick(self) -> None:
        signals = self.call("strategy-engine", "GET", "/signals")
        newest = max((s["id"] for s in signals), default=0)
        if newest < self.handled:  # ids went backwards: the strategy restarted
            self.log(f"strategy-engine signal ids went back to {newest} (restarted); starting over")
            self.handled = 0
        for sig in sorted(signals, key=lambda s: s["id"]):
            if sig["id"] <= self.handled or self.stop.is_set():
                continue
            order = {k: sig[k] for k in ("symbol", "side", "qty", "price")}
            verdict = self.call("risk-manager", "POST", "/check", order)
            if verdict["approved"]:
                self.call("portfolio-tracker", "POST", "/fills", order)
            # Count and advance only now: a failure above retries this signal next round.
            with self.lock:
                self.counts["submitted"] += 1
                self.counts["approved" if verdict["approved"] else "rejected"] += 1
            self.handled = sig["id"]
            outcome = "filled" if verdict["approved"] else f"rejected: {verdict['reason']}"
            self.log(f"signal {sig['id']} {sig['side']} {sig['qty']} {sig['symbol']}"
                     f" @ {sig['price']:.2f} {outcome}")

    def get_orders(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)


ROLES: dict[str, type[Agent]] = {
    cls.role: cls
    for cls in (MarketData, PortfolioTracker, StrategyEngine, RiskManager, OrderExecutor)
}


class Handler(BaseHTTPRequestHandler):
    """Turns HTTP into Agent.route() calls; every answer is JSON."""

    agent: Agent  # set on a per-run subclass in serve()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            body = self._read_json() if method == "POST" else None
            status, payload = self.agent.route(method, path, body)
        except BadRequest as exc:
            status, payload = 400, {"error": str(exc)}
        except (DependencyDown, DependencyError) as exc:
            status, payload = 503, {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a bug: answer 500, log one line
            self.agent.log(f"error serving {method} {path}: {describe(exc)}")
            status, payload = 500, {"error": "internal error"}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_json(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from exc

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one log line per request would drown the events that matter


class Server(ThreadingHTTPServer):
    daemon_threads = True  # do not keep the process alive for a slow client

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up mid-request is its problem, not a traceback for us


def build_parser() -> argparse.ArgumentParser:
    def positive(text: str) -> float:
        value = float(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    def url(text: str) -> str:
        if not text.startswith(("http://", "https://")):
            raise argparse.ArgumentTypeError(f"must be an http:// URL, got {text!r}")
        return text.rstrip("/")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    common.add_argument("--port", type=int, required=True, help="port to serve on")
    common.add_argument("--dependency-timeout", type=positive, default=5.0, metavar="SECONDS",
                        help="how long to wait at start for dependencies (default 5)")
    common.add_argument("--interval", type=positive, default=1.0, metavar="SECONDS",
                        help="period of the role's work loop (default 1.0)")
    common.add_argument("--seed", type=int, default=0, help="random seed for prices (default 0)")

    parser = argparse.ArgumentParser(prog="python -m orchestrator.demo",
                                     description="Run one demo trading agent.")
    roles = parser.add_subparsers(dest="role", required=True, metavar="ROLE")
    for name, cls in ROLES.items():
        sub = roles.add_parser(name, parents=[common], help=(cls.__doc__ or name).strip())
        for flag in cls.needs:
            sub.add_argument(flag, type=url, required=True, metavar="URL",
                             help=f"base URL of the {DEPENDENCY_FLAGS[flag]}")
        if cls is RiskManager:
            sub.add_argument("--max-position", type=int, default=50,
                             help="largest absolute position per symbol, in units (default 50)")
            sub.add_argument("--max-notional", type=positive, default=100000.0,
                             help="largest position value per symbol (default 100000)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    agent = ROLES[args.role](args)

    # SIGTERM (supervisord's stop) and SIGINT (Ctrl-C) only set the event; the
    # main thread below and the work loop both wait on it and wind down.
    def request_stop(signum: int, frame: Any) -> None:
        agent.stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    error = agent.wait_for_dependencies(args.dependency_timeout)
    if error:
        print(error, file=sys.stderr, flush=True)
        return EXIT_DEPENDENCY
    if agent.stop.is_set():
        agent.log("stopping")
        return EXIT_OK

    handler = type("BoundHandler", (Handler,), {"agent": agent})
    try:
        server = Server((args.host, args.port), handler)
    except OSError as exc:
        print(f"{agent.role}: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr, flush=True)
        return EXIT_BIND

    agent.log(f"listening on {args.host}:{server.server_port}")
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    worker = threading.Thread(target=agent.work_loop, name="work", daemon=True)
    worker.start()

    # Until a signal arrives. Waited in short slices: the kernel may deliver SIGTERM to any thread, and Python runs
    # its handler only in the main thread, between bytecodes; a main thread blocked in one endless wait never got
    # there, and supervisord SIGKILLed the agent at its stop timeout, without its last log line.
    while not agent.stop.wait(0.2):
        pass
    server.shutdown()
    server.server_close()
    worker.join(timeout=2 * REQUEST_TIMEOUT)
    agent.log("stopping")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
