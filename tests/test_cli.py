"""``manage.py pgbackground``: every subcommand, its help, and its answers to bad input."""

from __future__ import annotations

import io
import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError
from django.test import override_settings

import pgbackground as pgb
from pgbackground.models import Job, JobResultChunk, JobStatsArchive
from pgbackground.operators import OPERATOR_PERMISSIONS, OPERATORS_GROUP
from tests.jobfactory import add_chunks, make_job, wait_for_states

# The commands use pgbackground's own (autonomous) connection: rows must be committed.
pytestmark = pytest.mark.django_db(transaction=True)

HANDLE = re.compile(r"^(\d+):(-?\d+)$", re.MULTILINE)
# --wait with a bound, so that a job that never ends fails the test with a clear message.
WAIT = ("--wait", "--wait-timeout", "60")
SUBCOMMANDS = ("launch", "list", "show", "cancel", "detach", "stats", "purge", "grant", "revoke")


def run(*args: str) -> tuple[str, str]:
    """Run ``manage.py pgbackground ARGS``; its (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    call_command("pgbackground", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def fails(*args: str, match: str) -> str:
    """Run it expecting a CommandError matching ``match``; the stdout printed before it."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match=match):
        call_command("pgbackground", *args, stdout=out, stderr=err)
    return out.getvalue() + err.getvalue()


def handle_of(stdout: str) -> pgb.Handle:
    m = HANDLE.search(stdout)
    assert m, stdout
    return pgb.Handle(int(m.group(1)), int(m.group(2)))


# --- help --------------------------------------------------------------------------------------


def _subparsers() -> dict[str, Any]:
    parser = load_command_class("pgbackground", "pgbackground").create_parser(
        "manage.py", "pgbackground")
    (action,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return dict(action.choices)


@pytest.mark.django_db(transaction=False)
def test_main_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        call_command("pgbackground", "--help")
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\s+\S", text, re.MULTILINE), name
    assert "examples:" in text


@pytest.mark.django_db(transaction=False)
@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help_mentions_every_option(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        call_command("pgbackground", name, "--help")
    text = capsys.readouterr().out
    assert re.search(rf"usage: (manage.py )?pgbackground {name} ", text)
    assert "examples:" in text
    assert f"manage.py pgbackground {name}" in text.split("examples:", 1)[1]
    for action in _subparsers()[name]._actions:
        for option in action.option_strings:
            assert option in text, option
        if not action.option_strings:
            assert action.metavar in text
        assert action.help, f"{name}: {action.dest} has no help"


@pytest.mark.django_db(transaction=False)
def test_no_subcommand_says_what_to_do() -> None:
    with pytest.raises(CommandError, match="launch, list, show"):
        call_command("pgbackground")
    with pytest.raises(CommandError, match="invalid choice: 'frobnicate'"):
        call_command("pgbackground", "frobnicate")


# --- launch ------------------------------------------------------------------------------------


def test_launch_prints_the_handle_and_queues_the_job() -> None:
    alice = User.objects.create_user("alice")
    out, _err = run("launch", "SELECT 42", "--label", "answer", "--timeout", "5",
                    "--set", "work_mem=64MB", "--set", "search_path=public",
                    "--max-result-bytes", "1000", "--owner", "alice")
    h = handle_of(out)
    assert out.strip() == str(h)
    job = Job.objects.get(pk=h.id)
    assert (job.sql, job.label, job.timeout, job.max_result_bytes, job.owner) == (
        "SELECT 42", "answer", 5.0, 1000, alice)
    assert job.gucs["work_mem"] == "64MB"
    assert job.gucs["search_path"] == "public"
    assert job.state == "queued"
    assert not job.fire_and_forget


def test_launch_submit_is_fire_and_forget() -> None:
    out, _err = run("launch", "SELECT 1", "--submit")
    assert Job.objects.get(pk=handle_of(out).id).fire_and_forget


def test_launch_reads_sql_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("SELECT 'from stdin'\n"))
    out, _err = run("launch", "-")
    assert Job.objects.get(pk=handle_of(out).id).sql == "SELECT 'from stdin'\n"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["   "], "sql is empty"),
        (["-- only a comment"], "sql is empty"),
        (["SELECT 1", "--timeout", "-1"], "timeout must be a finite number"),
        (["SELECT 1", "--timeout", "soon"], "invalid float value: 'soon'"),
        (["SELECT 1", "--set", "work_mem"], "--set expects NAME=VALUE"),
        (["SELECT 1", "--set", "=1"], "--set expects NAME=VALUE"),
        (["SELECT 1", "--set", "no_such_setting=1"], "unrecognized configuration parameter"),
        (["SELECT 1", "--set", "work_mem=lots"], "invalid value for parameter \"work_mem\""),
        (["SELECT 1", "--set", "role=postgres"], "cannot be overridden"),
        (["SELECT 1", "--owner", "nobody"], "no user named 'nobody'"),
        (["SELECT 1", "--max-result-bytes", "-5"], "'-5' must be >= 0"),
        (["SELECT 1", "--label", "x" * 201], "label is longer than 200"),
        (["SELECT 1", "--max-rows", "many"], "'many' is not an integer"),
        (["SELECT 1", "--wait", "--wait-timeout", "-1"], "--wait-timeout must be a finite"),
    ],
)
def test_launch_bad_input(args: list[str], match: str) -> None:
    fails("launch", *args, match=match)
    assert not Job.objects.exists()  # a refused launch creates no job


