"""Stable entry point of orchestrator's launcher: `python -I -S .../orchestrator/launch.py LAUNCH_FILE`.

Every rendered program section names this file in its command, and a
supervisord restarted from an older version's `current/` runs that command
again: this path never moves (tests/unit/test_entry_points.py pins it). It is
run as a file, with `-I -S`: no site-packages, no environment variables of
Python's, no `.pth` file run, so an agent's start does not pay for them (the
launcher needs the standard library and this package alone, whose parent
directory it puts on the path itself). `python -m orchestrator.launch` works
too. The launcher itself lives in `orchestrator.host.launcher`.
"""

import os
import sys

if __name__ == "__main__" and not __package__:   # run as a file: this package's parent is not on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestrator.host.launcher import main  # noqa: E402

if __name__ == "__main__":
    main()
