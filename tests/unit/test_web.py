"""The control room's pure parts and its files: card colors, confirmations from the graph, tokens, sessions, the
login limit, the audit log, and the `web:` settings of orchestrator.yaml (errors at their line)."""

from __future__ import annotations

import os
import stat

import pytest
from click.testing import CliRunner

from orchestrator.config.manifest import LoadOptions, load
from orchestrator.core.errors import ManifestError
from orchestrator.core.graph import Graph
from orchestrator.core.model import WebUser
from orchestrator.interfaces.cli import cli
from orchestrator.interfaces.web import auth
from orchestrator.interfaces.web.cards import EMERGENCY_WORD, color, confirmation
from orchestrator.state import audit
from tests.conftest import ROOT_USER

TRADING = Graph.of_edges({"market-data": [], "strategy-engine": ["market-data"], "portfolio-tracker": ["market-data"],
                          "risk-manager": ["market-data", "portfolio-tracker"],
                          "order-executor": ["strategy-engine", "risk-manager", "portfolio-tracker"]})


@pytest.mark.parametrize(("row", "latched", "expected"), [
    ({"state": "RUNNING", "ready": True, "health": "ok"}, False, "green"),
    ({"state": "RUNNING", "ready": True, "health": "unknown"}, False, "green"),
    ({"state": "RUNNING", "ready": True, "health": "failing: timed out"}, False, "yellow"),
    ({"state": "RUNNING", "ready": False, "health": "ok"}, False, "yellow"),
    ({"state": "STARTING", "ready": False}, False, "yellow"),
    ({"state": "BACKOFF", "ready": False}, False, "yellow"),
    ({"state": "BACKOFF", "ready": False, "given_up": True}, False, "red"),
    ({"state": "GIVEN UP", "ready": False}, False, "red"),
    ({"state": "STOPPED", "ready": False}, False, "red"),
    ({"state": "ABSENT", "ready": False}, False, "red"),
    ({"state": "STOPPED", "ready": False}, True, "red"),
    ({"state": "STOPPING", "ready": False}, True, "red"),
])
def test_a_card_is_green_when_running_and_ready_yellow_on_the_way_or_degraded_red_when_down(row, latched, expected):
    assert color(row, latched=latched) == expected


def test_stopping_an_agent_names_everything_that_depends_on_it():
    stop = confirmation("stop", "market-data", TRADING, up=set(TRADING.depends_on))
    assert stop.text == ("Stop market-data; stopping market-data also stops portfolio-tracker, strategy-engine, "
                         "risk-manager, order-executor.")
    assert stop.affected[0] == "order-executor" and stop.affected[-1] == "market-data"
    restart = confirmation("restart", "strategy-engine", TRADING, up=set(TRADING.depends_on))
    assert "also stops and starts again order-executor" in restart.text
    assert confirmation("stop", "order-executor", TRADING, up=set()).text == "Stop order-executor."


def test_starting_an_agent_names_what_it_needs_that_is_not_running():
    found = confirmation("start", "risk-manager", TRADING, up={"market-data"})
    assert found.text == "Start risk-manager; it also starts what it needs first: portfolio-tracker."
    assert confirmation("start", "risk-manager", TRADING, up={"market-data", "portfolio-tracker"}).text == "Start risk-manager."


def test_bulk_actions_list_their_order_and_the_emergency_stop_asks_for_its_word():
    assert confirmation("stop-all", "all", TRADING, up=set()).affected == TRADING.stop_order
    assert confirmation("start-all", "all", TRADING, up=set()).affected == TRADING.start_order
    emergency = confirmation("emergency-stop", "all", TRADING, up=set())
    assert emergency.word == EMERGENCY_WORD and EMERGENCY_WORD in emergency.text


def test_the_session_key_is_generated_once_into_a_private_file(tmp_path):
    key = auth.session_key(str(tmp_path))
    assert len(key) == 32 and auth.session_key(str(tmp_path)) == key
    assert stat.S_IMODE(os.stat(tmp_path / "web" / "session.key").st_mode) == 0o600


