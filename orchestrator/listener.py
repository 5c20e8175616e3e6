"""Stable entry point of orchestrator's event listener: `python -m orchestrator.listener`.

Every rendered supervisord.conf names this module in its listener command, and a
supervisord restarted from an older version's `current/` after an upgrade runs
that command again: this path never moves (tests/unit/test_entry_points.py pins
it). The listener itself lives in `orchestrator.daemons.listener`.
"""

from orchestrator.daemons.listener import main

if __name__ == "__main__":
    main()
