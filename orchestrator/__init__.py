"""orchestrator: a declarative supervisor for long-running agent processes.

Manifests (YAML) describe agents; `orchestrator apply` renders supervisord
configuration from them and drives a real supervisord to match.
"""

__version__ = "0.1.0"
