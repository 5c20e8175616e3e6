"""Stable entry point of orchestrator's launcher: `python -m orchestrator.launch LAUNCH_FILE`.

Every rendered program section names this module in its command, and a
supervisord restarted from an older version's `current/` runs that command
again: this path never moves (tests/unit/test_entry_points.py pins it). The
launcher itself lives in `orchestrator.host.launcher`.
"""

from orchestrator.host.launcher import main

if __name__ == "__main__":
    main()
