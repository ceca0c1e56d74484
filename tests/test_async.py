"""alaunch / asubmit and AsyncHandle: the same API as coroutines."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

import pgbackground as pgb


def run_async(coro_fn):
    """Run a coroutine, then close the connections its sync_to_async threads opened."""

    async def wrapper():
        try:
            await coro_fn()
        finally:
            await sync_to_async(connections.close_all)()

    asyncio.run(wrapper())


pytestmark = [pytest.mark.pool, pytest.mark.django_db(transaction=True)]


def test_async_api_end_to_end(pool):
    async def main():
        h = await pgb.alaunch(
            "SELECT pgbackground_progress(10, 'a'); SELECT 6 * 7 AS answer", label="async"
        )
        assert isinstance(h, pgb.AsyncHandle)
        assert await h.wait(timeout=60)
        assert await h.state() == "stopped"
        assert (await h.progress()).pct == 10
        info = await h.result_info()
        assert info.row_count == 1
        r = await h.result()
        assert r.rows == [(42,)]
        with pytest.raises(pgb.ResultConsumed):
            await h.result()
        assert await h.error_info() is None
        assert await h.notices() == []

        bad = await pgb.alaunch("SELECT 1/0")
        with pytest.raises(pgb.JobError) as info:
            await bad.result()
        assert info.value.sqlstate == "22012"

        sub = await pgb.asubmit("SELECT 1")
        assert await sub.wait(60)
        with pytest.raises(pgb.JobDetached):
            await sub.result()

        long = await pgb.alaunch("SELECT pg_sleep(60)")
        await long.cancel(grace=0.1)
        assert await long.wait(60)
        assert await long.state() == "canceled"

        det = await pgb.alaunch("SELECT 1")
        await det.detach()
        assert await det.wait(60)

        # Many waits at once share no thread: they are plain coroutines.
        many = [await pgb.alaunch(f"SELECT {i}") for i in range(10)]
        assert all(await asyncio.gather(*(m.wait(60) for m in many)))

        wrong = pgb.AsyncHandle(h.id, h.cookie ^ 1)
        with pytest.raises(pgb.InvalidHandle):
            await wrong.wait(1)

    run_async(main)


def test_async_wait_times_out(transactional_db):
    async def main():
        h = await pgb.alaunch("SELECT 1")
        assert await h.wait(timeout=0.2) is False
        await h.cancel()
        assert await h.state() == "canceled"

    run_async(main)
