"""supervisord's configuration syntax: how a value must be written so supervisord reads it back exactly.

Owned here: the escaping rules, as pure functions, and the predicates that say
when a value cannot be written at all. `render` uses the functions as its named
Jinja filters; `validators` uses the predicates so an unwritable value is a
manifest error with a location, never a surprise at reload. Standard library only.

What supervisord does to a value (supervisor 4, `options.py` / `datatypes.py`):
- its ini parser cuts a value at `;` or `#` preceded by whitespace (inline
  comments), and a newline ends the value;
- it replaces the text `%(here)s` in every value of an included file with
  that file's directory, before anything else and even after a `%`;
- `command`, `environment`, `directory` and log paths are `%`-expanded
  (`%(here)s`...), so a literal `%` must be written `%%`;
- `command` is split with `shlex.split` (POSIX rules);
- `environment` is split by a non-POSIX `shlex`: a quoted value keeps no escape
  sequences and loses every leading and trailing quote character.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping

_INLINE_COMMENT = re.compile(r"\s[;#]")
HERE = "%(here)s"
# Characters that would break a supervisord configuration line: a newline ends the value and can
# start a new [section]; NUL and CR are never meaningful. The one statement of this rule: the
# loader refuses such values with a location, the renderer refuses to write them.
_LINE_BREAK = re.compile(r"[\n\r\x00]")


def breaks_line(value: str) -> bool:
    """Whether `value` holds a character that would end a supervisord configuration line."""
    return _LINE_BREAK.search(value) is not None


def escape_percent(value: str) -> str:
    """`value` with every `%` doubled, as supervisord's %-expansion needs."""
    return value.replace("%", "%%")


def value_problem(value: str) -> str | None:
    """Why `value` cannot be written as a plain supervisord setting, or None when it can."""
    if breaks_line(value):
        return "contains a line break or NUL character"
    if _INLINE_COMMENT.search(value):
        return "contains whitespace followed by ';' or '#', which supervisord reads as the start of a comment"
    if HERE in value:
        return f"contains '{HERE}', which supervisord replaces with a directory"
    return None


def quote_command(argv: Iterable[str]) -> str:
    """A `command=` value that supervisord splits back into exactly `argv`.

    Each argument is quoted for a POSIX shell; a `;` or `#` inside quotes is
    moved outside them (`'a ;b'` becomes `'a ';'b'`, the same word to shlex) so
    that no whitespace precedes it and the ini parser does not take it for a
    comment. A `%(` is split by an empty quote pair (`%''(`), so supervisord's
    `%(here)s` replacement cannot match. Then `%` is doubled.
    """
    words = []
    for arg in argv:
        word = shlex.quote(arg)
        if ";" in arg or "#" in arg:
            word = word.replace(";", "';'").replace("#", "'#'")
        if "%(" in arg:  # `(` forces quoting, so the word is quoted and '' joins its halves
            word = word.replace("%(", "%''(")
        words.append(word)
    return escape_percent(" ".join(words))


def env_value_problem(value: str) -> str | None:
    """Why `value` cannot be passed through supervisord's `environment=`, or None when it can."""
    problem = value_problem(value)
    if problem:
        return problem
    if value and (value[0] in "'\"" or value[-1] in "'\""):
        return "starts or ends with a quote character, which supervisord's environment parser strips"
    if '"' in value and "'" in value:
        return "contains both kinds of quote, which supervisord's environment parser cannot read"
    return None


def quote_environment(env: Mapping[str, str]) -> str:
    """An `environment=` value that supervisord parses back into exactly `env` (keys sorted)."""
    parts = []
    for key in sorted(env):
        value = env[key]
        quote = "'" if '"' in value else '"'
        parts.append(f"{key}={quote}{value}{quote}")
    return escape_percent(",".join(parts))