def test_launch_too_many_jobs() -> None:
    User.objects.create_user("busy")
    with override_settings(PGBACKGROUND={"MAX_WORKERS": 1}):
        run("launch", "SELECT 1", "--owner", "busy")
        fails("launch", "SELECT 2", "--owner", "busy", match="53400")
    assert Job.objects.count() == 1


@pytest.mark.pool
def test_launch_wait_prints_the_result_as_a_table(pool) -> None:
    out, _err = run(
        "launch", "SELECT g AS n, repeat('ab', g) AS txt, g % 2 = 0 AS even, NULL::int AS none"
        " FROM generate_series(1, 3) g", WAIT)
    h = handle_of(out)
    lines = out.splitlines()
    assert re.fullmatch(rf"job {h.id} stopped in .+: SELECT 3", lines[1])
    assert lines[2:] == [
        " n |  txt   | even | none",
        "---+--------+------+------",
        " 1 | ab     | f    |",
        " 2 | abab   | t    |",
        " 3 | ababab | f    |",
        "(3 rows)",
    ]
    with pytest.raises(pgb.ResultConsumed):  # the CLI fetched it
        h.result()


@pytest.mark.pool
def test_launch_wait_caps_the_rows(pool) -> None:
    out, _err = run("launch", "SELECT g FROM generate_series(1, 500) g", WAIT,
                    "--max-rows", "2", "--set", "work_mem=4MB")
    h = handle_of(out)
    assert "(2 of 500 rows shown; --max-rows to see more)" in out
    assert " 2" in out.splitlines()
    assert " 3" not in out.splitlines()
    assert not JobResultChunk.objects.filter(job_id=h.id).exists()  # nobody can read the rest


@pytest.mark.pool
def test_launch_wait_max_rows_zero_leaves_the_result(pool) -> None:
    out, _err = run("launch", "SELECT current_setting('work_mem') AS wm", WAIT,
                    "--max-rows", "0", "--set", "work_mem=3MB")
    h = handle_of(out)
    assert "rows: 1" in out
    assert h.result().rows == [("3MB",)]


@pytest.mark.pool
def test_launch_wait_prints_notices_and_tag(pool) -> None:
    out, err = run(
        "launch",
        "DO $$BEGIN RAISE NOTICE 'first'; RAISE WARNING 'second' USING DETAIL = 'more',"
        " HINT = 'do this'; END$$; CREATE TEMP TABLE t (a int); INSERT INTO t VALUES (1), (2)",
        WAIT, "--submit",
    )
    assert re.search(r"stopped in .+: INSERT 0 2", out)
    assert "rows: 2" in out
    notices = [line for line in err.splitlines() if not line.startswith("CONTEXT")]
    assert notices == ["NOTICE:  first", "WARNING:  second", "DETAIL:  more", "HINT:  do this"]


