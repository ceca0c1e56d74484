#!/usr/bin/env bash
# Run pgbackground's checks and test suite from nothing: system packages, PostgreSQL, the venv,
# lint (ruff), types (mypy), then pytest. Extra arguments go to pytest (e.g. -k cancel).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${VENV:-.venv}

log() { printf '\n==> %s\n' "$*"; }

# PostgreSQL: the tests need a running server (local trust auth unless DATABASE_URL says otherwise).
if [[ -z "${DATABASE_URL:-}" ]] && command -v pg_ctlcluster >/dev/null; then
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        log "starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
        for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
    fi
    psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'pgbackground'" \
        | grep -q 1 || psql -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE pgbackground"
fi

# Chromium for the browser tests comes from Debian (Playwright's own download cannot work here).
if [[ ! -x /usr/bin/chromium ]] && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    log "installing Debian's chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
log "installing pgbackground with its test and lint extras"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[test,lint]"

log "ruff"
"$VENV/bin/ruff" check .
log "mypy"
"$VENV/bin/mypy" pgbackground demo

log "pytest"
# The PostgreSQL-restart test runs in a pytest process of its own, away from the browser and
# event-loop state of the rest of the suite (it restarts a throwaway cluster, nothing shared).
status=0
"$VENV/bin/python" -m pytest "$@" --ignore=tests/test_restart.py || status=$?
log "pytest: the PostgreSQL restart test"
"$VENV/bin/python" -m pytest "$@" tests/test_restart.py || {
    rc=$?
    [[ $rc == 5 ]] || status=$rc  # 5: the arguments selected none of its tests
}
exit $status
