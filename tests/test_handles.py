"""Handles: the (id, cookie) capability, its text form, and InvalidHandle."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pgbackground as pgb
from pgbackground.launcher import new_cookie


def test_handle_is_frozen_and_round_trips():
    h = pgb.Handle(42, -123456789)
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.id = 1  # type: ignore[misc]
    assert str(h) == "42:-123456789"
    assert pgb.Handle.parse(str(h)) == h


@given(st.integers(1, 2**63 - 1), st.integers(-(2**63), 2**63 - 1).filter(bool))
def test_parse_round_trips_every_handle(job_id, cookie):
    h = pgb.Handle(job_id, cookie)
    assert pgb.Handle.parse(str(h)) == h


@pytest.mark.parametrize(
    "text",
    [
        "",
        "42",
        "42:",
        ":5",
        "42:0",
        "0:5",
        "-1:5",
        "042:5",
        "42:05",
        "+42:5",
        "42:+5",
        " 42:5",
        "42:5 ",
        "42:5\n",
        "42 : 5",
        "42:5:1",
        "4.2:5",
        "42:-0",
        "1e3:5",
        f"{2**63}:5",
        f"42:{2**63}",
        f"42:{-(2**63) - 1}",
        "٤٢:5",
        "42;5",
        "abc",
    ],
)
def test_parse_refuses_anything_else(text):
    with pytest.raises(ValueError, match="not a pgbackground handle"):
        pgb.Handle.parse(text)


@given(st.text(max_size=60))
def test_parse_of_arbitrary_text_is_a_handle_or_a_value_error(text):
    try:
        h = pgb.Handle.parse(text)
    except ValueError:
        return
    assert str(h) == text


@pytest.mark.parametrize("value", [None, 42, b"1:2", ["1:2"]])
def test_parse_refuses_non_strings(value):
    with pytest.raises(TypeError):
        pgb.Handle.parse(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("job_id", "cookie", "exc"),
    [
        (0, 1, ValueError),
        (-5, 1, ValueError),
        (1, 0, ValueError),
        (True, 1, TypeError),
        ("1", 1, TypeError),
        (1, 2**63, ValueError),
        (1, 1.0, TypeError),
    ],
)
def test_handle_constructor_validates(job_id, cookie, exc):
    with pytest.raises(exc):
        pgb.Handle(job_id, cookie)


def test_cookies_are_random_nonzero_signed_64_bit():
    cookies = {new_cookie() for _ in range(2000)}
    assert len(cookies) == 2000
    assert 0 not in cookies
    assert all(-(2**63) <= c < 2**63 for c in cookies)
    assert any(c < 0 for c in cookies) and any(c > 0 for c in cookies)


def test_async_handle_mirrors_handle():
    a = pgb.AsyncHandle.parse("7:-9")
    assert (a.id, a.cookie, str(a)) == (7, -9, "7:-9")
    assert a.handle == pgb.Handle(7, -9)


def test_exception_hierarchy():
    for cls in (
        pgb.JobError,
        pgb.JobCanceled,
        pgb.WorkerLost,
        pgb.InvalidHandle,
        pgb.ResultConsumed,
        pgb.JobDetached,
        pgb.TooManyJobs,
    ):
        assert issubclass(cls, pgb.BackgroundError)
    assert issubclass(pgb.JobCanceled, pgb.JobError)
    assert issubclass(pgb.WorkerLost, pgb.JobError)
    assert pgb.TooManyJobs.sqlstate == "53400"


@pytest.mark.django_db(transaction=True)
def test_unknown_id_and_wrong_cookie_are_the_same_error():
    h = pgb.launch("SELECT 1")
    wrong = pgb.Handle(h.id, h.cookie ^ 1)
    unknown = pgb.Handle(h.id + 1000, h.cookie)
    messages = set()
    for bad in (wrong, unknown):
        for op in (
            lambda x: x.state,
            lambda x: x.wait(0),
            lambda x: x.result(),
            lambda x: x.result_info(),
            lambda x: x.error_info(),
            lambda x: x.progress(),
            lambda x: x.notices(),
            lambda x: x.cancel(),
            lambda x: x.detach(),
        ):
            with pytest.raises(pgb.InvalidHandle) as info:
                op(bad)
            messages.add(str(info.value))
    assert messages == {"invalid pgbackground handle"}
    assert h.state == "queued"  # nothing the bad handles did touched the job


def test_public_names_resolve_to_the_api_whatever_was_imported_first():
    import importlib

    for module in ("jobstats", "handles", "results", "api", "launcher", "admin.views"):
        importlib.import_module(f"pgbackground.{module}")
    assert callable(pgb.stats)
    assert pgb.stats.__module__ == "pgbackground.jobstats"
    for name in pgb.__all__:
        assert getattr(pgb, name) is not None
