"""Statements prepared by name (SQL ``PREPARE``) on the caller's own Django connection.

Django binds parameters client-side and connects with psycopg's ``prepare_threshold=None``, so
nothing on its connection is ever prepared, and a statement that must run there (the launch
statement reads the caller's session) is parsed and planned on every call. Preparing it by name
keeps Django's cursor (its error wrapping, its query log) and lets PostgreSQL skip that work.

A connection loses its prepared statements to ``DISCARD ALL`` / ``DEALLOCATE`` or to a pooler
moving it to another server connection: the statement is then prepared again and retried once,
and a connection where that does not stick (a transaction pooler) runs the plain statement from
then on. Only statements that commit on their own (autocommit) run here: a failed EXECUTE must
not abort the caller's transaction.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from typing import Any

from django.db import DatabaseError, connections

_NAMED_PARAM = re.compile(r"%\((\w+)\)s")
_UNDEFINED_STATEMENT = "26000"  # prepared statement does not exist
_DUPLICATE_STATEMENT = "42P05"  # prepared statement already exists


class _ConnectionState:
    def __init__(self) -> None:
        self.prepared: set[str] = set()
        self.unusable = False  # prepared statements do not stick: plain statements only


_states: weakref.WeakKeyDictionary[Any, _ConnectionState] = weakref.WeakKeyDictionary()


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(exc.__cause__, "sqlstate", None)


def to_positional(sql: str) -> tuple[str, list[str]]:
    """``sql`` with its ``%(name)s`` placeholders numbered ``$1``, ``$2``... in order of first
    appearance (``%%`` unescaped), and the parameter names in that order."""
    order = list(dict.fromkeys(_NAMED_PARAM.findall(sql)))
    positions = {name: n for n, name in enumerate(order, 1)}
    body = _NAMED_PARAM.sub(lambda m: f"${positions[m.group(1)]}", sql).replace("%%", "%")
    return body, order


class NamedStatement:
    """One statement with ``%(name)s`` parameters, run prepared on Django connections."""

    def __init__(self, prefix: str, sql: str, types: dict[str, str]) -> None:
        self.sql = sql
        body, self.order = to_positional(sql)
        missing = set(self.order) - set(types)
        if missing:
            raise ValueError(f"no type for parameters {sorted(missing)}")
        # The name changes with the text: a pooled server connection may hold an older one.
        digest = hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest()[:10]
        self.name = f"{prefix}_{digest}"
        type_list = ", ".join(types[name] for name in self.order)
        self.prepare_sql = f"PREPARE {self.name} ({type_list}) AS {body}"
        self.execute_sql = f"EXECUTE {self.name} ({', '.join(['%s'] * len(self.order))})"

    def execute(self, alias: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """Run on ``alias``'s connection (in autocommit mode); the first row, or None."""
        wrapper = connections[alias]
        with wrapper.cursor() as cursor:
            state = _states.get(wrapper.connection)
            if state is None:
                state = _states.setdefault(wrapper.connection, _ConnectionState())
            if not state.unusable:
                args = [params[name] for name in self.order]
                for _ in range(2):
                    if self.name not in state.prepared:
                        self._prepare(cursor, state)
                    try:
                        cursor.execute(self.execute_sql, args)
                        return cursor.fetchone()
                    except DatabaseError as exc:
                        if _sqlstate(exc) != _UNDEFINED_STATEMENT:
                            raise
                        state.prepared.discard(self.name)
                state.unusable = True  # prepared twice, gone twice: a pooler
            cursor.execute(self.sql, params)
            return cursor.fetchone()

    def _prepare(self, cursor: Any, state: _ConnectionState) -> None:
        try:
            cursor.execute(self.prepare_sql)
        except DatabaseError as exc:
            if _sqlstate(exc) != _DUPLICATE_STATEMENT:
                raise
        state.prepared.add(self.name)
