"""The root of orchestrator's exception tree, alone: what the launcher's modules need of `errors`.

Owned here: `OrchestratorError` itself. `core.errors` draws the whole tree and
re-exports it; every module imports it from there, but those loaded by the
launcher at every agent start (host.cgroups), which must not load what
`errors`' diagnostics need (dataclasses, typing).
"""


class OrchestratorError(Exception):
    """Root of every error orchestrator raises on purpose."""

    exit_code = 1
