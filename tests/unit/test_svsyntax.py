"""Values written into supervisord configuration come back out of supervisord's own parser unchanged.

These tests run supervisor's real parsing code (its ini parser, its
%-expansion, its `%(here)s` replacement, shlex for `command=`, its
`environment=` parser) on what `core.svsyntax` writes, for arbitrary text.
"""

from __future__ import annotations

import shlex
import string

from hypothesis import example, given, settings
from hypothesis import strategies as st
from supervisor.datatypes import dict_of_key_value_pairs
from supervisor.options import UnhosedConfigParser, expand

from orchestrator.core import svsyntax

# Any printable text but line breaks and NUL, which validation rejects everywhere.
line_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"), max_size=30)
awkward = st.text(alphabet=" ;#%()'\"\\$=,:ab", max_size=20)


def _read_back(option: str, value: str) -> str:
    """What supervisord holds for `option` after parsing `option=value` in an included file."""
    parser = UnhosedConfigParser()
    parser.read_string(f"[program:x]\n{option}={value}\n")
    parser.expand_here("/somewhere/here")
    return expand(parser.get("program:x", option), {"here": "/somewhere/here"}, option)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(line_text, awkward), min_size=1, max_size=6))
@example(["sh", "-c", "echo 'a ;b' # c", "50%", "%(here)s", "x #y", "a;b"])
def test_a_command_splits_back_into_exactly_its_arguments(argv):
    written = svsyntax.quote_command(argv)
    assert shlex.split(_read_back("command", written)) == argv


env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(env_names, st.one_of(line_text, awkward), min_size=1, max_size=5))
@example({"A": "50%", "B": "a b", "C": 'say "hi" now', "D": "it's", "E": "a,b=c", "F": ""})
def test_environment_values_supervisord_can_carry_come_back_unchanged(env):
    representable = {k: v for k, v in env.items() if svsyntax.env_value_problem(v) is None}
    if not representable:
        return
    parsed = dict_of_key_value_pairs(_read_back("environment", svsyntax.quote_environment(representable)))
    assert parsed == representable


@given(st.one_of(line_text, awkward))
def test_a_plain_value_without_a_problem_is_read_back_exactly(value):
    if svsyntax.value_problem(value) or value != value.strip():
        return  # the ini format strips surrounding whitespace; paths and names never carry it
    assert _read_back("directory", svsyntax.escape_percent(value)) == value


def test_values_supervisord_would_cut_or_rewrite_are_named_as_problems():
    assert "comment" in svsyntax.value_problem("a ;b")
    assert "comment" in svsyntax.value_problem("a\t#b")
    assert "line break" in svsyntax.value_problem("a\nb")
    assert "%(here)s" in svsyntax.value_problem("x%(here)sy")
    assert svsyntax.value_problem("a;b#c 50%") is None
    assert "quote" in svsyntax.env_value_problem('"quoted"')
    assert "both" in svsyntax.env_value_problem("it's \"x\" ok")
    assert svsyntax.env_value_problem("") is None


def test_every_printable_ascii_character_survives_a_command():
    argv = ["prog", string.printable.replace("\n", "").replace("\r", "").replace("\x0b", "").replace("\x0c", "")]
    assert shlex.split(_read_back("command", svsyntax.quote_command(argv))) == argv