@pytest.mark.pool
def test_launch_wait_failed_job_exits_non_zero_with_the_error(pool) -> None:
    text = fails("launch", "SELECT 1;\nSELECT 1/0 AS boom", WAIT,
                 match=r"ended error \(SQLSTATE 22012\)")
    assert "ERROR:  22012: division by zero" in text
    assert "CONDITION:  division_by_zero" in text

    text = fails("launch", "SELECT nosuch\n  FROM pg_class", WAIT, match="42703")
    assert 'ERROR:  42703: column "nosuch" does not exist' in text
    assert "LINE 1: SELECT nosuch\n               ^" in text

    text = fails("launch", "DO $$BEGIN RAISE EXCEPTION 'custom' USING DETAIL = 'why',"
                 " HINT = 'fix it', ERRCODE = 'P0001'; END$$", WAIT, match="P0001")
    assert "DETAIL:  why" in text
    assert "HINT:  fix it" in text
    assert "CONTEXT:  PL/pgSQL function" in text


@pytest.mark.pool
def test_launch_wait_gives_up_after_wait_timeout(pool) -> None:
    out = fails("launch", "SELECT pg_sleep(120)", "--wait", "--wait-timeout", "0.2",
                match=r"job \d+ is still (queued|running) after 200 ms; it keeps running")
    h = handle_of(out)
    assert h.state in ("queued", "running")
    h.cancel()
    assert h.state == "canceled"


@pytest.mark.pool
def test_launch_wait_timeout(pool) -> None:
    fails("launch", "SELECT pg_sleep(60)", "--timeout", "0.2", WAIT,
          match=r"ended error \(SQLSTATE 57014\)")


# --- list --------------------------------------------------------------------------------------


def _list_rows(out: str) -> list[list[str]]:
    lines = out.splitlines()
    assert lines[1].startswith("----+") or set(lines[1]) <= {"-", "+"}
    return [[c.strip() for c in line.split("|")] for line in lines[2:-1]]


def test_list_shows_jobs_newest_first_with_filters() -> None:
    alice = User.objects.create_user("alice")
    a = make_job("stopped", owner=alice, label="nightly vacuum", sql="VACUUM\n   big_table",
                 row_count=0, command_tag="VACUUM")
    b = make_job("error", label="report", error_sqlstate="22012", error_message="boom")
    c = make_job("running", label="Nightly reindex", progress_pct=42.4, sql="x" * 500)
    d = make_job("queued")

    out, _err = run("list")
    header = out.splitlines()[0]
    for col in ("id", "state", "label", "owner", "created", "duration", "rows", "sqlstate",
                "sql"):
        assert col in header
    rows = _list_rows(out)
    assert [int(r[0]) for r in rows] == [d.id, c.id, b.id, a.id]
    assert rows[3][1:4] == ["stopped", "nightly vacuum", "alice"]
    assert rows[3][5] == "2.0 s"
    assert rows[3][6] == "0"
    assert rows[3][8] == "VACUUM big_table"  # one line
    assert rows[2][7] == "22012"
    assert rows[1][1] == "running 42%"
    assert rows[1][8].endswith("…")
    assert len(rows[1][8]) <= 60
    assert out.splitlines()[-1] == "(4 jobs)"
    # columns are aligned: every line has its separators at the same places
    lines = [ln for ln in out.splitlines() if "|" in ln]
    assert len(lines) == 5
    assert len({tuple(m.start() for m in re.finditer(r"\|", ln)) for ln in lines}) == 1

    assert [int(r[0]) for r in _list_rows(run("list", "--state", "error")[0])] == [b.id]
    assert [int(r[0]) for r in _list_rows(run("list", "--state", "active")[0])] == [d.id, c.id]
    assert [int(r[0]) for r in _list_rows(run("list", "--state", "queued,stopped")[0])] == [
        d.id, a.id]
    assert [int(r[0]) for r in _list_rows(run("list", "--owner", "alice")[0])] == [a.id]
    assert [int(r[0]) for r in _list_rows(run("list", "--label", "NIGHTLY")[0])] == [c.id, a.id]
    out, _err = run("list", "--limit", "2")
    assert [int(r[0]) for r in _list_rows(out)] == [d.id, c.id]
    assert "first 2 jobs shown" in out
    assert run("list", "--label", "nothing like it")[0].strip() == "no jobs"


