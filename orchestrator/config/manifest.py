"""Loading a manifest set: files, `extends`, environment overlays, templating, checking, the model.

Owned here: the loader pipeline, in this order (each step collects its
problems and the next still runs, so one run reports everything):

    orchestrator.yaml (+ env/NAME.yaml `settings`)  -> Settings
    agents/*.yaml, each merged over:
        settings.defaults  <  templates/ (extends chain, base first)  <  the agent  <  env/NAME.yaml `agents.NAME`
    -> Jinja templating of every string value -> typed check (`schema`) -> `validators` -> ManifestSet

The merge rule: mappings merge key by key, recursively; anything else (lists,
strings, numbers) is replaced whole by the more specific layer; a key set to
null in a more specific layer removes the inherited value (the field's
default applies). One exception keeps templates useful: a layer that sets
`restart.policy` drops the inherited `restart` fields the new policy does not
use; fields it sets itself are still checked.

Templating: every string may use Jinja with `name`, `vars` (the agent's merged
vars, templated first; a var may refer to other vars as they are written), `agent` (the merged fields as written),
`python` (the interpreter running orchestrator), `project_dir`,
`manifests_dir`, `state_dir` and `env(NAME[, DEFAULT])` for environment
variables. An undefined name is an error, never an empty string.

The project root: `project_dir` is the manifests directory's parent, and the
default state directory is found from the manifests directory, except in a
stored copy of a manifest set (history's `manifests/` of a version), which
holds a small origin file (`model.ORIGIN_FILE`, written by history) naming the
manifests directory it was copied from and its project root: the copy loads
as that set did (same `project_dir`, `manifests_dir`, state directory, hence
the same rendered configuration). Both are derived here once and carried by
the `ManifestSet`.

Called by `cli` and, later, by apply and history; `load` either returns a
whole `ManifestSet` or raises one `ManifestError` with every diagnostic.
"""

from __future__ import annotations

from types import MappingProxyType

import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import TemplateError
from jinja2.sandbox import SandboxedEnvironment

from orchestrator.core import model
from orchestrator.core.errors import Diagnostic, Location, ManifestError
from orchestrator.config.schema import AGENT, ENV_OVERLAY, POLICY_FIELDS, SETTINGS
from orchestrator.config.spec import FAILED, INVALID, Checker, choices_hint, describe, suggest
from orchestrator.config.validators import Context, Draft, split_command, validate_agents, validate_settings
from orchestrator.config.yamltree import Node, load_file

SETTINGS_FILE = "orchestrator.yaml"
AGENTS_DIR = "agents"
TEMPLATES_DIR = "templates"
ENV_DIR = "env"
_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class LoadOptions:
    """What to load and the machine facts validation may consult (seams for tests)."""

    manifests_dir: str
    env: str | None = None
    state_dir: str | None = None
    python: str = sys.executable
    environ: Mapping[str, str] | None = None
    check_commands: bool = True
    cpu_count: int | None = None


def load(options: LoadOptions) -> model.ManifestSet:
    """The valid manifest set in `options.manifests_dir`, or a ManifestError with every problem."""
    return _Loader(options).load()


def merge(base: Node | None, over: Node) -> Node:
    """`over` merged onto `base` by the module's merge rule."""
    if base is None:
        return over
    if isinstance(base.value, dict) and isinstance(over.value, dict):
        out = dict(base.value)
        for key, item in over.value.items():
            if item.value is None and key in out:
                del out[key]
            else:
                out[key] = merge(out.get(key), item)
        return Node(out, over.loc, over.key_loc)
    return over


