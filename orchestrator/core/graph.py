"""The dependency graph of a manifest set: start order, stop order, and the waves that start in parallel.

Owned here: ordering. A wave is a dependency level: every agent in wave N
depends only on agents of earlier waves, so a wave's agents may start
together once the previous wave is ready. Inside a wave, `priority` (then the
name) orders agents. Stop order is start order reversed: dependents first.
Also the graph's text, DOT and Mermaid forms for `orchestrator graph`.

Called by `cli` and, later, by apply and the control commands. Built with
graphlib on a valid `ManifestSet` (cycles were rejected by `validators`).
"""

from __future__ import annotations

import graphlib
import json
from dataclasses import dataclass
from collections.abc import Iterable, Mapping

from orchestrator.core.model import Agent, ManifestSet


@dataclass(frozen=True)
class Graph:
    waves: tuple[tuple[str, ...], ...]
    depends_on: Mapping[str, tuple[str, ...]]

    @classmethod
    def of(cls, manifests: ManifestSet) -> Graph:
        return cls.of_agents({a.name: a for a in manifests.agents})

    @classmethod
    def of_agents(cls, agents: Mapping[str, Agent]) -> Graph:
        return cls.of_edges({n: a.depends_on for n, a in agents.items()}, {n: a.priority for n, a in agents.items()})

    @classmethod
    def of_edges(cls, depends_on: Mapping[str, Iterable[str]], priority: Mapping[str, int] | None = None) -> Graph:
        """The graph of `depends_on` (name -> dependencies); edges to names not in it are ignored."""
        deps = {n: tuple(d for d in ds if d in depends_on) for n, ds in depends_on.items()}
        priority = priority or {}
        sorter = graphlib.TopologicalSorter(deps)
        sorter.prepare()
        waves = []
        while sorter.is_active():
            ready = sorted(sorter.get_ready(), key=lambda n: (priority.get(n, 0), n))
            waves.append(tuple(ready))
            sorter.done(*ready)
        return cls(waves=tuple(waves), depends_on=deps)

    @property
    def start_order(self) -> tuple[str, ...]:
        return tuple(name for wave in self.waves for name in wave)

    @property
    def stop_order(self) -> tuple[str, ...]:
        return tuple(reversed(self.start_order))

    def wave_of(self, name: str) -> int:
        """The 0-based wave `name` starts in."""
        for index, wave in enumerate(self.waves):
            if name in wave:
                return index
        raise KeyError(name)

    def dependents(self, name: str) -> tuple[str, ...]:
        """Agents that depend on `name`, directly or not, in start order."""
        found = {name}
        for agent in self.start_order:
            if any(dep in found for dep in self.depends_on[agent]):
                found.add(agent)
        return tuple(a for a in self.start_order if a in found and a != name)

    def dependencies(self, name: str) -> tuple[str, ...]:
        """Agents `name` depends on, directly or not, in start order."""
        found: set[str] = set()
        pending = list(self.depends_on[name])
        while pending:
            dep = pending.pop()
            if dep not in found:
                found.add(dep)
                pending.extend(self.depends_on[dep])
        return tuple(a for a in self.start_order if a in found)


def to_text(graph: Graph) -> str:
    lines = [f"Start order: {len(graph.waves)} wave{'s' if len(graph.waves) != 1 else ''}; "
             "the agents of one wave start in parallel."]
    width = max((len(n) for n in graph.start_order), default=0)
    for index, wave in enumerate(graph.waves, 1):
        lines.append(f"wave {index}")
        for name in wave:
            deps = graph.depends_on[name]
            after = f"  after {', '.join(deps)}" if deps else ""
            lines.append(f"  {name.ljust(width)}{after}".rstrip())
    lines.append("Stop order: " + ", ".join(graph.stop_order))
    return "\n".join(lines) + "\n"


def to_dot(graph: Graph) -> str:
    """Graphviz DOT: an edge runs from a dependency to the agent that needs it (start order)."""
    lines = ["digraph agents {", "  rankdir=LR;", "  node [shape=box];"]
    for index, wave in enumerate(graph.waves, 1):
        names = " ".join(json.dumps(n) for n in wave)
        lines.append(f"  subgraph wave_{index} {{ rank=same; {names}; }}")
    for name in graph.start_order:
        for dep in graph.depends_on[name]:
            lines.append(f"  {json.dumps(dep)} -> {json.dumps(name)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(graph: Graph) -> str:
    """Mermaid flowchart; node ids are generated, since '-' is not safe in Mermaid ids."""
    ids = {name: f"a{i}" for i, name in enumerate(graph.start_order)}
    lines = ["flowchart LR"]
    for index, wave in enumerate(graph.waves, 1):
        lines.append(f"  subgraph wave{index}[\"wave {index}\"]")
        lines.extend(f"    {ids[n]}[\"{n}\"]" for n in wave)
        lines.append("  end")
    for name in graph.start_order:
        for dep in graph.depends_on[name]:
            lines.append(f"  {ids[dep]} --> {ids[name]}")
    return "\n".join(lines) + "\n"


def to_json(graph: Graph) -> str:
    return json.dumps({"waves": [list(w) for w in graph.waves], "start_order": list(graph.start_order),
                       "stop_order": list(graph.stop_order),
                       "depends_on": {k: list(v) for k, v in sorted(graph.depends_on.items())}}, indent=2) + "\n"


FORMATS = {"text": to_text, "dot": to_dot, "mermaid": to_mermaid, "json": to_json}
