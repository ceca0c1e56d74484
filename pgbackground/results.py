"""Result rows: encoded by the worker in chunks, decoded by the launcher with psycopg's loaders.

The worker stores the raw text values PostgreSQL sent it, never Python objects: decoding happens
in the launcher with psycopg's own loaders for the column types, so values have exactly the types
a direct psycopg query gives (including loaders the application registered), and no untrusted
serialisation format (pickle) is ever read back.
"""

from __future__ import annotations

import array
import json
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import psycopg
from psycopg import pq
from psycopg.adapt import Transformer

if TYPE_CHECKING:
    from psycopg.abc import Transformer as TransformerT
else:
    TransformerT = Transformer

SEP = b"\x00"  # PostgreSQL's text output never contains NUL, so it separates fields safely.


class Column(NamedTuple):
    """A result column: its name, type name (``format_type``) and type oid."""

    name: str
    type_name: str
    type_oid: int


# --- worker side -------------------------------------------------------------------------------


class TypeNames:
    """``format_type(oid, typmod)`` of result columns, asked of PostgreSQL once per type and
    connection (not in every outcome's statement). A type renamed while the pool runs keeps its
    old name here until the connection is replaced; the oid stored beside it is what decoding
    uses."""

    def __init__(self) -> None:
        self._names: dict[tuple[int, int], str] = {}
        self._conn: Any = None
        # The JSON of result_columns per column list (most jobs of a pool return a few shapes).
        self._json: dict[tuple[tuple[str, int, int], ...], str] = {}

    def columns_json(
        self, conn: psycopg.Connection[Any], cols: Sequence[tuple[str, int, int]]
    ) -> str:
        """:meth:`columns` as the JSON text stored in result_columns."""
        key = tuple(cols)
        text = self._json.get(key) if conn is self._conn else None
        if text is None:
            text = json.dumps(self.columns(conn, cols))
            if len(self._json) >= 256:
                self._json.clear()
            self._json[key] = text
        return text

    def columns(
        self, conn: psycopg.Connection[Any], cols: Sequence[tuple[str, int, int]]
    ) -> list[list[Any]]:
        """``[name, type name, oid]`` for each (name, oid, typmod), as stored in result_columns."""
        if conn is not self._conn:
            self._names, self._json, self._conn = {}, {}, conn
        missing = list(dict.fromkeys((o, m) for _, o, m in cols if (o, m) not in self._names))
        if missing:
            rows = conn.execute(
                "SELECT format_type(o, m) FROM unnest(%s::oid[], %s::int[])"
                " WITH ORDINALITY AS t(o, m, i) ORDER BY i",
                [[o for o, _ in missing], [m for _, m in missing]],
            ).fetchall()
            self._names.update(zip(missing, (r[0] for r in rows), strict=True))
        return [[n, self._names[(o, m)], o] for n, o, m in cols]


class EncodedChunk(NamedTuple):
    nrows: int
    data: bytes
    nulls: bytes


def encode_values(values: list[bytes | None], nrows: int) -> EncodedChunk:
    """Pack a flat list of field values (row-major; None = SQL NULL) into one chunk."""
    try:
        data = SEP.join(values)  # type: ignore[arg-type]  # fast path: no NULLs
        nulls = b""
    except TypeError:
        positions = array.array("I", (i for i, v in enumerate(values) if v is None))
        if sys.byteorder != "little":
            positions.byteswap()
        data = SEP.join(b"" if v is None else v for v in values)
        nulls = positions.tobytes()
    return EncodedChunk(nrows, data, nulls)


def pgresult_values(res: pq.abc.PGresult) -> list[bytes | None]:
    """Every field of a PGresult, row-major, as raw bytes (None for NULL)."""
    get = res.get_value
    nf = res.nfields
    return [get(r, c) for r in range(res.ntuples) for c in range(nf)]


# --- launcher side -----------------------------------------------------------------------------


def split_fields(data: bytes, nulls: bytes) -> list[bytes | None]:
    """The flat field values of a stored chunk, row-major, with None where SQL NULL is."""
    fields: list[bytes | None] = list(bytes(data).split(SEP))
    if nulls:
        positions = array.array("I")
        positions.frombytes(bytes(nulls))
        if sys.byteorder != "little":
            positions.byteswap()
        for i in positions:
            fields[i] = None
    return fields


def decode_chunk(
    tx: TransformerT, ncols: int, nrows: int, data: bytes, nulls: bytes
) -> list[tuple[Any, ...]]:
    """Rows of one stored chunk, loaded by ``tx`` (already told the column types)."""
    if ncols == 0:
        return [()] * nrows
    fields = split_fields(data, nulls)
    # zip(*[it] * n) groups the flat fields into rows without a Python-level loop.
    it = iter(fields)
    return list(map(tx.load_sequence, zip(*[it] * ncols, strict=True)))


def make_transformer(conn: psycopg.Connection[Any], columns: Sequence[Column]) -> TransformerT:
    """A psycopg Transformer that loads text values of ``columns`` in ``conn``'s context."""
    tx = Transformer(conn)
    tx.set_loader_types([c.type_oid for c in columns], pq.Format.TEXT)
    return tx


