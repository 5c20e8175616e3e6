"""Hostile manifests: what any editor (or an attacker with write access to the manifests) can produce must
end `validate` quickly with a located error, never hang, exhaust memory or crash the interpreter.

Each case runs the real command in a subprocess with a deadline, so a hang or a crash of the C parser
is a failed test, not a hung suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ORCHESTRATOR = str(Path(sys.executable).parent / "orchestrator")
DEADLINE = 30.0



def _validate(manifests: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ORCHESTRATOR, "-m", str(manifests), "validate"], capture_output=True, text=True,
                          timeout=DEADLINE, stdin=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})


def _set(tmp_path: Path) -> Path:
    manifests = tmp_path / "manifests"
    (manifests / "agents").mkdir(parents=True)
    (manifests / "orchestrator.yaml").write_text("project: hostile\n")
    (manifests / "agents" / "ok.yaml").write_text("name: ok\ncommand: [sleep, '60']\n")
    return manifests


def _fails_cleanly(done: subprocess.CompletedProcess[str], where: str, what: str) -> None:
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert where in done.stderr and what in done.stderr, done.stderr


CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "hostile"
# what each file of the corpus must be told (regressions: the bombs hung, the deep nesting crashed the C
# parser with SIGSEGV, the huge number ended in an OverflowError, the templates in a RecursionError and a
# SyntaxError from compiling jinja's generated code)
EXPECTED = {
    "billion-laughs.yaml": "alias used again and again",
    "merge-bomb.yaml": "alias used again and again",
    "deep-brackets.yaml": "nested more than 64 levels deep",
    "deep-mappings.yaml": "nested more than 64 levels deep",
    "huge-number.yaml": "is not a duration",
    "not-utf8.yaml": "not UTF-8 text",
    "template-recursion.yaml": "template nested too deeply",
    "template-attribute-chain.yaml": "template nested too deeply",  # Python: "too many nested parentheses"
}


def test_the_corpus_is_covered():
    assert sorted(p.name for p in CORPUS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_hostile_manifest_of_the_corpus_is_refused_quickly_with_a_located_error(tmp_path, name):
    manifests = _set(tmp_path)
    shutil.copy(CORPUS / name, manifests / "agents" / "a.yaml")
    _fails_cleanly(_validate(manifests), "agents/a.yaml:", EXPECTED[name])


def test_a_fifo_among_the_agents_is_named_not_waited_on(tmp_path):
    """Regression: a FIFO in agents/ made validate wait forever for a writer."""
    manifests = _set(tmp_path)
    os.mkfifo(manifests / "agents" / "pipe.yaml")
    _fails_cleanly(_validate(manifests), "agents/pipe.yaml", "not a regular file (a FIFO)")


def test_a_link_to_a_device_is_named_not_read(tmp_path):
    """Regression: a link to /dev/zero ended validate with exit 70 MemoryError."""
    manifests = _set(tmp_path)
    (manifests / "agents" / "zero.yaml").symlink_to("/dev/zero")
    _fails_cleanly(_validate(manifests), "agents/zero.yaml", "not a regular file (a character device)")


def test_a_manifest_larger_than_the_limit_is_refused_with_its_size(tmp_path):
    manifests = _set(tmp_path)
    (manifests / "agents" / "big.yaml").write_text("name: big\ncommand: [x]\n# " + "x" * (2 << 20) + "\n")
    _fails_cleanly(_validate(manifests), "agents/big.yaml", "larger than the 1048576 a manifest may be")


@pytest.mark.parametrize("depth", [40, 60])
def test_ordinary_nesting_stays_valid(tmp_path, depth):
    manifests = _set(tmp_path)
    (manifests / "agents" / "a.yaml").write_text("name: a\ncommand: [sleep, '60']\nvars: {v: " + "[" * depth + "]" * depth + "}\n")
    done = _validate(manifests)
    assert done.returncode == 0, done.stderr


def _without_root_powers(command: list[str]) -> list[str]:
    """`command` run without the capabilities that let root read any file: the permission bits then hold,
    as they do for every other user."""
    drop = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", *command]


@pytest.mark.parametrize("what", ["agents", "manifests", "file"])
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_an_unreadable_directory_or_file_is_an_error_naming_it_never_zero_agents(tmp_path, what, command):
    """Regression: an unreadable agents/ was "valid: 0 agents", and plan then listed every agent for removal."""
    manifests = _set(tmp_path)
    target = {"agents": manifests / "agents", "manifests": manifests, "file": manifests / "agents" / "ok.yaml"}[what]
    mode = target.stat().st_mode
    target.chmod(0o300 if target.is_dir() else 0o200)  # a directory that can be entered but not listed
    try:
        done = subprocess.run(_without_root_powers([ORCHESTRATOR, "-m", str(manifests), command]), capture_output=True,
                              text=True, timeout=DEADLINE, stdin=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})
    finally:
        target.chmod(mode)
    where = {"agents": "manifests/agents:", "manifests": "manifests:", "file": "agents/ok.yaml:"}[what]
    _fails_cleanly(done, where, "Permission denied")
    assert "0 agents" not in done.stdout and "remove" not in done.stdout


def test_an_environment_value_linux_could_not_pass_is_refused_with_its_size(tmp_path):
    """Regression: a 1 MB value took validate 13 s in supervisord's parser (its cost grows with the square of a
    value's length), and execve would have refused it anyway (E2BIG above 128 KiB per NAME=value)."""
    manifests = _set(tmp_path)
    (manifests / "agents" / "big.yaml").write_text("name: big\ncommand: [sleep, '60']\nenv:\n  BIG: " + "x" * 1_000_000 + "\n")
    _fails_cleanly(_validate(manifests), "agents/big.yaml:4:8: env.BIG", "longer than the 131071 Linux passes")


def test_the_longest_value_linux_passes_is_valid_and_reaches_the_program(tmp_path):
    manifests = _set(tmp_path)
    value = "x" * (131071 - len("BIG="))
    (manifests / "agents" / "big.yaml").write_text(f"name: big\ncommand: [sleep, '60']\nenv:\n  BIG: {value}\n")
    done = _validate(manifests)
    assert done.returncode == 0, done.stderr[:500]
    assert subprocess.run(["sh", "-c", 'test ${#BIG} -eq "$1"', "sh", str(len(value))], env={"BIG": value}).returncode == 0
