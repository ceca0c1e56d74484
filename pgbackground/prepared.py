"""Statements prepared by name (SQL ``PREPARE``) and run with libpq's ``PQexecPrepared``.

A job costs a handful of statements, and most of the client-side cost of each was psycopg's
cursor machinery (query conversion, generators, a new transformer per cursor): about 50 µs of
CPU and wall time per statement on the bench machine, against about 80 µs for the statement
itself on the wire (bench/ and docs/performance.md). A statement of this module is prepared
once per connection and then run with one libpq call, its parameters dumped and its rows
loaded with psycopg's own adapters (so values have the types a psycopg query gives).

Two kinds of connections run them:

- pgbackground's own connections (the launcher's, the pool's control connections):
  :meth:`NamedStatement.run`;
- the caller's Django connection, for the launch statement that must read the caller's session:
  :meth:`NamedStatement.execute`. Django binds parameters client-side and connects with
  ``prepare_threshold=None``, so without this the statement would be parsed and planned on every
  launch. It is prepared through Django's cursor; later runs go through Django's cursor again
  whenever something watches it (``DEBUG`` query logging, an execute wrapper other than
  pgbackground's own), so that the launch stays visible to that tool.

A connection loses its prepared statements to ``DISCARD ALL`` / ``DEALLOCATE`` (psycopg sends
``DEALLOCATE ALL`` itself after a ``ROLLBACK`` on a connection where it prepared statements) or
to a pooler moving it to another server connection: the statement is then prepared again and
retried once, and a connection where that does not stick (a transaction pooler) runs the plain
statement from then on. On the caller's connection only statements that commit on their own
(autocommit) run here: a failed EXECUTE must not abort the caller's transaction.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from django.db import DatabaseError, connections
from psycopg import errors, pq
from psycopg.adapt import PyFormat, Transformer

from .capture import is_settings_watch
from .notifies import dispatch_notifies

if TYPE_CHECKING:
    from psycopg.abc import Transformer as TransformerT
else:
    TransformerT = Transformer

_NAMED_PARAM = re.compile(r"%\((\w+)\)s")
_UNDEFINED_STATEMENT = "26000"  # prepared statement does not exist
_DUPLICATE_STATEMENT = "42P05"  # prepared statement already exists


_BYTES = (bytes, bytearray, memoryview)
_ROWS = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)


class _ConnectionState:
    def __init__(self) -> None:
        self.prepared: set[str] = set()
        self.unusable = False  # prepared statements do not stick: plain statements only
        # Per statement: a transformer that has the loaders of its result columns (and caches
        # the dumpers of its parameters), reused by every run.
        self.transformers: dict[tuple[str, bool], TransformerT] = {}

    def forget(self, name: str) -> None:
        self.prepared.discard(name)
        for key in [k for k in self.transformers if k[0] == name]:
            del self.transformers[key]


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
        self._bname = self.name.encode()

    # --- on pgbackground's own connections -----------------------------------------------------

    def run(
        self, conn: psycopg.Connection[Any], params: Mapping[str, Any], *, binary: bool = False
    ) -> list[tuple[Any, ...]]:
        """Run on one of pgbackground's own (autocommit) psycopg connections; all its rows.
        ``binary``: rows come in PostgreSQL's binary format (bytea without hex encoding)."""
        state = _states.get(conn)
        if state is None:
            state = _states.setdefault(conn, _ConnectionState())
        if not state.unusable:
            args = [params[name] for name in self.order]
            for _ in range(2):
                if self.name not in state.prepared:
                    try:
                        conn.execute(self.prepare_sql)
                    except errors.DuplicatePreparedStatement:
                        pass
                    state.prepared.add(self.name)
                try:
                    return self._exec(conn, state, args, binary=binary)
                except errors.InvalidSqlStatementName:
                    state.forget(self.name)
                except errors.FeatureNotSupported:
                    # "cached plan must not change result type": a migration altered a column
                    # it returns. Prepared again for the table as it is now.
                    conn.execute(f"DEALLOCATE {self.name}")
                    state.forget(self.name)
            state.unusable = True  # prepared twice, gone twice: a pooler
        return conn.execute(self.sql, params, binary=binary).fetchall()

    def _exec(
        self,
        conn: psycopg.Connection[Any],
        state: _ConnectionState,
        args: Sequence[Any],
        *,
        binary: bool = False,
    ) -> list[tuple[Any, ...]]:
        """:func:`exec_prepared` of this statement, through the transformer kept for it on
        ``conn`` (kept once it has the loaders of the result columns)."""
        key = (self.name, binary)
        kept = state.transformers.get(key)
        tx = kept or Transformer(conn)
        rows = exec_prepared(
            conn, self._bname, args, binary=binary, tx=tx, same_columns=kept is not None
        )
        if kept is None and rows:
            state.transformers[key] = tx
        return rows

    # --- on the caller's Django connection -----------------------------------------------------

    def execute(self, alias: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """Run on ``alias``'s connection (in autocommit mode); the first row, or None."""
        wrapper = connections[alias]
        raw = wrapper.connection
        state = None if raw is None else _states.get(raw)
        if (
            state is not None
            and self.name in state.prepared
            and not wrapper.queries_logged
            and all(is_settings_watch(w) for w in wrapper.execute_wrappers)
            and raw.pgconn.transaction_status == pq.TransactionStatus.IDLE
        ):
            try:
                with wrapper.wrap_database_errors:
                    rows = self._exec(raw, state, [params[n] for n in self.order])
                return rows[0] if rows else None
            except DatabaseError as exc:
                if _sqlstate(exc) != _UNDEFINED_STATEMENT:
                    raise
                state.forget(self.name)  # prepared again below
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
                        state.forget(self.name)
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


def exec_prepared(
    conn: psycopg.Connection[Any],
    name: bytes,
    args: Sequence[Any],
    *,
    binary: bool = False,
    tx: TransformerT | None = None,
    same_columns: bool = False,
) -> list[tuple[Any, ...]]:
    """Run the statement prepared as ``name`` on ``conn`` with one libpq call; all its rows.

    Parameters go in text format (PostgreSQL reads them as the types the statement declares),
    bytes in binary format; both dumped, and the rows loaded, by psycopg's adapters of ``conn``
    (through ``tx`` if given; ``same_columns``: it already has the loaders of this statement's
    result columns). Errors are psycopg's: OperationalError when the connection is lost, else
    the exception class of the SQLSTATE.
    """
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    if tx is None:
        tx = Transformer(conn)
    formats = [PyFormat.BINARY if isinstance(a, _BYTES) else PyFormat.TEXT for a in args]
    values = tx.dump_sequence(args, formats)
    pgconn = conn.pgconn
    with conn.lock:
        res = pgconn.exec_prepared(
            name,
            values,  # type: ignore[arg-type]  # None items are NULLs (psycopg passes them too)
            tx.formats,
            result_format=pq.Format.BINARY if binary else pq.Format.TEXT,
        )
        dispatch_notifies(pgconn)  # those that arrived with the result, as psycopg does
    if res.status in _ROWS:
        if not res.ntuples:
            return []
        tx.set_pgresult(res, set_loaders=not same_columns)
        return [tx.load_row(i, tuple) for i in range(res.ntuples)]
    if pgconn.status == pq.ConnStatus.BAD:
        message = res.error_message or pgconn.error_message
        raise psycopg.OperationalError(message.decode("utf-8", "replace").strip())
    raise errors.error_from_result(res, encoding=conn.info.encoding)
