"""The control room (`orchestrator web`), end to end: the five demo trading agents under a real supervisord, the real
`orchestrator web` process (run by supervisord, since orchestrator.yaml has `web:`), its JSON API over HTTP, and its
page in Debian's headless Chromium driven by Selenium.

One project and one web server serve every test of the module (in file order: the page first, the security checks
last, since the login rate limit they provoke would lock the browser out); both are stopped even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Project, free_ports, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ROLES = ("market-data", "strategy-engine", "risk-manager", "order-executor", "portfolio-tracker")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT = REPO / "docs" / "control-room.png"


@dataclass
class Room:
    project: Project
    url: str
    operator: str        # tokens
    viewer: str

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10, trust_env=False)

    def cards(self) -> dict[str, dict]:
        with self.client(self.operator) as client:
            return {c["agent"]: c for c in client.get("/api/agents").json()["agents"]}

    def pids(self) -> dict[str, int]:
        return {name: card["pid"] for name, card in self.cards().items()}

    def log(self, agent: str) -> list[tuple[datetime, str]]:
        """(time, what) of each line the demo agent wrote on its stdout."""
        path = self.project.state / "logs" / f"{agent}.out.log"
        rows = []
        for line in path.read_text().splitlines():
            stamp, _, rest = line.partition(" ")
            with contextlib.suppress(ValueError):
                rows.append((datetime.fromisoformat(stamp), rest.partition(" ")[2]))
        return rows

    def last(self, agent: str, what: str) -> datetime:
        return max(t for t, text in self.log(agent) if text.startswith(what))

    def stopped(self, agent: str, since: datetime) -> datetime:
        """When the agent stopped after `since`: its own "stopping" line; or, when it logged none (a demo agent
        that did not end on SIGTERM within its stop_timeout is SIGKILLed: no last line), supervisord's "stopped"."""
        own = [t for t, text in self.log(agent) if text.startswith("stopping") and t >= since]
        if own:
            return max(own)
        found = []
        for line in (self.project.state / "logs" / "supervisord.log").read_text().splitlines():
            if f"stopped: {agent} (" in line:
                found.append(datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").astimezone())
        return max(t for t in found if t >= since)


def _demo_manifests(project: Project, web_port: int) -> None:
    """The repository's demo manifests, on free ports, with order-executor's liveness quick and its restart manual
    (so a liveness failure stops it for good: the card goes yellow, then red)."""
    shutil.rmtree(project.manifests)
    shutil.copytree(REPO / "manifests", project.manifests)
    settings = project.manifests / "orchestrator.yaml"
    text = settings.read_text()
    ports = free_ports(6)
    for role, port in zip(ROLES, ports, strict=False):
        text = re.sub(rf"({role}): \d+", rf"\g<1>: {port}", text)
    text = re.sub(r"listen: 127.0.0.1:\d+\n  interval: 5s", f"listen: 127.0.0.1:{ports[5]}\n  interval: 1s", text)
    text = re.sub(r"\ngrafana:.*?\n\n", "\n", text, flags=re.S)
    text = re.sub(r"\nnotifications:.*?\n\n", "\n", text, flags=re.S)
    text += (f"\nweb:\n  listen: 127.0.0.1:{web_port}\n  users:\n    - {{name: alice, role: operator}}\n"
             "    - {name: bob, role: viewer}\n")
    settings.write_text(text)
    executor = project.manifests / "agents" / "order-executor.yaml"
    executor.write_text(re.sub(r"(restart|resources):\n(  .*\n)+", "", executor.read_text()) + (
        "restart: {policy: manual}\n"
        "liveness: {http: \"http://{{ vars.host }}:{{ vars.port }}/health\", period: 500ms, timeout: 1s, failures: 3}\n"
        "resources: {warmup: 1s, memory_mb: {warning: 150, critical: 200, limit: 256}}\n"))


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Room]:
    """The demo up, with `web:` in its orchestrator.yaml: `up` runs the control room under supervisord."""
    project = Project(tmp_path_factory.mktemp("web"))
    try:
        port = free_ports(1)[0]
        _demo_manifests(project, port)
        project.run("up", check=True)
        tokens = {}
        for user in ("alice", "bob"):
            shown = project.run("web", "--show-url", "--user", user, "--output", "json", check=True)
            tokens[user] = json.loads(shown.stdout)["token"]
        room = Room(project, f"http://127.0.0.1:{port}", tokens["alice"], tokens["bob"])

        def answers() -> bool:
            with contextlib.suppress(httpx.TransportError), room.client(room.viewer) as client:
                return client.get("/api/session").status_code == 200
            return False

        wait_until(answers, 30, interval=0.1, message="the control room under supervisord")
        yield room
    finally:
        project.teardown()


