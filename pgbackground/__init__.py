"""pgbackground: run arbitrary SQL in the background on PostgreSQL, the Django way.

import pgbackground as pgb
h = pgb.launch("VACUUM (VERBOSE) big_table", label="nightly vacuum")
h.wait(); print(h.state, h.notices())
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AsyncHandle",
    "BackgroundError",
    "Column",
    "ErrorInfo",
    "Handle",
    "InvalidHandle",
    "JobCanceled",
    "JobDetached",
    "JobError",
    "Notice",
    "Progress",
    "Result",
    "ResultConsumed",
    "ResultInfo",
    "Stats",
    "TooManyJobs",
    "WorkerLost",
    "alaunch",
    "asubmit",
    "cancel_all",
    "detach_all",
    "launch",
    "list_jobs",
    "stats",
    "submit",
]

# The exceptions import nothing from Django: safe before the app registry is ready.
from .exceptions import (
    BackgroundError,
    InvalidHandle,
    JobCanceled,
    JobDetached,
    JobError,
    ResultConsumed,
    TooManyJobs,
    WorkerLost,
)

if TYPE_CHECKING:
    from .api import alaunch, asubmit, cancel_all, detach_all, launch, list_jobs, submit
    from .handles import AsyncHandle, ErrorInfo, Handle, Notice, Progress, ResultInfo
    from .jobstats import Stats, stats
    from .results import Column, Result

_LAZY = {
    "alaunch": "api",
    "asubmit": "api",
    "cancel_all": "api",
    "detach_all": "api",
    "launch": "api",
    "list_jobs": "api",
    "submit": "api",
    "AsyncHandle": "handles",
    "ErrorInfo": "handles",
    "Handle": "handles",
    "Notice": "handles",
    "Progress": "handles",
    "ResultInfo": "handles",
    "Column": "results",
    "Result": "results",
    "Stats": "jobstats",
    "stats": "jobstats",
}


def __getattr__(name: str) -> Any:
    # Lazy so that ``import pgbackground`` works in settings.py, before Django is set up.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pgbackground' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
