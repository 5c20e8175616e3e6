"""A campaign of hostile edits: more than 10,000 generated inputs, each answered within its deadline with
a located error or success, never an exception, a hang or a crash.

Two layers, both in-process: the YAML reader (`yamltree.load_text`, where alias bombs, deep nesting and
odd characters meet ruamel's parser) gets 10,000 mutated manifests; the whole loader (`manifest.load`:
merge, extends, templating, validation) gets 2,000 mutated agent files in a small set. Mutations are
edits a text editor makes: a hostile token inserted anywhere, a span deleted or repeated, a character
replaced. The CLI campaign in test_validate_property adds a few hundred more through `validate`.
"""

from __future__ import annotations

import datetime
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.core.errors import ManifestError
from orchestrator.config.manifest import LoadOptions, load
from orchestrator.config.yamltree import load_text
from tests.conftest import DEFAULT_MANIFESTS

# Generous, because CI machines are slow and busy: a hang is what this catches, not a slow input. The examples
# are derandomized (a fixed seed), so every run tries the same 12,000 inputs and a new finding is never a
# surprise in CI; change the seed on purpose to explore further.
DEADLINE = datetime.timedelta(seconds=30)   # 14 s seen once with both cores loaded fourfold
SOURCES = sorted(p for p in (DEFAULT_MANIFESTS / "agents").glob("*.yaml")) + [DEFAULT_MANIFESTS / "templates" / "python-agent.yaml"]
TEXTS = [p.read_text() for p in SOURCES]
TOKENS = ["&a ", "*a", "<<: *a\n", "[", "]", "{", "}", ": ", "\t", "---\n", "- ", "'", '"', "!!python/object/apply:os.system ",
          "%YAML 1.1\n", "? ", "|\n", ">-\n", "\x00", "\ufeff", "#", "{{ ", " }}", "{% for x in range(10**9) %}x{% endfor %}",
          "\\", "&b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n", "{{ vars" + ".p" * 300 + " }}", "\n  ", "~", "1e999", "-.inf", "0x", "é", "\r", "\u2028"]


@st.composite
def edited(draw) -> str:
    text = draw(st.sampled_from(TEXTS))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "insert", "delete", "repeat", "replace"]))
        if action == "insert":
            text = text[:at] + draw(st.sampled_from(TOKENS)) + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 40)):]
        elif action == "repeat":
            span = text[at:at + draw(st.integers(1, 30))]
            text = text[:at] + span * draw(st.integers(2, 200)) + text[at:]
        else:
            text = text[:at] + draw(st.characters(codec="utf-8")) + text[at + 1:]
    return text


@settings(max_examples=10_000, deadline=DEADLINE, suppress_health_check=list(HealthCheck), derandomize=True)
@given(edited())
def test_the_yaml_reader_answers_every_edit_with_a_tree_or_located_errors(text):
    result = load_text(text, "agents/x.yaml")
    assert result.root is not None or result.diagnostics
    for diagnostic in result.diagnostics:
        assert diagnostic.location.file == "agents/x.yaml" and diagnostic.location.line >= 1, diagnostic


@settings(max_examples=2_000, deadline=DEADLINE, suppress_health_check=list(HealthCheck), derandomize=True)
@given(edited())
def test_the_loader_answers_every_edited_agent_with_success_or_located_errors(text):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "manifests"
        (root / "agents").mkdir(parents=True)
        shutil.copy(DEFAULT_MANIFESTS / "orchestrator.yaml", root / "orchestrator.yaml")
        shutil.copytree(DEFAULT_MANIFESTS / "templates", root / "templates")
        (root / "agents" / "x.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load(LoadOptions(str(root), check_commands=False))
        except ManifestError as exc:
            assert exc.diagnostics
            for diagnostic in exc.diagnostics:
                assert diagnostic.location.file.startswith(str(root)), diagnostic
