"""Stable entry point of orchestrator's metrics exporter: `python -m orchestrator.exporter`.

Every rendered supervisord.conf with the exporter enabled names this module in
its `_exporter` program, and a supervisord restarted from an older version's
`current/` runs that command again: this path never moves
(tests/unit/test_entry_points.py pins it). The exporter itself lives in
`orchestrator.daemons.exporter`.
"""

from orchestrator.daemons.exporter import main

if __name__ == "__main__":
    main()
