"""The demo trading agents (orchestrator/demo.py), run as real processes over real HTTP.

Every process a test starts comes from the `agents` fixture, which stops it
(SIGTERM, then SIGKILL after a deadline) even when the test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import free_ports, wait_until

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
# The agents talk to 127.0.0.1 only; never send that through a proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    return free_ports(1)[0]


def request(url: str, body: bytes | None = None) -> tuple[int, Any]:
    """(status, decoded JSON) for any HTTP answer; raises URLError if nothing answers."""
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with OPENER.open(req, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def post(url: str, payload: Any) -> tuple[int, Any]:
    return request(url, json.dumps(payload).encode())


def answer(url: str) -> tuple[int, Any] | None:
    """Like request(), but None while nothing is listening yet (or any more)."""
    try:
        return request(url)
    except (urllib.error.URLError, OSError):
        return None


@dataclass
class Agent:
    role: str
    port: int
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    started: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, Any]:
        return request(self.url + path)

    def wait_healthy(self, timeout: float = 10) -> None:
        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.role} exited with {self.proc.returncode}: {self.stderr.read_text()}"
                )
            result = answer(self.url + "/health")
            return result is not None and result[0] == 200

        wait_until(healthy, timeout, message=f"{self.role} to answer /health with 200")


StartAgent = Callable[..., Agent]


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[StartAgent]:
    """start(role, *options, port=None) runs one agent; all are stopped at teardown."""
    started: list[Agent] = []
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    def start(role: str, *options: str, port: int | None = None) -> Agent:
        port = port or free_port()
        n = len(started)
        stdout, stderr = tmp_path / f"{n}-{role}.out", tmp_path / f"{n}-{role}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.demo", role, "--port", str(port), *options],
                stdout=out, stderr=err, env=env, cwd=tmp_path,
            )
        agent = Agent(role, port, proc, stdout, stderr, time.monotonic())
        started.append(agent)
        return agent

    yield start

    for agent in started:
        if agent.proc.poll() is None:
            agent.proc.terminate()
    for agent in started:
        try:
            agent.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            agent.proc.kill()
            agent.proc.wait(timeout=5)


def test_market_data_serves_health_and_quotes_for_four_symbols(agents: StartAgent) -> None:
    market = agents("market-data", "--interval", "0.1")
    market.wait_healthy()

    status, health = market.get("/health")
    assert status == 200
    assert health["status"] == "ok"
    assert health["role"] == "market-data"
    assert health["pid"] == market.proc.pid
    assert health["uptime_seconds"] >= 0

    status, quotes = market.get("/quotes")
    assert status == 200
    assert set(quotes) == {"AAPL", "MSFT", "NVDA", "ETH-USD"}
    assert all(isinstance(price, float) and price > 0 for price in quotes.values())
    assert "listening on 127.0.0.1:" in market.stdout.read_text()


def test_an_agent_whose_dependency_is_missing_exits_3_naming_it(agents: StartAgent) -> None:
    missing = f"http://127.0.0.1:{free_port()}"
    strategy = agents("strategy-engine", "--market-data", missing, "--dependency-timeout", "1")

    assert strategy.proc.wait(timeout=10) == 3
    elapsed = time.monotonic() - strategy.started
    assert 0.8 <= elapsed < 6, f"exited after {elapsed:.1f}s, expected about 1s"
    stderr = strategy.stderr.read_text()
    assert "dependency market-data" in stderr
    assert missing in stderr
    assert "Traceback" not in stderr


def test_five_agents_started_in_dependency_order_trade_with_each_other(
    agents: StartAgent,
) -> None:
    fast = ("--interval", "0.1")
    market = agents("market-data", *fast)
    market.wait_healthy()
    portfolio = agents("portfolio-tracker", *fast, "--market-data", market.url)
    strategy = agents("strategy-engine", *fast, "--market-data", market.url)
    portfolio.wait_healthy()
    strategy.wait_healthy()
    risk = agents(
        "risk-manager", *fast, "--market-data", market.url, "--portfolio", portfolio.url
    )
    risk.wait_healthy()
    executor = agents(
        "order-executor", *fast,
        "--strategy", strategy.url, "--risk", risk.url, "--portfolio", portfolio.url,
    )
    executor.wait_healthy()

    wait_until(lambda: portfolio.get("/pnl")[1]["fills"] >= 1, 20, message="a first fill")
    status, orders = executor.get("/orders")
    assert status == 200
    assert orders["submitted"] >= 1
    assert orders["submitted"] == orders["approved"] + orders["rejected"]
    status, signals = strategy.get("/signals")
    assert status == 200 and signals, "the strategy should be showing its current signals"
    assert {"id", "symbol", "side", "qty", "price"} <= set(signals[0])
    status, positions = portfolio.get("/positions")
    assert status == 200
    assert set(positions) <= {"AAPL", "MSFT", "NVDA", "ETH-USD"}
    assert " fill " in portfolio.stdout.read_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_makes_an_agent_exit_0_promptly(
    agents: StartAgent, signum: signal.Signals
) -> None:
    market = agents("market-data")
    market.wait_healthy()
    strategy = agents("strategy-engine", "--market-data", market.url)  # default 1 s interval
    strategy.wait_healthy()

    sent = time.monotonic()
    strategy.proc.send_signal(signum)
    assert strategy.proc.wait(timeout=5) == 0
    assert time.monotonic() - sent < 2
    assert strategy.stdout.read_text().rstrip().endswith("strategy-engine stopping")
    assert strategy.stderr.read_text() == ""


def test_strategy_engine_degrades_without_market_data_and_recovers_when_it_returns(
    agents: StartAgent,
) -> None:
    market = agents("market-data", "--interval", "0.1")
    market.wait_healthy()
    strategy = agents("strategy-engine", "--interval", "0.1", "--market-data", market.url)
    strategy.wait_healthy()

    market.proc.kill()
    market.proc.wait(timeout=5)
    def degraded_health() -> dict[str, Any] | None:
        status, health = strategy.get("/health")
        return health if status == 503 else None

    health = wait_until(degraded_health, 10, message="strategy-engine /health to answer 503")
    assert health["status"] == "degraded"
    assert "market-data" in health["reason"]

    agents("market-data", "--interval", "0.1", port=market.port).wait_healthy()
    wait_until(lambda: strategy.get("/health")[0] == 200, 10, message="strategy-engine to recover")
    log = strategy.stdout.read_text()
    assert "went away" in log and "is back" in log


def test_a_second_agent_on_a_port_in_use_exits_4(agents: StartAgent) -> None:
    first = agents("market-data")
    first.wait_healthy()

    second = agents("market-data", port=first.port)
    assert second.proc.wait(timeout=10) == 4
    stderr = second.stderr.read_text()
    assert f"127.0.0.1:{first.port}" in stderr
    assert "Traceback" not in stderr
    assert first.get("/health")[0] == 200, "the first agent keeps serving"


def test_portfolio_accounts_fills_and_risk_enforces_position_limits(agents: StartAgent) -> None:
    market = agents("market-data")
    market.wait_healthy()
    portfolio = agents("portfolio-tracker", "--market-data", market.url)
    portfolio.wait_healthy()
    risk = agents(
        "risk-manager", "--market-data", market.url, "--portfolio", portfolio.url,
        "--max-position", "15",
    )
    risk.wait_healthy()

    assert post(portfolio.url + "/fills", {"symbol": "AAPL", "side": "buy", "qty": 10,
                                           "price": 100.0})[0] == 200
    assert post(portfolio.url + "/fills", {"symbol": "AAPL", "side": "sell", "qty": 4,
                                           "price": 110.0})[0] == 200
    assert portfolio.get("/positions") == (200, {"AAPL": {"qty": 6, "avg_price": 100.0}})
    status, pnl = portfolio.get("/pnl")
    assert status == 200
    assert pnl["fills"] == 2 and pnl["realized"] == 40.0

    order = {"symbol": "AAPL", "side": "buy", "qty": 10, "price": 100.0}
    status, verdict = post(risk.url + "/check", order)
    assert status == 200 and verdict["approved"] is False
    assert "above the limit of 15" in verdict["reason"]
    status, verdict = post(risk.url + "/check", {**order, "qty": 5})
    assert status == 200 and verdict["approved"] is True


def test_client_errors_get_json_answers_and_no_traceback(agents: StartAgent) -> None:
    market = agents("market-data")
    market.wait_healthy()
    portfolio = agents("portfolio-tracker", "--market-data", market.url)
    portfolio.wait_healthy()

    status, body = request(portfolio.url + "/fills", b"{not json")
    assert status == 400 and "JSON" in body["error"]
    status, body = post(portfolio.url + "/fills", {"symbol": "AAPL", "side": "hold", "qty": 1,
                                                   "price": 1.0})
    assert status == 400 and "side" in body["error"]
    status, body = portfolio.get("/no/such/path")
    assert status == 404 and "error" in body

    portfolio.proc.terminate()
    assert portfolio.proc.wait(timeout=5) == 0
    assert portfolio.stderr.read_text() == ""