def test_list_bad_input() -> None:
    fails("list", "--state", "sleeping", match="unknown state 'sleeping'")
    fails("list", "--owner", "ghost", match="no user named 'ghost'")
    fails("list", "--limit", "0", match="must be >= 1")
    fails("list", "--limit", "x", match="not an integer")


# --- show --------------------------------------------------------------------------------------


def test_show_prints_everything_about_a_job() -> None:
    alice = User.objects.create_user("alice")
    job = make_job(
        "error", owner=alice, label="monthly report", sql="SELECT 1;\nSELECT nosuch FROM t",
        role="reporter", gucs={"work_mem": "64MB", "TimeZone": "UTC"}, timeout=30.0,
        max_result_bytes=1 << 20, progress_pct=50.0, progress_message="halfway",
        progress_at=None, command_tag="SELECT 1", row_count=1,
        notices=[{"severity": "NOTICE", "message": "first", "sqlstate": "00000", "detail": None,
                  "hint": None, "context": None},
                 {"severity": "WARNING", "message": "second", "sqlstate": "01000",
                  "detail": "some detail", "hint": "a hint", "context": None}],
        notices_dropped=3, error_sqlstate="42703",
        error_message='column "nosuch" does not exist', error_hint="Perhaps you meant x.",
        error_context="SQL statement", error_position=18,
    )
    out, _err = run("show", str(job.id))
    for text in (
        f"Job {job.id} — monthly report", "state:        error", "owner:        alice",
        "role:         reporter", "timeout:      30.0 s", "result limit: 1.0 MB",
        "    SELECT 1;\n    SELECT nosuch FROM t", "    TimeZone = UTC\n    work_mem = 64MB",
        "created:", "started:", "queued for", "finished:", "run time: 2.0 s",
        "done:    50%", "message: halfway",
        "Notices (5):\nNOTICE:  first\nWARNING:  second\nDETAIL:  some detail\nHINT:  a hint\n"
        "(3 more notices were not kept",
        'ERROR:  42703: column "nosuch" does not exist', "CONDITION:  undefined_column",
        "HINT:  Perhaps you meant x.", "LINE 2: SELECT nosuch FROM t\n               ^",
        "CONTEXT:  SQL statement", "command tag: SELECT 1", "rows:        1",
    ):
        assert text in out, text
    assert str(job.cookie) not in out  # operators use ids; the capability is not printed
    # the handle form works too
    assert run("show", f"{job.id}:{job.cookie}")[0] == out


@pytest.mark.pool
def test_show_previews_the_result_without_consuming_it(pool) -> None:
    h = pgb.launch("SELECT g AS n, g * 1.5 AS x FROM generate_series(1, 30) g", label="preview")
    assert h.wait(timeout=60)
    out, _err = run("show", str(h.id), "--rows", "3")
    assert "Result preview (not consumed):" in out
    assert " n |  x\n---+-----\n 1 | 1.5\n 2 | 3.0\n 3 | 4.5\n(3 of 30 rows shown" in out
    assert "30 rows stored" in out
    assert "columns:\n    n  integer\n    x  numeric" in out
    assert "worker:" in out
    assert len(h.result().rows) == 30  # still there
    out, _err = run("show", str(h.id))
    assert "consumed" in out
    assert "Result preview" not in out


def test_show_bad_input() -> None:
    fails("show", "12345", match="no job with id 12345")
    fails("show", "abc", match="'abc' is not a job id")
    fails("show", "-3", match="not a job id")
    fails("show", "0", match="not a job id")


# --- cancel / detach ---------------------------------------------------------------------------