@pytest.fixture(scope="module")
def browser(room: Room) -> Iterator[object]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("Debian's chromium and chromium-driver are not installed (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
                     "--no-proxy-server"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _card(driver, agent: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, f"card-{agent}")


def _color(driver, agent: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return str(_card(driver, agent).get_attribute("data-color"))
    except (NoSuchElementException, StaleElementReferenceException):   # not drawn yet, or redrawn while read
        return ""


def _pid(driver, agent: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return str(_card(driver, agent).find_element(By.CLASS_NAME, "pid").get_attribute("data-pid"))
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _click(driver, selector: str) -> None:
    from selenium.webdriver.common.by import By

    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, selector), 10, message=selector)
    for _ in range(5):   # a live redraw may replace the element between finding and clicking it
        with contextlib.suppress(Exception):
            driver.find_element(By.CSS_SELECTOR, selector).click()
            return
        time.sleep(0.1)
    driver.find_element(By.CSS_SELECTOR, selector).click()


def _confirm(driver, *, word: str | None = None) -> str:
    """Wait for the confirmation dialog, type `word` if asked, confirm; the text it showed."""
    from selenium.webdriver.common.by import By

    wait_until(lambda: driver.find_element(By.ID, "confirm").get_attribute("open") is not None, 10, message="the dialog")
    text = driver.find_element(By.ID, "confirm-text").text
    if word is not None:
        driver.find_element(By.ID, "confirm-word").send_keys(word)
    driver.find_element(By.ID, "confirm-ok").click()
    return str(text)


def _progress(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#progress li")]


def test_logging_in_with_the_token_shows_the_five_demo_agents_green(room: Room, browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get(room.url + "/")
    browser.find_element(By.ID, "token").send_keys(room.operator)
    browser.find_element(By.ID, "login-button").click()
    wait_until(lambda: all(_color(browser, a) == "green" for a in ROLES), 30, message="five green cards")
    wait_until(lambda: browser.find_element(By.ID, "connection").text == "live", 10, message="the stream")
    assert browser.find_element(By.ID, "version").text == "live version 1"
    _click(browser, "[data-open=strategy-engine]")
    wait_until(lambda: "listening on" in browser.find_element(By.ID, "detail-log").text, 10, message="the log tail")
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#chart-cpu polyline"), 10, message="the chart")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))


def test_restarting_strategy_engine_names_what_it_affects_shows_progress_and_a_new_pid(room: Room, browser) -> None:
    before = _pid(browser, "strategy-engine")
    _click(browser, "button[data-action=restart][data-agent=strategy-engine]")
    clicked = time.monotonic()
    text = _confirm(browser)
    assert "also stops and starts again order-executor" in text
    wait_until(lambda: any("strategy-engine: stopping" in line for line in _progress(browser)), 5, message="progress")
    wait_until(lambda: _pid(browser, "strategy-engine") not in ("", before), 5, message="a new pid on the card")
    assert time.monotonic() - clicked < 5 + 2   # the confirmation's own round trip on top of the 5 s
    wait_until(lambda: any("restart strategy-engine: ok" in line for line in _progress(browser)), 20, message="the result")
    assert _pid(browser, "strategy-engine") == str(room.pids()["strategy-engine"])


def test_stop_all_then_start_all_go_in_reverse_and_dependency_order(room: Room, browser) -> None:
    started = datetime.now().astimezone()
    _click(browser, "button[data-bulk=stop-all]")
    assert _confirm(browser).startswith("Stop every agent, dependents first: order-executor")
    wait_until(lambda: all(_color(browser, a) == "red" for a in ROLES), 30, message="every card red")
    stops = {a: room.stopped(a, started) for a in ROLES}
    assert stops["order-executor"] <= min(stops["strategy-engine"], stops["risk-manager"])
    assert stops["risk-manager"] <= stops["portfolio-tracker"] <= stops["market-data"]
    assert stops["strategy-engine"] <= stops["market-data"]

    _click(browser, "button[data-bulk=start-all]")
    _confirm(browser)
    wait_until(lambda: all(_color(browser, a) == "green" for a in ROLES), 60, message="every card green again")
    starts = {a: room.last(a, "listening on") for a in ROLES}
    assert starts["market-data"] <= min(starts["strategy-engine"], starts["portfolio-tracker"])
    assert starts["portfolio-tracker"] <= starts["risk-manager"] <= starts["order-executor"]
    assert starts["strategy-engine"] <= starts["order-executor"]


def test_a_liveness_failure_turns_a_card_yellow_then_red_without_a_reload(room: Room, browser) -> None:
    browser.execute_script("window.notReloaded = true")
    pid = int(str(wait_until(lambda: _pid(browser, "order-executor"), 10, message="its pid")))
    os.kill(pid, signal.SIGSTOP)   # it answers no probe any more; the keeper stops it (manual policy: for good)
    try:
        wait_until(lambda: _color(browser, "order-executor") == "yellow", 20, message="a yellow card")
        # the keeper stops it: once supervisord has sent SIGTERM, let it run to take it (not wait for the SIGKILL)
        wait_until(lambda: room.cards()["order-executor"]["state"] == "STOPPING", 20, message="the keeper's stop")
        os.kill(pid, signal.SIGCONT)
        wait_until(lambda: _color(browser, "order-executor") == "red", 30, message="a red card")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert browser.execute_script("return window.notReloaded") is True
    with room.client(room.operator) as client:   # back to running for the tests that follow
        assert client.post("/api/actions/start", json={"agent": "order-executor"}).status_code == 202
    wait_until(lambda: _color(browser, "order-executor") == "green", 30, message="green again")


def test_the_page_says_when_it_is_disconnected_and_is_live_again_when_the_server_is_back(room: Room, browser) -> None:
    """supervisord restarts the control room: the page says so, reconnects by itself, and its session still holds."""
    from selenium.webdriver.common.by import By

    browser.execute_script("window.notReloaded = true")
    config = str(room.project.state / "supervisord.conf")
    supervisorctl = str(Path(sys.executable).parent / "supervisorctl")
    subprocess.run([supervisorctl, "-c", config, "stop", "_web"], check=True, capture_output=True, timeout=30)
    try:
        wait_until(lambda: browser.find_element(By.ID, "connection").text.startswith("disconnected"), 10,
                   message="the page saying it is disconnected")
    finally:
        subprocess.run([supervisorctl, "-c", config, "start", "_web"], check=True, capture_output=True, timeout=30)
    wait_until(lambda: browser.find_element(By.ID, "connection").text == "live", 20, message="live again")
    assert browser.execute_script("return window.notReloaded") is True
    wait_until(lambda: all(_color(browser, a) == "green" for a in ROLES), 10, message="the cards after the reconnection")


def test_an_event_stream_resumed_with_last_event_id_gets_the_events_it_missed(room: Room) -> None:
    def until_cleared(client: httpx.Client, last: str) -> list[tuple[str, str, dict]]:
        """(id, kind, data) of the stream resumed after `last`, up to the audit entry of the emergency-clear below."""
        found: list[tuple[str, str, dict]] = []
        with client.stream("GET", "/api/events", headers={"Last-Event-ID": last}) as answer:
            ident = kind = ""
            for line in answer.iter_lines():
                if line.startswith("id: "):
                    ident = line[4:]
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and ident and kind != "agents":
                    data = json.loads(line[6:])
                    found.append((ident, kind, data))
                    if kind == "audit" and data["action"] == "emergency-clear" and data["detail"] == marker:
                        return found
                elif not line:
                    ident = kind = ""
        return found

    marker = "no emergency stop was latched"
    with room.client(room.operator) as client:
        assert client.post("/api/actions/emergency-clear").status_code == 202   # nothing latched: quick, and audited
        wait_until(lambda: any(e["action"] == "emergency-clear" for e in _audit(room)), 10, message="its audit entry")
        everything = until_cleared(client, "0-0")   # an id of no run of this server: all it kept
        assert [kind for _, kind, _ in everything[-3:]] == ["progress", "result", "audit"]
        resumed = until_cleared(client, everything[-3][0])
        assert resumed == everything[-2:]


def test_the_emergency_stop_wants_the_typed_word_and_latches_until_cleared(room: Room, browser) -> None:
    from selenium.webdriver.common.by import By

    before = room.pids()
    _click(browser, "button[data-bulk=emergency-stop]")
    _confirm(browser, word="stop")   # not the word: refused, nothing stopped
    wait_until(lambda: any("type STOP" in line for line in _progress(browser)), 10, message="the refusal")
    assert room.pids() == before and all(c["state"] == "RUNNING" for c in room.cards().values())

    _click(browser, "button[data-bulk=emergency-stop]")
    assert "Type STOP" in _confirm(browser, word="STOP")
    wait_until(lambda: browser.find_element(By.ID, "latch").is_displayed(), 15, message="the latch banner")
    wait_until(lambda: all(_color(browser, a) == "red" for a in ROLES), 15, message="every card red")
    assert "emergency stop latched" in browser.find_element(By.ID, "latch").text
    with room.client(room.operator) as client:
        refused = client.post("/api/actions/start-all")
        assert refused.status_code == 202
        wait_until(lambda: any(e["action"] == "start-all" and e["result"] == "failed"
                               for e in client.get("/api/audit").json()), 15, message="start-all refused while latched")

    _click(browser, "#clear-latch")
    _confirm(browser)
    wait_until(lambda: not browser.find_element(By.ID, "latch").is_displayed(), 15, message="the latch cleared")
    audit = [(e["user"], e["action"], e["result"]) for e in _audit(room)]
    assert ("alice", "emergency-stop", "ok") in audit and ("alice", "emergency-clear", "ok") in audit
    audited = browser.find_element(By.ID, "audit").text
    assert "emergency-stop" in audited and "emergency-clear" in audited
    room.project.run("start-all", check=True)


def _audit(room: Room) -> list[dict]:
    with room.client(room.operator) as client:
        return list(client.get("/api/audit").json())


def test_history_diff_rollback_with_its_plan_and_a_backup_through_the_api(room: Room) -> None:
    import io
    import tarfile

    settings = room.project.manifests / "orchestrator.yaml"
    settings.write_text(settings.read_text().replace("interval: 1s", "interval: 2s"))
    room.project.run("apply", check=True)   # version 2: a setting only, no agent restarts
    pids = room.pids()
    with room.client(room.operator) as client:
        history = client.get("/api/history").json()
        assert [(v["number"], v["live"]) for v in history][-2:] == [(1, False), (2, True)]
        diff = client.get("/api/diff", params={"a": "1", "b": "2"}).json()
        assert diff["settings"] == ["exporter"] and any("+  interval: 2s" in f["diff"] for f in diff["files"])
        plan = client.get("/api/rollback", params={"version": "1"}).json()
        assert plan["version"] == 1 and plan["live"] == 2 and any("+  interval: 1s" in f["diff"] for f in plan["files"])
        stale = client.post("/api/actions/rollback", json={"version": 1, "plan": "0" * 16})
        assert stale.status_code == 202
        wait_until(lambda: any(e["action"] == "rollback" and e["result"] == "failed" and "plan changed" in e["detail"]
                               for e in _audit(room)), 30, message="a rollback of another plan refused")
        assert client.post("/api/actions/rollback", json={"version": 1, "plan": plan["digest"]}).status_code == 202
        wait_until(lambda: any(e["action"] == "rollback" and e["result"] == "ok" for e in _audit(room)), 60,
                   message="the rollback")
        latest = client.get("/api/history").json()[-1]
        assert latest["live"] and latest["rollback_of"] == 1 and latest["command"] == "rollback"
        assert "interval: 1s" in settings.read_text()
        backup = client.get("/api/backup")
        assert backup.status_code == 200 and "attachment" in backup.headers["content-disposition"]
        with tarfile.open(fileobj=io.BytesIO(backup.content), mode="r:gz") as archive:
            assert any(name.endswith("BACKUP.json") for name in archive.getnames())
    assert room.pids() == pids   # settings only: no agent restarted


# -- security: each of these changes nothing and gets its status code ------------------------------------------------

def _login(room: Room, token: str, client: httpx.Client) -> str:
    """A session's CSRF token, after logging in with `token` (the cookie stays in `client`)."""
    answer = client.post("/login", content=f"token={token}", headers={"Origin": room.url,
                                                                      "Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 303
    return str(client.get("/api/session").json()["csrf"])


def test_requests_without_a_valid_session_csrf_token_origin_or_role_change_nothing(room: Room) -> None:
    pids: dict[str, int] = wait_until(lambda: (found := room.pids()) and set(found) == set(ROLES) and all(found.values())
                                      and found, 10, message="every agent running")  # type: ignore[assignment]
    body = {"agent": "market-data"}
    with room.client() as anonymous:
        assert anonymous.post("/api/actions/stop", json=body).status_code == 401           # no token
        assert anonymous.get("/api/agents").status_code == 401
        assert anonymous.get("/").text.count('id="token"') == 1                            # the login form, nothing else
    with room.client("not-the-token") as wrong:
        assert wrong.post("/api/actions/stop", json=body).status_code == 401              # a wrong token
    with room.client() as browserlike:
        csrf = _login(room, room.operator, browserlike)
        origin = {"Origin": room.url}
        assert browserlike.post("/api/actions/stop", json=body, headers=origin).status_code == 403          # no CSRF token
        assert browserlike.post("/api/actions/stop", json=body,
                                headers={**origin, "X-CSRF-Token": "forged"}).status_code == 403           # a wrong one
        assert browserlike.post("/api/actions/stop", json=body, headers={"Origin": "http://evil.example",
                                                                          "X-CSRF-Token": csrf}).status_code == 403  # foreign
        assert browserlike.post("/api/actions/stop", json=body, headers={"X-CSRF-Token": csrf}).status_code == 403  # none
        assert browserlike.get("/api/actions/stop", params=body).status_code == 405                        # a GET
        assert browserlike.get("/api/events", headers={"Host": "evil.example"}).status_code == 421         # rebinding
    with room.client() as viewer:
        csrf = _login(room, room.viewer, viewer)
        refused = viewer.post("/api/actions/stop", json=body, headers={"Origin": room.url, "X-CSRF-Token": csrf})
        assert refused.status_code == 403 and "viewer" in refused.json()["error"]
        assert viewer.get("/api/agents").status_code == 200                                # a viewer sees
    assert room.pids() == pids
    entries = _audit(room)
    assert any(e["user"] == "bob" and e["result"] == "refused" for e in entries)


def test_the_answers_carry_a_csp_that_forbids_inline_script_and_the_cookie_is_httponly_and_strict(room: Room) -> None:
    with room.client() as client:
        page = client.get("/")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "<script>" not in page.text and "onclick" not in page.text
        answer = client.post("/login", content=f"token={room.operator}",
                             headers={"Origin": room.url, "Content-Type": "application/x-www-form-urlencoded"})
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie


def test_failed_logins_are_rate_limited(room: Room) -> None:
    headers = {"Origin": room.url, "Content-Type": "application/x-www-form-urlencoded"}
    with room.client() as client:
        codes = [client.post("/login", content="token=guess", headers=headers).status_code for _ in range(6)]
        assert codes[:5] == [303] * 5 and codes[5] == 429
        assert client.post("/login", content=f"token={room.operator}", headers=headers).status_code == 429  # even right
        assert "orchestrator_session" not in client.cookies