class _EnvMissing(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass
class _Loader:
    options: LoadOptions
    checker: Checker = field(default_factory=Checker)
    files: dict[str, Node | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = os.path.abspath(self.options.manifests_dir)
        self.origin = self.root                      # replaced by a stored copy's origin (see read_origin)
        self.project_dir = os.path.dirname(self.root)
        self.environ = dict(os.environ if self.options.environ is None else self.options.environ)
        self.jinja = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
        self.compiled: dict[str, Any] = {}
        self.state_dir = ""

    # -- files -------------------------------------------------------------

    def error(self, loc: Location, key: str, message: str) -> None:
        self.checker.error(loc, key, message)

    def read(self, path: str) -> Node | None:
        """The tree of a YAML file (each file read once), or None after reporting why not."""
        if path not in self.files:
            result = load_file(path)
            self.checker.diagnostics.extend(result.diagnostics)
            root = result.root
            if root is not None and not isinstance(root.value, dict):
                self.error(root.loc, "", f"got {describe(root.value)} (expected a mapping of fields)")
                root = None
            if result.diagnostics and any(d.severity == "error" for d in result.diagnostics):
                root = None
            self.files[path] = root
        return self.files[path]

    def find(self, directory: str, name: str) -> str | None:
        for suffix in _SUFFIXES:
            path = os.path.join(self.root, directory, name + suffix)
            if os.path.isfile(path):
                return path
        return None

    def listing(self, directory: str) -> list[str]:
        """The YAML files in `directory` of the manifests, sorted; hidden files are skipped.

        A directory that exists but cannot be listed is an error naming it, never an empty set:
        a set read as empty would plan the removal of every agent."""
        path = os.path.join(self.root, directory) if directory else self.root
        try:
            entries = os.listdir(path)
        except FileNotFoundError:
            return []
        except OSError as exc:
            self.error(Location(path), "", f"cannot list this directory: {exc.strerror} "
                       "(expected a directory orchestrator's user may read)")
            return []
        return sorted(os.path.join(path, e) for e in entries if not e.startswith(".") and e.endswith(_SUFFIXES))

    def available(self, directory: str) -> list[str]:
        return sorted({os.path.splitext(os.path.basename(p))[0] for p in self.listing(directory)})

    # -- the pipeline ------------------------------------------------------

    def load(self) -> model.ManifestSet:
        if not os.path.isdir(self.root):
            raise ManifestError([Diagnostic(Location(self.root), "", "manifests directory not found (expected a directory "
                                            "holding orchestrator.yaml and agents/*.yaml; choose it with -m/--manifests "
                                            "or $ORCHESTRATOR_MANIFESTS)")])
        self.listing("")
        self.read_origin()
        if self.checker.diagnostics:  # the manifests directory cannot be listed, or its origin file is unusable
            raise ManifestError(self.checker.diagnostics)
        overlay = self.load_overlay()
        settings_node, settings = self.load_settings(overlay)
        defaults = self.defaults_layer(settings_node)
        agent_overlays: dict[str, Node] = {}
        agents_node = overlay.get("agents") if overlay is not None else None
        if agents_node is not None and isinstance(agents_node.value, dict):
            # an overlay that is not a mapping was reported by ENV_OVERLAY's check
            agent_overlays = {k: v for k, v in agents_node.value.items() if isinstance(v.value, dict)}
        before = len(self.checker.diagnostics)
        paths = self.listing(AGENTS_DIR)
        if not paths and len(self.checker.diagnostics) == before:  # (not when agents/ could not be listed)
            self.checker.warning(Location(os.path.join(self.root, AGENTS_DIR)), "", "no agent manifests (expected agents/NAME.yaml files)")
        drafts = [draft for path in paths if (draft := self.load_agent(path, defaults, agent_overlays)) is not None]
        names = sorted({d.name for d in drafts if d.name})
        for name, node in agent_overlays.items():
            if name not in names:
                hint = choices_hint(name, names, label="known agents", none="there are no agents")
                self.error(node.where, f"agents.{name}", f"the overlay names an unknown agent ({hint})")
        unreadable = frozenset(os.path.splitext(os.path.basename(p))[0] for p in paths if self.files.get(p) is None)
        context = Context(project_dir=self.project_dir, environ=self.environ, check_commands=self.options.check_commands,
                          unreadable=unreadable, settings=settings, manifests_dir=self.root)
        if self.options.cpu_count is not None:
            context.cpu_count = self.options.cpu_count
        self.checker.diagnostics.extend(validate_agents(drafts, context))
        diagnostics = self.checker.diagnostics
        if any(d.severity == "error" for d in diagnostics):
            raise ManifestError(diagnostics)
        agents = sorted((self.build(d) for d in drafts), key=lambda a: a.name)
        warnings = tuple(d for d in ManifestError(diagnostics).diagnostics if d.severity == "warning")
        return model.ManifestSet(settings=settings, agents=tuple(agents), manifests_dir=self.root,
                                 state_dir=self.state_dir, env=self.options.env, warnings=warnings,
                                 origin_dir=self.origin, project_dir=self.project_dir)

    def read_origin(self) -> None:
        """A stored copy's origin: the manifests directory and project root it loads as (model.ORIGIN_FILE).

        history owns the file (it writes it into every version's copy of the manifests); the loader
        only reads it. Absent, the set is its own origin and the project root is its parent directory."""
        path = os.path.join(self.root, model.ORIGIN_FILE)
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.loads(handle.read(65536))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self.error(Location(path), "", f"cannot read the origin of this stored manifest set: {exc} "
                       "(expected the JSON object history writes, or no such file)")
            return
        origin = data.get("manifests_dir") if isinstance(data, dict) else None
        project = data.get("project_dir") if isinstance(data, dict) else None
        if not (isinstance(origin, str) and isinstance(project, str) and os.path.isabs(origin) and os.path.isabs(project)):
            self.error(Location(path), "", "the origin of this stored manifest set is not understood (expected "
                       '{"manifests_dir": ABSOLUTE PATH, "project_dir": ABSOLUTE PATH}, as history writes it)')
            return
        self.origin, self.project_dir = os.path.normpath(origin), os.path.normpath(project)

    def load_overlay(self) -> Node | None:
        name = self.options.env
        if not name:
            return None
        path = self.find(ENV_DIR, name)
        if path is None:
            hint = choices_hint(name, self.available(ENV_DIR), none=f"none exist in {ENV_DIR}/")
            raise ManifestError([Diagnostic(Location(os.path.join(self.root, ENV_DIR, name + ".yaml")), "--env",
                                            f"unknown environment '{name}' ({hint})")])
        node = self.read(path)
        if node is not None:
            ENV_OVERLAY.check(node, "", self.checker)
        return node

    def load_settings(self, overlay: Node | None) -> tuple[Node, model.Settings]:
        path = os.path.join(self.root, SETTINGS_FILE)
        node = self.read(path) if os.path.exists(path) else None
        if node is None:
            node = Node({}, Location(path, 1, 1))
        over = overlay.get("settings") if overlay is not None else None
        if over is not None and isinstance(over.value, dict):
            node = merge(node, over)
        node = self.render(node, "", self.base_context(), skip=("defaults",))
        values = SETTINGS.check_fields(node, "", self.checker)
        if values is INVALID:
            values = {}
        valid = {k: v for k, v in values.items() if v is not INVALID}
        settings = model.Settings(**valid)  # the defaults stand in for invalid fields; load() raises anyway
        state_dir = self.options.state_dir or os.path.join(self.origin, settings.state_dir)
        self.state_dir = os.path.normpath(os.path.abspath(state_dir))
        socket = os.path.join(self.state_dir, settings.supervisord.socket)
        self.checker.diagnostics.extend(validate_settings(node, valid, socket=socket, state=self.state_dir))
        return node, settings

    def defaults_layer(self, settings: Node) -> Node | None:
        defaults = settings.get("defaults")
        if defaults is None or defaults.value is None:
            return None
        if not isinstance(defaults.value, dict):
            self.error(defaults.loc, "defaults", f"got {describe(defaults.value)} (expected a mapping of agent fields)")
            return None
        for key in ("name", "extends"):
            if key in defaults.value:
                self.error(defaults.value[key].where, f"defaults.{key}", "cannot be a default (expected it in each agent's own manifest)")
        return Node({k: v for k, v in defaults.value.items() if k not in ("name", "extends")}, defaults.loc, defaults.key_loc)

    def extends_chain(self, node: Node) -> list[Node]:
        """The templates `node` extends, base-most first."""
        chain: list[Node] = []
        names: list[str] = []
        current = node
        while True:
            ext = current.get("extends")
            if ext is None or not isinstance(ext.value, str):
                return chain  # absent, or a wrong type the typed check reports
            name = ext.value
            if name in names:
                loop = " -> ".join(names + [name])
                self.error(ext.loc, "extends", f"templates extend each other in a loop: {loop} (expected a chain that ends)")
                return chain
            path = self.find(TEMPLATES_DIR, name)
            if path is None:
                hint = choices_hint(name, self.available(TEMPLATES_DIR), none=f"none exist in {TEMPLATES_DIR}/")
                self.error(ext.loc, "extends", f"unknown template '{name}' ({hint})")
                return chain
            template = self.read(path)
            if template is None:
                return chain
            if "name" in template.value:
                self.error(template.value["name"].where, "name", "a template is named by its file (expected no 'name' key in templates/)")
            names.append(name)
            chain.insert(0, template)
            current = template

    def load_agent(self, path: str, defaults: Node | None, overlays: Mapping[str, Node]) -> Draft | None:
        node = self.read(path)
        if node is None:
            return None
        layers = ([defaults] if defaults is not None else []) + self.extends_chain(node) + [node]
        name = node.get("name")
        if name is not None and isinstance(name.value, str) and name.value in overlays:
            layers.append(overlays[name.value])
        merged: Node | None = None
        for layer in layers:
            merged = merge(merged, layer)
        assert merged is not None  # layers holds at least the agent itself
        merged = self.drop_inherited_restart_fields(merged, [layer.loc.file for layer in layers])
        merged = self.render_agent(merged)
        values = AGENT.check_fields(merged, "", self.checker)
        if values is INVALID:
            return Draft(path, merged)
        command = values["command"]
        if isinstance(command, str):
            try:
                values["command"] = split_command(command) or INVALID
            except ValueError as exc:
                values["command"] = INVALID
                self.error(merged.value["command"].loc, "command", f"cannot split {describe(command)}: {exc} (expected shell-like words)")
            else:
                if values["command"] is INVALID:
                    self.error(merged.value["command"].loc, "command", "is empty (expected a program and its arguments)")
        return Draft(path, merged, values)

    @staticmethod
    def drop_inherited_restart_fields(node: Node, files: list[str]) -> Node:
        restart = node.get("restart")
        policy = restart.get("policy") if restart is not None else None
        if restart is None or policy is None or not isinstance(policy.value, str) or policy.value not in POLICY_FIELDS \
                or not isinstance(restart.value, dict):
            return node
        rank = {file: index for index, file in enumerate(files)}
        allowed = POLICY_FIELDS[policy.value]
        policy_rank = rank.get(policy.loc.file, 0)
        kept = {k: v for k, v in restart.value.items()
                if k == "policy" or k in allowed or rank.get(v.where.file, policy_rank) >= policy_rank}
        return Node({**node.value, "restart": restart.with_value(kept)}, node.loc, node.key_loc)

    # -- templating --------------------------------------------------------

    def base_context(self) -> dict[str, Any]:
        def env(name: str, default: Any = FAILED) -> Any:
            if name in self.environ:
                return self.environ[name]
            if default is FAILED:
                raise _EnvMissing(name)
            return default

        return {"env": env, "python": self.options.python, "project_dir": self.project_dir,
                "manifests_dir": self.origin, "state_dir": self.state_dir}

    def render_agent(self, node: Node) -> Node:
        context = self.base_context()
        name = node.get("name")
        context["name"] = name.value if name is not None else ""
        context["agent"] = node.plain()
        variables = node.get("vars")
        if variables is not None:
            # vars may use one another as written (not rendered): {{ vars.ports[name] }}
            context["vars"] = variables.plain() if isinstance(variables.value, dict) else {}
            variables = self.render(variables, "vars", context)
            node = Node({**node.value, "vars": variables}, node.loc, node.key_loc)
            context["vars"] = variables.plain() if isinstance(variables.value, dict) else {}
        else:
            context["vars"] = {}
        return self.render(node, "", context, skip=("vars", "name"))

    def render(self, node: Node, path: str, context: dict[str, Any], skip: tuple[str, ...] = ()) -> Node:
        value = node.value
        if isinstance(value, dict):
            out = {k: v if k in skip else self.render(v, f"{path}.{k}" if path else k, context) for k, v in value.items()}
            return node.with_value(out)
        if isinstance(value, list):
            return node.with_value([self.render(v, f"{path}[{i}]", context) for i, v in enumerate(value)])
        if isinstance(value, str) and ("{{" in value or "{%" in value):
            return self.render_string(node, path, context)
        return node

    def render_string(self, node: Node, path: str, context: dict[str, Any]) -> Node:
        source = node.value
        try:
            template = self.compiled.get(source)
            if template is None:
                template = self.compiled[source] = self.jinja.from_string(source)
            return node.with_value(template.render(context), templated=True)
        except TemplateSyntaxError as exc:
            message = f"template syntax error: {exc.message}"
        except UndefinedError as exc:
            variables = sorted(context.get("vars") or {})
            missing = re.search(r"attribute '(\w+)'|'(\w+)' is undefined", exc.message or "")
            hint = ""
            if missing:
                word = missing.group(1) or missing.group(2)
                near = suggest(word, variables if missing.group(1) else [k for k in context if k != "vars"] + ["vars"])
                hint = f"did you mean '{near}'? " if near else ""
            message = (f"undefined in template: {exc.message} ({hint}vars defined here: {', '.join(variables) or 'none'}; "
                       "other names: name, agent, python, env(NAME, DEFAULT), project_dir, manifests_dir, state_dir)")
        except _EnvMissing as exc:
            message = f"environment variable {exc.name} is not set (set it, or give a default: env('{exc.name}', 'value'))"
        except (TemplateError, ArithmeticError, TypeError, ValueError, AttributeError) as exc:
            message = f"template error: {exc} (expected a template that renders to a value)"
        except (RecursionError, MemoryError, SyntaxError):
            # jinja's parser recurses per nested bracket ("{{ {{{{{{..."), and Python refuses to compile the code it
            # generates for 200 chained attributes ("too many nested parentheses")
            message = "template nested too deeply to read (expected a simple expression such as {{ vars.port }})"
        self.error(node.loc, path, message)
        return node.with_value(FAILED)

    # -- the model ---------------------------------------------------------

    @staticmethod
    def build(draft: Draft) -> model.Agent:
        assert draft.valid  # load() builds only when no error was found
        values = dict(draft.values)
        env = values.get("env", model.EMPTY)
        # env holds plain values and secrets alike in a manifest; the model keeps the secrets apart, so nothing that
        # writes an agent's environment can write a secret by mistake
        values["env"] = MappingProxyType({k: v for k, v in env.items() if isinstance(v, str)})
        values["secrets"] = MappingProxyType({k: v for k, v in env.items() if isinstance(v, model.Secret)})
        return model.Agent(**values, source=draft.name_loc)