def test_tokens_are_generated_once_per_user_into_a_private_file(tmp_path):
    users = [WebUser("alice", "operator"), WebUser("bob", "viewer")]
    first = auth.tokens(str(tmp_path), users)
    path = tmp_path / "web" / "tokens.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "web").st_mode) == 0o700
    assert set(first) == {"alice", "bob"} and first["alice"] != first["bob"] and len(first["alice"]) >= 40
    assert auth.tokens(str(tmp_path), users) == first                     # kept across restarts
    assert auth.tokens(str(tmp_path), users[:1]) == {"alice": first["alice"]}


def test_a_session_carries_the_users_role_and_a_csrf_token_and_expires():
    now = [1000.0]
    users = [WebUser("alice", "operator"), WebUser("bob", "viewer")]
    sessions = auth.Sessions(users, {"alice": "a" * 43, "bob": "b" * 43}, key=b"k" * 32, clock=lambda: now[0])
    assert sessions.user_of("a" * 43) == "alice" and sessions.user_of("wrong") is None and sessions.user_of("") is None
    alice, bob = sessions.open("alice"), sessions.open("bob")
    assert alice.operator and not bob.operator and alice.csrf != bob.csrf and alice.id != bob.id
    assert sessions.get(alice.id) == alice and sessions.get("forged") is None
    now[0] += auth.SESSION_LIFETIME + 1
    assert sessions.get(alice.id) is None


def test_a_session_survives_a_restart_of_the_web_process_but_not_a_forgery_a_logout_or_another_key():
    users = [WebUser("alice", "operator"), WebUser("bob", "viewer")]
    before = auth.Sessions(users, {}, key=b"k" * 32)
    bob = before.open("bob")
    after = auth.Sessions(users, {}, key=b"k" * 32)       # the web process restarted
    assert after.get(bob.id) == bob
    assert after.get(bob.id.replace("bob.", "alice.", 1)) is None   # a viewer's cookie made an operator's
    assert auth.Sessions(users, {}, key=b"x" * 32).get(bob.id) is None
    after.close(bob.id)
    assert after.get(bob.id) is None
    assert auth.Sessions([WebUser("alice", "operator")], {}, key=b"k" * 32).get(bob.id) is None   # bob was unlisted


def test_failed_logins_from_one_address_wait_once_over_the_limit_and_not_forever():
    now = [0.0]
    limit = auth.LoginLimit(clock=lambda: now[0], limit=3, window=60)
    for _ in range(3):
        assert limit.wait("10.0.0.1") == 0
        limit.failed("10.0.0.1")
    assert limit.wait("10.0.0.1") == 60 and limit.wait("10.0.0.2") == 0
    now[0] = 61
    assert limit.wait("10.0.0.1") == 0


def test_the_audit_log_keeps_whole_lines_newest_first_and_skips_a_line_cut_short(tmp_path):
    for number in range(3):
        audit.append(str(tmp_path), audit.Entry(at=float(number), user="alice", role="operator", action="stop",
                                                target=f"agent-{number}", result="ok"))
    with open(audit.path(str(tmp_path)), "a") as handle:
        handle.write('{"at": 9, "user": "al')   # a kill -9 in the middle of a write
    assert [e.target for e in audit.recent(str(tmp_path))] == ["agent-2", "agent-1", "agent-0"]
    assert stat.S_IMODE(os.stat(audit.path(str(tmp_path))).st_mode) == 0o600


def _load(manifests):
    return load(LoadOptions(str(manifests), check_commands=False))


