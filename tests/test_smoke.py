import pytest

import pgbackground as pgb


@pytest.mark.pool
def test_select_one_round_trip(pool):
    h = pgb.launch("SELECT 1 AS one")
    assert h.wait(timeout=30)
    r = h.result()
    assert r.rows == [(1,)]
    assert r.command_tag == "SELECT 1"
