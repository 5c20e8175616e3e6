"""Stable entry point of orchestrator's supervisord extension: `orchestrator.wakeup:make_interface`.

Every rendered supervisord.conf names this factory in its `[rpcinterface:orchestrator]`
section, and a supervisord restarted from an older version's `current/` after an
upgrade loads it again: this path never moves (tests/unit/test_entry_points.py
pins it). The extension itself lives in `orchestrator.supervisord.extension`.
"""

from orchestrator.supervisord.extension import make_interface

__all__ = ["make_interface"]
