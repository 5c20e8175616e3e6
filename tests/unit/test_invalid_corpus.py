"""The corpus of invalid manifest sets: every diagnostic `orchestrator validate` prints, pinned line by line.

Each directory of tests/fixtures/invalid/ (`NN-short-slug/`) is a complete
manifest set (`orchestrator.yaml` optional, `agents/*.yaml`, and `templates/`
or `env/` where the case needs them) that is valid except for deliberate
problems, one problem family per set, plus a few sets that combine errors in
several files to prove that one run collects every error, sorted by file and
line. Its `expected.txt` holds exactly the lines `validate` must print on
stderr, without the final `invalid manifests: ...` summary. When the case
needs command-line options (an environment overlay), the first line of
expected.txt is `# args: --env NAME`; the test passes them before `validate`.

Relative command paths resolve against the project directory, which for a
fixture set is its parent, tests/fixtures/invalid/ (see 27-command-not-executable).

To add a case:
1. make tests/fixtures/invalid/NN-short-slug/ (the next free NN) with the files
   of a small set (1 to 4 agents) that is valid except for what the case is
   about; commands must run anywhere: ["python3", "-c", "pass"] or
   ["sh", "-c", "sleep 1"]; no cpu_affinity above CPU 0, since the CPU count
   varies between machines;
2. run `cd tests/fixtures/invalid/NN-short-slug && orchestrator -m . validate`
   (with the case's args);
3. check every line by hand: the line and column (1-based) point at the
   offending token in that file, the key path is right, the message says what
   is wrong and what would be valid, every planted error is there and nothing
   else is;
4. write the lines to expected.txt. If a line is wrong, write the line the
   loader should print instead and add the case to KNOWN_LOADER_PROBLEMS below
   with the reason; remove it from there once the loader is fixed (the strict
   xfail fails as soon as the output matches).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.interfaces.cli import cli

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "invalid"
MIN_CASES = 25
SUMMARY = re.compile(r"invalid manifests: (\d+) errors?(?:, (\d+) warnings?)?$")
WARNING = re.compile(r"^\S+: warning: ")

# Cases whose expected.txt holds what the loader SHOULD print, where it prints
# something else today. The wording of a new message is a suggestion: what
# matters is the location, the key path and the fact the error is (or is not) there.
KNOWN_LOADER_PROBLEMS: dict[str, str] = {}


def _cases() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.is_dir() and not p.name.startswith(".")) if CORPUS.is_dir() else []


def _params(*, known_problems: bool) -> list[object]:
    params = []
    for case in _cases():
        marks = []
        if known_problems and case.name in KNOWN_LOADER_PROBLEMS:
            marks.append(pytest.mark.xfail(reason=KNOWN_LOADER_PROBLEMS[case.name], raises=AssertionError, strict=True))
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


def _expected(case: Path) -> tuple[list[str], list[str]]:
    """The case's extra arguments and its expected diagnostic lines."""
    lines = (case / "expected.txt").read_text(encoding="utf-8").splitlines()
    args: list[str] = []
    if lines and lines[0].startswith("# args:"):
        args = shlex.split(lines[0][len("# args:"):])
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines.pop()
    return args, lines


@pytest.fixture
def run_in(monkeypatch: pytest.MonkeyPatch):
    """Runs the CLI with the working directory set to a case (paths print relative to it)."""
    for name in ("ORCHESTRATOR_MANIFESTS", "ORCHESTRATOR_ENV", "ORCHESTRATOR_STATE_DIR", "NO_SUCH_VARIABLE_XYZ"):
        monkeypatch.delenv(name, raising=False)

    def run(case: Path, *args: str):
        monkeypatch.chdir(case)
        return CliRunner().invoke(cli, list(args))

    return run


ROOTED = " will run as root ("


def test_corpus_is_large_enough() -> None:
    cases = _cases()
    assert len(cases) >= MIN_CASES, f"{CORPUS} holds {len(cases)} cases (expected at least {MIN_CASES})"
    for case in cases:
        assert re.fullmatch(r"\d\d-[a-z0-9-]+", case.name), f"{case.name}: expected NN-short-slug"
        assert (case / "expected.txt").is_file(), f"{case.name}: expected.txt is missing"


@pytest.mark.parametrize("case", _params(known_problems=True))
def test_validate_prints_expected_diagnostics(case: Path, run_in) -> None:
    args, expected = _expected(case)
    assert expected, f"{case.name}: expected.txt lists no diagnostic"
    result = run_in(case, "-m", ".", *args, "validate")
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{case.name}: crashed: {result.exception!r}\n{result.stderr}")
    assert result.exit_code == 1, f"{case.name}: exit code {result.exit_code}\n{result.stderr}"
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr

    lines = result.stderr.splitlines()
    assert lines, f"{case.name}: nothing on stderr"
    summary = SUMMARY.match(lines[-1])
    assert summary, f"{case.name}: the last line is not the summary: {lines[-1]!r}"
    # the warning about agents that will run as root depends on who runs the suite (test_isolation holds it)
    rooted = [line for line in lines[:-1] if ROOTED in line]
    diagnostics = [line for line in lines[:-1] if ROOTED not in line]
    assert diagnostics == expected

    warnings = sum(1 for line in diagnostics if WARNING.match(line))
    assert int(summary.group(1)) == len(diagnostics) - warnings
    assert int(summary.group(2) or 0) == warnings + len(rooted)


@pytest.mark.parametrize("case", _params(known_problems=False))
def test_validate_json_output(case: Path, run_in) -> None:
    args, _ = _expected(case)
    result = run_in(case, "-m", ".", *args, "validate", "--output", "json")
    assert result.exception is None or isinstance(result.exception, SystemExit), f"{case.name}: crashed: {result.exception!r}"
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert report["diagnostics"], f"{case.name}: no diagnostics in the JSON report"
    for diagnostic in report["diagnostics"]:
        assert isinstance(diagnostic["file"], str) and diagnostic["file"]
        assert isinstance(diagnostic["line"], int) and diagnostic["line"] >= 0
        assert isinstance(diagnostic["col"], int) and diagnostic["col"] >= 0
        assert isinstance(diagnostic["message"], str) and diagnostic["message"]
    assert any(d["severity"] == "error" for d in report["diagnostics"])
