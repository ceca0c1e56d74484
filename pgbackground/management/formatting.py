"""Plain-text rendering for the operator CLI: psql-like aligned tables, values, durations."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

_WS = re.compile(r"\s+")


def width(text: str) -> int:
    """Display width (East Asian wide characters take two columns, combining marks none)."""
    w = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        w += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return w


def _pad(text: str, size: int, right: bool) -> str:
    fill = " " * max(0, size - width(text))
    return fill + text if right else text + fill


def is_numeric(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def pg_value(value: Any) -> str:
    """A value as psql would print it (NULL as empty, booleans as t/f, bytea as \\x...)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, list | tuple):
        return "{" + ",".join(pg_value(v) if v is not None else "NULL" for v in value) + "}"
    return str(value)


def one_line(text: str, limit: int) -> str:
    """``text`` squeezed onto one line and cut to ``limit`` characters (with an ellipsis)."""
    flat = _WS.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: max(0, limit - 1)].rstrip() + "…"


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    right: Sequence[bool] | None = None,
) -> list[str]:
    """Lines of a psql-style aligned table. ``right`` marks right-aligned (numeric) columns;
    by default a column is right-aligned when all its non-empty values are numbers."""
    raw = [list(r) for r in rows]
    if right is None:
        right = [
            bool(raw) and all(is_numeric(r[i]) or r[i] is None for r in raw)
            and any(r[i] is not None for r in raw)
            for i in range(len(headers))
        ]
    cells = [
        [pg_value(v).replace("\r\n", "\n").replace("\n", "↵").replace("\t", "    ") for v in r]
        for r in raw
    ]
    widths = [width(h) for h in headers]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], width(c))
    lines = [
        " " + " | ".join(_center(h, widths[i]) for i, h in enumerate(headers)).rstrip(),
        "-" + "-+-".join("-" * w for w in widths) + "-",
    ]
    for r in cells:
        lines.append(
            " " + " | ".join(_pad(c, widths[i], right[i]) for i, c in enumerate(r)).rstrip()
        )
    return lines


def _center(text: str, size: int) -> str:
    extra = max(0, size - width(text))
    left = extra // 2
    return " " * left + text + " " * (extra - left)


def seconds(value: float | None) -> str:
    """A duration for people: ``850 ms``, ``12.3 s``, ``4m 05s``, ``2h 03m``, ``3d 04h``."""
    if value is None:
        return ""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    total = int(value)
    if total < 3600:
        return f"{total // 60}m {total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h {total % 3600 // 60:02d}m"
    return f"{total // 86400}d {total % 86400 // 3600:02d}h"


def delta(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    return seconds((end - start).total_seconds())


def moment(value: datetime | None) -> str:
    """A timestamp in the current time zone, to the second."""
    if value is None:
        return ""
    if timezone.is_aware(value):
        value = timezone.localtime(value)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def moment_precise(value: datetime | None) -> str:
    if value is None:
        return ""
    if timezone.is_aware(value):
        value = timezone.localtime(value)
    return value.isoformat(sep=" ", timespec="milliseconds")


def size(nbytes: int | None) -> str:
    if nbytes is None:
        return ""
    step = 1024.0
    value = float(nbytes)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if value < step or unit == "TB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= step
    return f"{nbytes} bytes"  # pragma: no cover


def timedelta_text(value: timedelta | None) -> str:
    return "" if value is None else seconds(value.total_seconds())