def test_web_settings_beyond_loopback_or_with_a_user_twice_are_errors_at_their_lines(manifest_set):
    agent = {"agents/a.yaml": "name: a\ncommand: [sh]\n"}
    manifests = manifest_set({**agent, "orchestrator.yaml": "project: p\nweb:\n  listen: 0.0.0.0:9400\n  users:\n"
                                                            "    - {name: alice, role: operator}\n    - {name: alice}\n"})
    with pytest.raises(ManifestError) as caught:
        _load(manifests)
    found = [(d.location.line, d.key) for d in caught.value.errors]
    assert found == [(3, "web.listen"), (6, "web.users[1].name")]
    assert "web.allow_remote" in caught.value.errors[0].message
    manifests = manifest_set({**agent, "orchestrator.yaml": "web:\n  listen: 0.0.0.0:9400\n  allow_remote: true\n" + ROOT_USER})
    assert [(w.severity, w.key) for w in _load(manifests).warnings] == [("warning", "web.listen")]
    manifests = manifest_set({**agent, "orchestrator.yaml": "web:\n  users: [{name: bob, role: admin}]\n"})
    with pytest.raises(ManifestError) as caught:
        _load(manifests)
    assert "unknown role 'admin' (expected one of viewer, operator)" in str(caught.value.errors[0])


def test_show_url_prints_the_login_link_with_the_token_and_a_bad_listen_address_is_a_clean_error(manifest_set, tmp_path):
    manifests = manifest_set({"agents/a.yaml": "name: a\ncommand: [sh]\n",
                              "orchestrator.yaml": "web:\n  users: [{name: alice, role: operator}, {name: bob}]\n"})
    runner = CliRunner()
    shown = runner.invoke(cli, ["-m", str(manifests), "--state-dir", str(tmp_path / "state"), "web", "--show-url"])
    assert shown.exit_code == 0, shown.output
    tokens = auth.tokens(str(tmp_path / "state"), [WebUser("alice"), WebUser("bob")])
    assert shown.output.strip() == f"http://localhost:9400/#token={tokens['alice']}"
    unknown = runner.invoke(cli, ["-m", str(manifests), "--state-dir", str(tmp_path / "state"), "web", "--show-url",
                                  "--user", "carol"])
    assert unknown.exit_code == 2 and "no user 'carol'" in unknown.output and "Traceback" not in unknown.output
    bad = runner.invoke(cli, ["-m", str(manifests), "--state-dir", str(tmp_path / "state"), "web", "--listen", "nowhere"])
    assert bad.exit_code == 2 and "--listen" in bad.output
    remote = runner.invoke(cli, ["-m", str(manifests), "--state-dir", str(tmp_path / "state"), "web", "--listen", "0.0.0.0:9400"])
    assert remote.exit_code == 1 and "web.allow_remote" in remote.output


def test_a_page_that_reconnects_gets_the_events_it_missed_and_an_id_of_another_run_gets_them_all():
    from orchestrator.interfaces.web.board import Stream

    stream = Stream()
    first = stream.publish("progress", {"text": "market-data: stopping"})
    stream.publish("progress", {"text": "market-data: stopped"})
    stream.publish("result", {"result": "ok"})
    assert [e.data for e in stream.since(stream.event_id(first))] == [{"text": "market-data: stopped"}, {"result": "ok"}]
    assert len(stream.since(f"{stream.boot - 1}-1")) == 3 and len(stream.since("garbage")) == 3


def test_the_grafana_overview_links_each_agent_to_its_card_when_the_control_room_is_configured(manifest_set):
    from orchestrator.operations import dashboards

    agent = {"agents/a.yaml": "name: a\ncommand: [sh]\n"}
    with_web = _load(manifest_set({**agent, "orchestrator.yaml": "web:\n  listen: 127.0.0.1:9444\n"}))
    links = [link["url"] for panel in dashboards.overview(with_web)["panels"] for link in panel.get("links") or []]
    assert "http://localhost:9444/#agent=a" in links
    without = _load(manifest_set({**agent, "orchestrator.yaml": "project: p\n"}))
    assert not any("#agent=" in link["url"] for panel in dashboards.overview(without)["panels"]
                   for link in panel.get("links") or [])