# A job's stored chunks in order, from %(after)s on: its chunk rows, or the one chunk kept in
# its row (models.Job.result_data; seq 0, and the job then has no chunk rows).
_CHUNKS_SQL = """
SELECT seq, nrows, data, nulls FROM (
    SELECT seq, nrows, data, nulls FROM pgbackground_jobresultchunk
    WHERE job_id = %(job)s AND seq > %(after)s
    UNION ALL
    SELECT 0, result_rows::int, result_data, result_nulls FROM pgbackground_job
    WHERE id = %(job)s AND result_data IS NOT NULL AND %(after)s < 0
) AS stored ORDER BY seq"""
FETCH_CHUNKS_SQL = _CHUNKS_SQL + " LIMIT %(limit)s"
STREAM_CHUNKS_SQL = _CHUNKS_SQL


def chunk_params(job_id: int, after: int = -1, limit: int | None = None) -> dict[str, int | None]:
    """The parameters of FETCH_CHUNKS_SQL (with ``limit``) and STREAM_CHUNKS_SQL."""
    return {"job": job_id, "after": after, "limit": limit}


def iter_rows(
    conn: psycopg.Connection[Any],
    job_id: int,
    columns: Sequence[Column],
    batch: int = 2,
    *,
    one_query: bool = False,
) -> Iterator[list[tuple[Any, ...]]]:
    """Stream the stored rows of a job, a chunk at a time (memory stays bounded).

    With ``one_query``, every chunk comes from one streamed query: PostgreSQL sends the next
    chunks while this process decodes, but the connection is busy until the iteration ends, so
    it is only for callers that run nothing else meanwhile. Otherwise ``batch`` chunks a query.
    """
    tx = make_transformer(conn, columns)
    last = -1
    ncols = len(columns)
    if one_query:
        with conn.cursor(binary=True) as cur:
            for _seq, nrows, data, nulls in cur.stream(STREAM_CHUNKS_SQL, chunk_params(job_id)):
                yield decode_chunk(tx, ncols, nrows, data, nulls)
        return
    while True:
        rows = conn.execute(
            FETCH_CHUNKS_SQL, chunk_params(job_id, last, batch), binary=True
        ).fetchall()
        if not rows:
            return
        for seq, nrows, data, nulls in rows:
            last = seq
            yield decode_chunk(tx, ncols, nrows, data, nulls)
        if len(rows) < batch:
            return


def columns_from_json(raw: Any) -> list[Column]:
    return [Column(str(n), str(t), int(o)) for n, t, o in (raw or [])]


class Result:
    """A job's result: the last result set that had columns, and the last statement's tag.

    Iterating streams the rows from the database a chunk at a time (memory stays bounded) and
    can be done once; ``rows`` loads them all into a list and keeps it.
    """

    def __init__(
        self,
        job_id: int,
        columns: list[Column],
        command_tag: str,
        row_count: int | None,
        stored_rows: int,
        *,
        chunks: list[tuple[int, bytes, bytes]] | None = None,
    ) -> None:
        self.job_id = job_id
        self.columns = columns
        self.command_tag = command_tag
        self.row_count = row_count
        self._stored_rows = stored_rows
        self._rows: list[tuple[Any, ...]] | None = None
        self._streamed = False
        self._chunks = chunks  # a small result, already fetched (and deleted from storage)

    def __repr__(self) -> str:
        names = ", ".join(c.name for c in self.columns)
        return f"<Result job={self.job_id} {self.command_tag!r} columns=({names}) rows={len(self)}>"

    def __len__(self) -> int:
        return self._stored_rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        if self._rows is not None:
            yield from self._rows
            return
        if self._streamed:
            from .exceptions import ResultConsumed

            raise ResultConsumed(
                "the result rows were already streamed once; use Result.rows to keep them"
            )
        self._streamed = True
        for batch in self._batches():
            yield from batch

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        """All rows as a list of tuples (loaded on first access, then kept)."""
        if self._rows is None:
            if self._streamed:
                from .exceptions import ResultConsumed

                raise ResultConsumed("the result rows were already streamed once")
            self._streamed = True
            rows: list[tuple[Any, ...]] = []
            for batch in self._batches(one_query=True):  # no caller code runs in between
                rows.extend(batch)
            self._rows = rows
        return self._rows

    def _batches(self, *, one_query: bool = False) -> Iterator[list[tuple[Any, ...]]]:
        """The rows, a stored chunk at a time (``one_query``: see :func:`iter_rows`)."""
        from .db import launcher_connection

        if self._chunks is not None:
            left = sum(nrows for nrows, _, _ in self._chunks)
            if self.columns and left != self._stored_rows:
                _raise_purged(left, self._stored_rows)
            if self.columns and self._chunks:
                tx = make_transformer(launcher_connection(), self.columns)
                for nrows, data, nulls in self._chunks:
                    yield decode_chunk(tx, len(self.columns), nrows, data, nulls)
            return
        if not self.columns or not self._stored_rows:
            _drop_chunks(self.job_id)
            return
        conn = launcher_connection()
        seen = 0
        for batch in iter_rows(conn, self.job_id, self.columns, one_query=one_query):
            seen += len(batch)
            yield batch
        _drop_chunks(self.job_id)
        if seen != self._stored_rows:
            _raise_purged(seen, self._stored_rows)


def _raise_purged(left: int, stored: int) -> None:
    from .exceptions import ResultConsumed

    raise ResultConsumed(
        f"only {left} of the result's {stored} rows were left to read: the rest was purged"
        " (RESULT_RETENTION) or deleted before or while it was read"
    )


def _drop_chunks(job_id: int) -> None:
    from .db import launcher_connection

    launcher_connection().execute(
        "DELETE FROM pgbackground_jobresultchunk WHERE job_id = %s", [job_id]
    )
