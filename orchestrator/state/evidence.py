"""What `orchestrator recommend` learns from: per agent, decaying histograms of memory peaks and CPU, kept across
restarts of the exporter in `STATE/evidence.json`.

Owned by the exporter's sampler, which alone adds to it (`observe`, `observe_cores`,
`limit_restart`) and saves it now and then (atomically: a reader sees the old file or
the new one); `orchestrator recommend` only reads. Bounded: one entry per agent of
the live version (`keep_only` drops the others) and one histogram per core, each a
fixed set of buckets (core.recommend.DecayingHistogram).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from orchestrator.core.recommend import DecayingHistogram, Evidence
from orchestrator.state.files import write_atomically

FILE = "evidence.json"
CORE_Q = 0.90   # how busy a core is, as the evidence gives it: the p90 of its samples


@dataclass
class _Agent:
    since: float
    memory_peaks: DecayingHistogram = field(default_factory=DecayingHistogram)
    cpu: DecayingHistogram = field(default_factory=DecayingHistogram)
    memory_limit_restarts: int = 0


class EvidenceStore:
    """The evidence of every agent and core; `evidence(name)` is what core.recommend.recommend takes."""

    def __init__(self) -> None:
        self.agents: dict[str, _Agent] = {}
        self.cores: dict[int, DecayingHistogram] = {}

    def observe(self, agent: str, t: float, *, memory_mb_peak: float | None, cpu_percent: float | None) -> None:
        entry = self.agents.get(agent)
        if entry is None:   # not setdefault: its default, two histograms, would be made at every sample of every agent
            entry = self.agents[agent] = _Agent(since=t)
        if memory_mb_peak is not None:
            entry.memory_peaks.add(memory_mb_peak, t)
        if cpu_percent is not None:
            entry.cpu.add(cpu_percent, t)

    def observe_cores(self, busy: Mapping[int, float], t: float) -> None:
        for core, percent in busy.items():
            self.cores.setdefault(core, DecayingHistogram()).add(percent, t)

    def limit_restart(self, agent: str, t: float) -> None:
        self.agents.setdefault(agent, _Agent(since=t)).memory_limit_restarts += 1

    def keep_only(self, agents: Iterable[str]) -> None:
        wanted = set(agents)
        self.agents = {name: entry for name, entry in self.agents.items() if name in wanted}

    def evidence(self, agent: str) -> Evidence | None:
        entry = self.agents.get(agent)
        if entry is None:
            return None
        cores = {core: value for core, histogram in self.cores.items() if (value := histogram.percentile(CORE_Q)) is not None}
        return Evidence(since=entry.since, memory_peaks=entry.memory_peaks, cpu=entry.cpu,
                        memory_limit_restarts=entry.memory_limit_restarts, cores_busy=MappingProxyType(cores))

    def to_plain(self) -> dict[str, Any]:
        return {"agents": {name: {"since": e.since, "memory_peaks": e.memory_peaks.to_plain(), "cpu": e.cpu.to_plain(),
                                  "memory_limit_restarts": e.memory_limit_restarts} for name, e in sorted(self.agents.items())},
                "cores": {str(core): histogram.to_plain() for core, histogram in sorted(self.cores.items())}}

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> EvidenceStore:
        store = cls()
        for name, item in dict(data.get("agents", {})).items():
            store.agents[name] = _Agent(since=float(item["since"]),
                                        memory_peaks=DecayingHistogram.from_plain(item["memory_peaks"]),
                                        cpu=DecayingHistogram.from_plain(item["cpu"]),
                                        memory_limit_restarts=int(item.get("memory_limit_restarts", 0)))
        for core, item in dict(data.get("cores", {})).items():
            store.cores[int(core)] = DecayingHistogram.from_plain(item)
        return store


def load(state_dir: str) -> EvidenceStore:
    """The evidence kept in `state_dir`; empty when there is none yet or it cannot be read (it is learnt again)."""
    try:
        with open(os.path.join(state_dir, FILE), encoding="utf-8") as handle:
            return EvidenceStore.from_plain(json.load(handle))
    except FileNotFoundError:
        return EvidenceStore()
    except (OSError, ValueError, KeyError, TypeError):
        return EvidenceStore()


def save(state_dir: str, store: EvidenceStore) -> None:
    write_atomically(os.path.join(state_dir, FILE), json.dumps(store.to_plain(), sort_keys=True))
