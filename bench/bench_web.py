"""The control room at 200 agents: the page's first load, an agent's state change reaching an event-stream client,
and the web process's memory.

200 agents, each `sleep 3600` with no probes, in a 10-level DAG (bench_status's set, at 200), brought up by
`orchestrator up` with `web:` in orchestrator.yaml, so supervisord runs the control room (and the exporter).
Then, against that same supervisord:

  - first load, in Debian's headless Chromium (selenium), logged in: from the start of the navigation to `/` until
    the grid shows 200 cards (the page with its first picture of the cards, its script and style, parsed and
    drawn), by the page's own clock (performance.now()); median of RUNS loads. Also printed, for scale: the
    requests of a page, one after the other, by a plain HTTP client (page, script, style, session, graph, agents,
    history, audit);
  - a state change: an event-stream client on /api/events; an agent's process is SIGKILLed (supervisord reaps it
    at once: that is its event), and the time until an `agents` event shows the agent with another state or pid
    is taken; KILLS agents, QUIET s apart; median;
  - the web process's resident memory (RSS) after all of it.

Goals: first load under 300 ms; a change within 1 s of supervisord's event; the web process under 60 MB RSS.
Exit 1 when one is missed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import check, free_ports, sleeping_dag_set, stop_everything, terminate_as_interrupt, up_argv  # noqa: E402
from orchestrator.config.manifest import LoadOptions, load  # noqa: E402
from orchestrator.operations.reach import socket_of  # noqa: E402
from orchestrator.supervisord.client import Client  # noqa: E402

AGENTS, LEVELS, RUNS, KILLS, QUIET = 200, 10, 9, 9, 2.0
GOAL_LOAD, GOAL_CHANGE, GOAL_RSS = 0.300, 1.0, 60 * 1024 * 1024
BIN = Path(sys.executable).parent
ORCHESTRATOR = str(BIN / "orchestrator")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PAGE_REQUESTS = ("/", "/static/app.js", "/static/style.css", "/api/session", "/api/graph", "/api/agents", "/api/history",
                 "/api/audit")


class Stream:
    """An event-stream client of /api/events on a thread: each `agents` event with the time it arrived."""

    def __init__(self, url: str, token: str) -> None:
        self.events: list[tuple[float, dict[str, dict]]] = []
        self.lock = threading.Lock()
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=None, trust_env=False)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with self.client.stream("GET", "/api/events") as answer:
            kind = ""
            for line in answer.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "agents":
                    cards = {c["agent"]: c for c in json.loads(line[6:])["agents"]}
                    with self.lock:
                        self.events.append((time.time(), cards))

    def first_after(self, since: float, agent: str, pid: int, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for at, cards in self.events:
                    card = cards.get(agent)
                    if at >= since and card is not None and (card["pid"] != pid or card["state"] != "RUNNING"):
                        return at
            time.sleep(0.002)
        raise SystemExit(f"no event showed {agent}'s change within {timeout} s")


def browser_loads(url: str, session: str) -> list[float]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-proxy-server"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    took = []
    try:
        driver.get(url + "/static/style.css")
        driver.add_cookie({"name": "orchestrator_session", "value": session, "path": "/"})
        for _ in range(RUNS):
            driver.get("about:blank")
            started = time.perf_counter()
            driver.get(url + "/")
            while driver.execute_script("return document.querySelectorAll('#grid .card').length") < AGENTS:
                if time.perf_counter() - started > 30:
                    raise SystemExit("the page never showed every card")
            # the page's own clock: from the start of the navigation to the grid drawn (no webdriver round trips)
            took.append(float(driver.execute_script("return document.body.dataset.drawnAt")) / 1000)
    finally:
        driver.quit()
    return took


def main() -> None:
    terminate_as_interrupt()
    sleep = shutil.which("sleep")
    if sleep is None:
        raise SystemExit("no `sleep` on PATH")
    tmp = Path(tempfile.mkdtemp(prefix="ow-", dir="/tmp"))  # short: the supervisord socket path must fit
    manifests = sleeping_dag_set(tmp, agents=AGENTS, levels=LEVELS, sleep=sleep)
    exporter, web = free_ports(2)
    (manifests / "orchestrator.yaml").write_text(f"project: bench\nexporter: {{listen: \"127.0.0.1:{exporter}\"}}\n"
                                                 f"web: {{listen: \"127.0.0.1:{web}\"}}\n")
    state_dir = load(LoadOptions(str(manifests))).state_dir
    url = f"http://127.0.0.1:{web}"
    changes: list[float] = []
    try:
        check(up_argv(ORCHESTRATOR, manifests))
        token = json.loads(check([ORCHESTRATOR, "-m", str(manifests), "web", "--show-url", "--output", "json"]))["token"]
        plain = httpx.Client(base_url=url, timeout=30, trust_env=False)
        deadline = time.monotonic() + 60
        while True:
            try:
                if plain.get("/").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the control room never answered")
            time.sleep(0.1)
        login = plain.post("/login", content=f"token={token}",
                           headers={"Origin": url, "Content-Type": "application/x-www-form-urlencoded"})
        session = login.cookies.get("orchestrator_session") or plain.cookies.get("orchestrator_session")
        if not session:
            raise SystemExit(f"no session after the login: {login.status_code}")
        while len(plain.get("/api/agents").json()["agents"]) < AGENTS:
            time.sleep(0.1)
        requests = []
        for _ in range(RUNS):
            started = time.perf_counter()
            for path in PAGE_REQUESTS:
                plain.get(path).raise_for_status()
            requests.append(time.perf_counter() - started)
        loads = browser_loads(url, session) if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER) else []

        stream = Stream(url, token)
        time.sleep(1.0)
        client = Client(socket_of(state_dir))
        running = {p.group: p.pid for p in client.processes() if not p.group.startswith("_") and p.pid}
        for agent in sorted(running)[-KILLS:]:   # the last level: no dependents to take down with it
            pid = running[agent]
            since = time.time()
            os.kill(pid, signal.SIGKILL)
            changes.append(stream.first_after(since, agent, pid) - since)
            time.sleep(QUIET)
        web_pid = next(p.pid for p in client.processes() if p.group == "_web")
        rss = psutil.Process(web_pid).memory_info().rss
    finally:
        stop_everything(ORCHESTRATOR, manifests, state_dir)
        shutil.rmtree(tmp, ignore_errors=True)

    load_median = statistics.median(loads) if loads else statistics.median(requests)
    change = statistics.median(changes)
    print(f"control room, {AGENTS} agents")
    if loads:
        print(f"  first load in Chromium, to {AGENTS} cards drawn          {load_median * 1000:7.0f} ms   "
              f"runs: {', '.join(f'{s * 1000:.0f}' for s in loads)}")
    else:
        print("  (no Chromium: the first load is the HTTP requests alone)")
    print(f"  for scale: the page's {len(PAGE_REQUESTS)} requests, one after the other   "
          f"{statistics.median(requests) * 1000:7.0f} ms")
    print(f"  SIGKILL to the event that shows it                  {change * 1000:7.0f} ms   "
          f"runs: {', '.join(f'{s * 1000:.0f}' for s in changes)}")
    print(f"  the web process's RSS                               {rss / (1 << 20):7.1f} MiB")
    missed = [what for what, ok in (("first load", load_median < GOAL_LOAD), ("state change", change < GOAL_CHANGE),
                                    ("memory", rss < GOAL_RSS)) if not ok]
    print(f"  goals: first load under {GOAL_LOAD * 1000:.0f} ms, a change within {GOAL_CHANGE:g} s, under "
          f"{GOAL_RSS >> 20} MiB: {'met' if not missed else 'MISSED: ' + ', '.join(missed)}")
    if missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