def test_cancel_reports_per_id() -> None:
    queued = make_job("queued")
    finished = make_job("stopped")
    out = fails("cancel", str(queued.id), str(finished.id), "99999", match="no job with id 99999")
    assert out.splitlines() == [
        f"{queued.id}: canceled (it had not started)",
        f"{finished.id}: already finished (stopped)",
        "99999: not found",
    ]
    queued.refresh_from_db()
    assert queued.state == "canceled"
    assert queued.error_sqlstate == "57014"
    finished.refresh_from_db()
    assert finished.state == "stopped"


def test_cancel_bad_input() -> None:
    job = make_job("queued")
    fails("cancel", str(job.id), "--grace", "-1", match="finite number of seconds >= 0")
    fails("cancel", str(job.id), "--grace", "nan", match="finite number")
    fails("cancel", "x1", match="'x1' is not a job id")
    fails("cancel", match="the following arguments are required: ID")
    job.refresh_from_db()
    assert job.state == "queued"


@pytest.mark.pool
def test_cancel_running_job_and_wait(pool) -> None:
    h = pgb.launch("SELECT pg_sleep(120)")
    wait_for_states([h.id], {"running"})
    out, _err = run("cancel", str(h), WAIT)
    assert out.splitlines() == [f"{h.id}: cancel requested", f"{h.id}: canceled"]
    assert h.error_info().sqlstate == "57014"


@pytest.mark.pool
def test_cancel_with_grace(pool) -> None:
    h = pgb.launch("SELECT pg_sleep(120)")
    wait_for_states([h.id], {"running"})
    out, _err = run("cancel", str(h.id), "--grace", "0.3", WAIT)
    assert out.splitlines()[0] == f"{h.id}: cancel requested: it may run 300 ms more"
    assert out.splitlines()[1] == f"{h.id}: canceled"
    job = Job.objects.get(pk=h.id)
    assert job.cancel_deadline > job.cancel_requested_at


def test_detach_reports_per_id() -> None:
    queued = make_job("queued")
    finished = make_job("stopped")
    add_chunks(finished)
    out = fails("detach", str(queued.id), str(finished.id), "77777", str(queued.id),
                match="no job with id 77777")
    assert out.splitlines() == [
        f"{queued.id}: detached: it keeps running (queued); its result will be dropped",
        f"{finished.id}: detached (stopped): its stored result was dropped",
        "77777: not found",
    ]
    assert not JobResultChunk.objects.exists()
    out, _err = run("detach", str(queued.id))
    assert out.strip() == f"{queued.id}: already detached (queued)"
    assert Job.objects.get(pk=queued.id).state == "queued"  # still runs later


# --- stats -------------------------------------------------------------------------------------


def test_stats() -> None:
    alice = User.objects.create_user("alice")
    make_job("stopped", run=timedelta(milliseconds=100))
    make_job("error", owner=alice, run=timedelta(milliseconds=300))
    make_job("canceled", owner=alice, run=None)
    make_job("running", owner=alice)
    out, _err = run("stats")
    assert out.splitlines() == [
        "launched:     4",
        "completed:    1",
        "failed:       1",
        "canceled:     1",
        "active:       1",
        "avg run time: 200 ms",
        "max workers:  16 per owner",
    ]
    data = json.loads(run("stats", "--owner", "alice", "--json")[0])
    assert data == {"workers_launched": 3, "workers_completed": 0, "workers_failed": 1,
                    "workers_canceled": 1, "workers_active": 1, "avg_execution_ms": 300.0,
                    "max_workers": 16}
    fails("stats", "--owner", "ghost", match="no user named 'ghost'")


# --- purge -------------------------------------------------------------------------------------


