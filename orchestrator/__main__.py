"""`python -m orchestrator` runs the command line."""

from orchestrator.interfaces.cli import main

main()
