"""Reading a stored result for the admin without consuming it: preview rows and CSV export.

The admin shows values exactly as PostgreSQL printed them (the text the worker stored, like psql
and ``COPY ... CSV``), so nothing is lost in a round trip through Python types. Reading never
marks the result consumed and never deletes chunks: ``Handle.result()`` still works afterwards.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

from ..db import connect, launcher_connection, models_alias
from ..results import FETCH_CHUNKS_SQL, Column, chunk_params, columns_from_json, split_fields

PREVIEW_ROWS = 100
PREVIEW_CELL_CHARS = 500
CSV_BATCH_CHUNKS = 4


def _split(ncols: int, nrows: int, data: bytes, nulls: bytes) -> Iterator[list[str | None]]:
    if ncols == 0:
        for _ in range(nrows):
            yield []
        return
    fields = split_fields(data, nulls)
    for i in range(0, len(fields), ncols):
        yield [None if f is None else f.decode("utf-8", "replace") for f in fields[i : i + ncols]]


def result_available(job: Any) -> bool:
    """Whether rows are stored and still readable (finished, kept, not consumed or dropped)."""
    return bool(
        job.state == "stopped"
        and job.result_columns
        and (job.result_rows or 0) > 0
        and not job.consumed
        and not job.detached
        and not job.fire_and_forget
    )


def columns(job: Any) -> list[Column]:
    return columns_from_json(job.result_columns)


def preview(job: Any, limit: int = PREVIEW_ROWS) -> list[list[str | None]]:
    """The first ``limit`` rows as text (long cells cut), read one chunk at a time."""
    cols = columns(job)
    rows: list[list[str | None]] = []
    if not result_available(job):
        return rows
    conn = launcher_connection()
    last = -1
    while len(rows) < limit:
        chunks = conn.execute(
            FETCH_CHUNKS_SQL, chunk_params(job.pk, last, 1), binary=True
        ).fetchall()
        if not chunks:
            break
        seq, nrows, data, nulls = chunks[0]
        last = seq
        for row in _split(len(cols), nrows, data, nulls):
            rows.append(
                [
                    v if v is None or len(v) <= PREVIEW_CELL_CHARS else v[:PREVIEW_CELL_CHARS] + "…"
                    for v in row
                ]
            )
            if len(rows) >= limit:
                break
    return rows


class _Echo:
    def write(self, value: str) -> str:
        return value


def csv_lines(job_id: int, cols: list[Column]) -> Iterator[str]:
    """The whole result as CSV lines (header first), streamed a few chunks at a time.

    Runs on a connection of its own in one REPEATABLE READ transaction, so a consumer
    fetching (and deleting) the result meanwhile cannot cut the export short.
    """
    writer = csv.writer(_Echo())
    yield writer.writerow([c.name for c in cols])
    conn = connect(models_alias(), application_name="pgbackground admin csv")
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        last = -1
        while True:
            chunks = conn.execute(
                FETCH_CHUNKS_SQL, chunk_params(job_id, last, CSV_BATCH_CHUNKS), binary=True
            ).fetchall()
            for seq, nrows, data, nulls in chunks:
                last = seq
                yield "".join(
                    writer.writerow(["" if v is None else v for v in row])
                    for row in _split(len(cols), nrows, data, nulls)
                )
            if len(chunks) < CSV_BATCH_CHUNKS:
                break
        conn.execute("ROLLBACK")
    finally:
        conn.close()