def test_purge_command() -> None:
    alice = User.objects.create_user("alice")
    make_job("stopped", owner=alice, finished_ago=timedelta(days=40))
    make_job("error", finished_ago=timedelta(days=40))
    add_chunks(make_job("stopped", finished_ago=timedelta(days=40)), 2)
    young = make_job("stopped", finished_ago=timedelta(days=2))
    queued = make_job("queued")
    before = json.loads(run("stats", "--json")[0])

    out, _err = run("purge", "--older-than", "30d", "--dry-run")
    assert out.splitlines()[0].startswith(
        "Would purge 3 finished jobs (error 1, stopped 2) that finished before ")
    assert "with 2 result chunks (20 bytes)" in out
    assert Job.objects.count() == 5

    out, _err = run("purge", "--older-than", "30d")
    assert out.splitlines()[0].startswith("Purged 3 finished jobs (error 1, stopped 2)")
    assert "statistics archive" in out
    assert set(Job.objects.values_list("pk", flat=True)) == {young.pk, queued.pk}
    assert json.loads(run("stats", "--json")[0]) == before
    assert JobStatsArchive.objects.get(owner_pk=alice.pk).completed == 1

    # default: JOB_RETENTION
    with override_settings(PGBACKGROUND={"JOB_RETENTION": timedelta(days=1)}):
        out, _err = run("purge")
    assert out.startswith("Purged 1 finished jobs (stopped 1)")
    with override_settings(PGBACKGROUND={"JOB_RETENTION": None}):
        out, _err = run("purge")
    assert "Job retention is off" in out
    assert json.loads(run("stats", "--json")[0]) == before


def test_purge_results_option() -> None:
    job = make_job("stopped", finished_ago=timedelta(hours=3))
    add_chunks(job, 4, size=100)
    out, _err = run("purge", "--older-than", "30d", "--results-older-than", "2h")
    assert ("Dropped the stored results of 1 jobs (the jobs stay): 4 result chunks, 400 bytes."
            in out)
    assert Job.objects.filter(pk=job.pk).exists()
    assert not JobResultChunk.objects.exists()


@pytest.mark.pool
def test_purge_command_never_touches_running_or_queued_jobs(pool) -> None:
    finished = pgb.launch("SELECT 1")
    assert finished.wait(timeout=60)
    sleepers = [pgb.launch("SELECT pg_sleep(120)") for _ in range(3)]
    wait_for_states([h.id for h in sleepers[:2]], {"running"})
    out, _err = run("purge", "--older-than", "0")
    assert out.startswith("Purged 1 finished jobs (stopped 1)")
    assert [h.state for h in sleepers] == ["running", "running", "queued"]
    out, _err = run("cancel", *(str(h.id) for h in sleepers), WAIT)
    assert f"{sleepers[2].id}: canceled (it had not started)" in out
    for h in sleepers:
        assert h.state == "canceled"
        assert h.error_info().sqlstate == "57014"


@pytest.mark.pool
def test_cancel_two_running_jobs_at_once(pool) -> None:
    sleepers = [pgb.launch("SELECT pg_sleep(120)") for _ in range(2)]
    wait_for_states([h.id for h in sleepers], {"running"})
    out, _err = run("cancel", *(str(h.id) for h in sleepers), WAIT)
    assert out.splitlines()[2:] == [f"{h.id}: canceled" for h in sleepers]
    assert [h.state for h in sleepers] == ["canceled", "canceled"]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--older-than", "soon"], "--older-than: invalid duration 'soon'"),
        (["--older-than=-1d"], "invalid duration '-1d'"),
        (["--results-older-than", "3 parsecs"], "--results-older-than: invalid duration"),
        (["--batch-size", "0"], "must be >= 1"),
    ],
)
def test_purge_bad_input(args: list[str], match: str) -> None:
    job = make_job("stopped", finished_ago=timedelta(days=400))
    fails("purge", *args, match=match)
    assert Job.objects.filter(pk=job.pk).exists()


# --- grant / revoke and the operators group ----------------------------------------------------


def _operator_codenames(group: Group) -> set[str]:
    return set(group.permissions.filter(content_type__app_label="pgbackground")
               .values_list("codename", flat=True))


@pytest.mark.django_db(transaction=False)
def test_operators_group_exists_after_migrate() -> None:
    group = Group.objects.get(name=OPERATORS_GROUP)
    assert _operator_codenames(group) == set(OPERATOR_PERMISSIONS) == {
        "launch_job", "view_job", "view_all_jobs", "cancel_all_jobs", "change_job", "delete_job"}


