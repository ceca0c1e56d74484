"""A small lexer for job SQL: enough to find statements and client-side COPY.

PostgreSQL cannot run ``COPY ... FROM STDIN`` / ``TO STDOUT`` in a background job (there is no
client to talk to). The worker refuses such a string *before* running any of it, so that no
statement of the string commits; this needs the statement boundaries and keywords of the text,
with quoted strings, quoted identifiers, dollar quotes and comments skipped as PostgreSQL's own
lexer skips them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_WORD = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")


def _tokens(sql: str) -> Iterator[str]:
    """Yield upper-cased keywords/identifiers, ``(``, ``)``, ``;`` and ``"`` (a quoted name)."""
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch.isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif ch == "'" or (ch in "eE" and sql.startswith("'", i + 1)):
            backslash = ch != "'"
            i += 1 if ch == "'" else 2
            while i < n:
                if backslash and sql[i] == "\\":
                    i += 2
                elif sql[i] == "'":
                    if sql.startswith("'", i + 1):
                        i += 2
                    else:
                        i += 1
                        break
                else:
                    i += 1
            yield "'"
        elif ch == '"':
            end = i + 1
            while True:
                end = sql.find('"', end)
                if end < 0:
                    end = n
                    break
                if sql.startswith('"', end + 1):
                    end += 2
                    continue
                break
            i = end + 1
            yield '"'
        elif ch == "$" and (m := _DOLLAR_TAG.match(sql, i)):
            close = sql.find(m.group(0), m.end())
            i = n if close < 0 else close + len(m.group(0))
            yield "'"
        elif m := _WORD.match(sql, i):
            i = m.end()
            yield m.group(0).upper()
        else:
            i += 1
            if ch in "();":
                yield ch
            elif not ch.isspace():
                yield "?"


def statements(sql: str) -> list[list[str]]:
    """The string's non-empty statements, each as its list of tokens (see :func:`_tokens`)."""
    result: list[list[str]] = []
    current: list[str] = []
    for token in _tokens(sql):
        if token == ";":
            if current:
                result.append(current)
            current = []
        else:
            current.append(token)
    if current:
        result.append(current)
    return result


def is_blank(sql: str) -> bool:
    """True when the string holds no statement: only white space, comments and semicolons.
    (Reads up to the first token of a statement only: launch() calls it on every string.)"""
    return all(token == ";" for token in _tokens(sql))


# A client-side COPY spells out both words (PostgreSQL allows no comment inside a keyword), so a
# string without them needs no lexing: this C-level search keeps large scripts cheap.
_MAY_COPY = re.compile(r"copy", re.IGNORECASE)
_MAY_STDIO = re.compile(r"std(?:in|out)", re.IGNORECASE)


def client_copy(sql: str) -> str | None:
    """``"FROM STDIN"`` or ``"TO STDOUT"`` if a statement of the string is a client-side COPY."""
    if not (_MAY_COPY.search(sql) and _MAY_STDIO.search(sql)):
        return None
    for tokens in statements(sql):
        if tokens[0] != "COPY":
            continue
        depth = 0
        for token in tokens[1:]:
            if token == "(":
                depth += 1
            elif token == ")":
                depth -= 1
            elif depth == 0 and token == "STDIN":
                return "FROM STDIN"
            elif depth == 0 and token == "STDOUT":
                return "TO STDOUT"
    return None
