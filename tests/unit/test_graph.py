"""Start order, stop order and waves follow dependencies; priority breaks ties inside a wave."""

from __future__ import annotations

import json

import pytest

from orchestrator.core.graph import FORMATS, Graph, to_dot, to_mermaid, to_text
from orchestrator.core.model import Agent, ManifestSet, Settings
from orchestrator.config.validators import find_cycles


def _set(*agents: tuple[str, list[str], int]) -> ManifestSet:
    built = tuple(Agent(name=n, command=("true",), depends_on=tuple(d), priority=p) for n, d, p in agents)
    return ManifestSet(settings=Settings(), agents=built, manifests_dir="/m", state_dir="/s")


TRADING = _set(
    ("market-data", [], 10), ("portfolio-tracker", ["market-data"], 10), ("strategy-engine", ["market-data"], 20),
    ("risk-manager", ["market-data", "portfolio-tracker"], 10),
    ("order-executor", ["strategy-engine", "risk-manager", "portfolio-tracker"], 10),
)


def test_waves_are_dependency_levels_and_priority_orders_agents_inside_a_wave():
    graph = Graph.of(TRADING)
    assert graph.waves == (("market-data",), ("portfolio-tracker", "strategy-engine"), ("risk-manager",), ("order-executor",))


def test_every_agent_starts_after_everything_it_depends_on_and_stops_before_it():
    graph = Graph.of(TRADING)
    start = graph.start_order
    stop = graph.stop_order
    for agent in TRADING.agents:
        for dep in agent.depends_on:
            assert start.index(dep) < start.index(agent.name)
            assert stop.index(agent.name) < stop.index(dep)
    assert stop == tuple(reversed(start))


def test_a_lower_priority_number_starts_first_and_names_break_equal_priorities():
    graph = Graph.of(_set(("b", [], 5), ("a", [], 5), ("c", [], 1)))
    assert graph.waves == (("c", "a", "b"),)


def test_dependents_and_dependencies_are_transitive():
    graph = Graph.of(TRADING)
    assert graph.dependents("market-data") == ("portfolio-tracker", "strategy-engine", "risk-manager", "order-executor")
    assert graph.dependents("risk-manager") == ("order-executor",)
    assert graph.dependencies("order-executor") == ("market-data", "portfolio-tracker", "strategy-engine", "risk-manager")
    assert graph.wave_of("risk-manager") == 2


def test_every_cycle_is_found_whole_and_starts_at_its_first_agent_alphabetically():
    cycles = find_cycles({"a": ["b"], "b": ["c"], "c": ["a"], "x": ["x"], "p": ["q"], "q": ["p"], "ok": []})
    assert sorted(cycles) == [["a", "b", "c", "a"], ["p", "q", "p"], ["x", "x"]]


def test_no_cycle_is_reported_for_a_diamond():
    assert find_cycles({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}) == []


def test_text_output_lists_waves_and_stop_order():
    text = to_text(Graph.of(TRADING))
    assert "wave 4\n  order-executor" in text
    assert text.strip().endswith("Stop order: order-executor, risk-manager, strategy-engine, portfolio-tracker, market-data")


def test_dot_and_mermaid_draw_an_edge_from_each_dependency_to_its_dependent():
    graph = Graph.of(TRADING)
    dot = to_dot(graph)
    assert '"market-data" -> "strategy-engine";' in dot and dot.startswith("digraph")
    mermaid = to_mermaid(graph)
    ids = {line.split("[")[0].strip(): line.split('"')[1] for line in mermaid.splitlines() if '["' in line and "subgraph" not in line}
    edges = {(ids[a], ids[b]) for a, _, b in (line.split() for line in mermaid.splitlines() if "-->" in line)}
    assert edges == {(d, a.name) for a in TRADING.agents for d in a.depends_on}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_renders_the_same_graph_twice_identically(fmt):
    assert FORMATS[fmt](Graph.of(TRADING)) == FORMATS[fmt](Graph.of(TRADING))
    if fmt == "json":
        assert json.loads(FORMATS[fmt](Graph.of(TRADING)))["waves"][0] == ["market-data"]