def test_operators_migration_is_reversible() -> None:
    Group.objects.filter(name=OPERATORS_GROUP).delete()  # whatever the flushes left
    call_command("migrate", "pgbackground", "0003", verbosity=0)
    call_command("migrate", "pgbackground", "0002", verbosity=0)
    assert not Group.objects.filter(name=OPERATORS_GROUP).exists()
    # the way forward creates the permissions itself, even when they are missing
    Permission.objects.filter(content_type__app_label="pgbackground").delete()
    call_command("migrate", "pgbackground", verbosity=0)
    group = Group.objects.get(name=OPERATORS_GROUP)
    assert _operator_codenames(group) == set(OPERATOR_PERMISSIONS)


def test_grant_and_revoke_a_user() -> None:
    alice = User.objects.create_user("alice", is_staff=True)
    out, _err = run("grant", "alice")
    assert out.strip() == f"alice added to group '{OPERATORS_GROUP}'."
    alice = User.objects.get(pk=alice.pk)  # fresh permission cache
    for codename in OPERATOR_PERMISSIONS:
        assert alice.has_perm(f"pgbackground.{codename}")
    assert "already in group" in run("grant", "alice")[0]

    out, _err = run("revoke", "alice")
    assert out.strip() == f"alice removed from group '{OPERATORS_GROUP}'."
    alice = User.objects.get(pk=alice.pk)
    assert not alice.has_perm("pgbackground.view_all_jobs")
    assert "was not in group" in run("revoke", "alice")[0]


def test_grant_notes_and_revoke_leftovers() -> None:
    bob = User.objects.create_user("bob", is_staff=False)
    assert "bob is not staff" in run("grant", "bob")[0]
    bob.user_permissions.add(Permission.objects.get(codename="view_all_jobs"))
    out, _err = run("revoke", "bob")
    assert "note: bob still has view_all_jobs" in out
    User.objects.create_superuser("root")
    run("grant", "root")
    assert "root is a superuser" in run("revoke", "root")[0]


def test_grant_recreates_a_deleted_operators_group() -> None:
    Group.objects.filter(name=OPERATORS_GROUP).delete()
    User.objects.create_user("carol")
    run("grant", "carol")
    group = Group.objects.get(name=OPERATORS_GROUP)
    assert _operator_codenames(group) == set(OPERATOR_PERMISSIONS)
    assert group.user_set.filter(username="carol").exists()


def test_grant_and_revoke_a_group() -> None:
    dbas = Group.objects.create(name="dbas")
    dbas.permissions.add(Permission.objects.get(codename="view_job"))
    out, _err = run("grant", "dbas")
    assert out.strip() == (
        "Group 'dbas' now has the operator permissions (added: cancel_all_jobs, change_job,"
        " delete_job, launch_job, view_all_jobs)."
    )
    assert _operator_codenames(dbas) == set(OPERATOR_PERMISSIONS)
    assert "already had every operator permission" in run("grant", "dbas")[0]
    out, _err = run("revoke", "dbas", "--group")
    assert "lost the operator permissions" in out
    assert _operator_codenames(dbas) == set()
    assert "had none of the operator permissions" in run("revoke", "dbas")[0]


def test_grant_ambiguous_name_needs_user_or_group() -> None:
    both = User.objects.create_user("both")
    group = Group.objects.create(name="both")
    fails("grant", "both", match="both a user and a group: say which with --user or --group")
    fails("revoke", "both", match="--user or --group")
    run("grant", "both", "--user")
    assert both.groups.filter(name=OPERATORS_GROUP).exists()
    assert _operator_codenames(group) == set()
    run("grant", "both", "--group")
    assert _operator_codenames(group) == set(OPERATOR_PERMISSIONS)


def test_grant_bad_input() -> None:
    User.objects.create_user("dave")
    Group.objects.create(name="ops")
    fails("grant", "nobody", match="no user or group named 'nobody'")
    fails("revoke", "nobody", match="no user or group named 'nobody'")
    fails("grant", "ops", "--user", match="no user named 'ops'")
    fails("grant", "dave", "--group", match="no group named 'dave'")
    fails("grant", "dave", "--user", "--group", match="not allowed with argument")
    fails("grant", match="the following arguments are required: USER_OR_GROUP")
