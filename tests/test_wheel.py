"""The wheel is a reusable app: built, installed in a clean venv, used by a throwaway project.

One wheel and one venv per test session (building and installing take a while). The throwaway
project is not the demo: its own settings module, ``pgbackground`` in ``INSTALLED_APPS``, a fresh
database on the local server. Everything it runs uses the venv's Python, never this checkout.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import psycopg
import pytest
from django.conf import settings
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "pgbackground"
# What the wheel is built from: the package and the files pyproject.toml needs.
BUILD_INPUTS = ["pyproject.toml", "README.md", "LICENSE", "LICENSE.txt", "MANIFEST.in", "setup.py",
                "setup.cfg"]
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")


def source_files() -> set[str]:
    """Every file of the package in this checkout, as wheel paths."""
    return {
        p.relative_to(ROOT).as_posix()
        for p in APP.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    }


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the tree (an in-tree build would race other runs)."""
    src = tmp_path_factory.mktemp("wheel-src")
    for name in BUILD_INPUTS:
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    shutil.copytree(APP, src / APP.name, ignore=SKIP)
    out = tmp_path_factory.mktemp("wheel-out")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (whl,) = out.glob("pgbackground-*.whl")
    return whl


@pytest.fixture(scope="session")
def venv_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean venv with only the wheel and its dependencies (from the package index)."""
    venv = tmp_path_factory.mktemp("wheel-venv")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)],
        capture_output=True, text=True, timeout=900, env=clean_env(),
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return python


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything pointing at the checkout or its venv."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE", "DATABASE_URL", "PYTHONHOME"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))
    )
    env.update(PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def wheel_names(whl: Path) -> set[str]:
    with zipfile.ZipFile(whl) as z:
        return set(z.namelist())


def test_wheel_carries_the_whole_app(wheel: Path) -> None:
    names = wheel_names(wheel)
    for required in ("pgbackground/__init__.py", "pgbackground/py.typed",
                     "pgbackground/migrations/__init__.py",
                     "pgbackground/migrations/0001_initial.py",
                     "pgbackground/management/commands/runworkers.py"):
        assert required in names, required
    templates = {n for n in names if n.startswith("pgbackground/templates/")}
    static = {n for n in names if n.startswith("pgbackground/static/")}
    assert templates, "no templates in the wheel"
    assert static, "no static files in the wheel"
    missing = source_files() - names
    assert not missing, f"files of the package missing from the wheel: {sorted(missing)}"
    assert not {n for n in names if n.startswith(("tests/", "demo/", "bench/"))}


# --- a throwaway project in the clean venv ---

SETTINGS = """\
SECRET_KEY = "throwaway-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1"]
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "pgbackground",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "throwaway.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
STATIC_URL = "static/"
"""

URLS = """\
from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
"""

MANAGE = """\
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "throwaway.settings")
from django.core.management import execute_from_command_line

execute_from_command_line(sys.argv)
"""

# Run by the venv's python: the app comes from site-packages, a job runs end to end through the
# API, and the admin renders with the wheel's templates.
END_TO_END = """\
import sys
import zipfile
from pathlib import Path

import django

django.setup()
import pgbackground as pgb
from django.contrib.auth import get_user_model
from django.contrib.staticfiles import finders
from django.template.loader import get_template
from django.test import Client
from django.urls import NoReverseMatch, reverse

site = Path(sys.prefix).resolve()
assert Path(pgb.__file__).resolve().is_relative_to(site), pgb.__file__

h = pgb.launch("SELECT 42")
assert h.wait(timeout=60), h.state
rows = h.result().rows
assert rows == [(42,)], rows
print("JOB", h.id, rows)

names = zipfile.ZipFile(sys.argv[1]).namelist()
for n in names:
    if n.startswith("pgbackground/templates/") and n.endswith(".html"):
        origin = get_template(n.removeprefix("pgbackground/templates/")).origin.name
        assert Path(origin).resolve().is_relative_to(site), origin
    if n.startswith("pgbackground/static/"):
        found = finders.find(n.removeprefix("pgbackground/static/"))
        assert found and Path(found).resolve().is_relative_to(site), (n, found)

admin = get_user_model().objects.create_superuser("admin", "admin@example.com", "pw")
client = Client()
client.force_login(admin)
assert client.get("/admin/").status_code == 200
try:
    changelist = reverse("admin:pgbackground_job_changelist")
except NoReverseMatch:
    print("ADMIN job changelist not registered")
else:
    response = client.get(changelist)
    assert response.status_code == 200, response.status_code
    assert str(h.id).encode() in response.content
    print("ADMIN job changelist ok")
print("END TO END OK")
"""


@pytest.fixture
def fresh_database() -> Iterator[dict[str, str]]:
    """An empty database on the local server, named after this run's test database."""
    s = settings.DATABASES["default"]
    conn_params = {"host": s.get("HOST") or "127.0.0.1", "port": str(s.get("PORT") or 5432),
                   "user": s.get("USER") or "postgres", "password": s.get("PASSWORD") or ""}
    name = os.environ.get("TEST_DATABASE_NAME", "test_pgbackground") + "_wheel"
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(dbname="postgres", autocommit=True, **conn_params) as conn:
        conn.execute(drop)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield {"name": name, **conn_params}
    with psycopg.connect(dbname="postgres", autocommit=True, **conn_params) as conn:
        conn.execute(drop)


class Pool:
    """``manage.py runworkers`` of the throwaway project, in the clean venv."""

    def __init__(self, python: Path, project: Path) -> None:
        self.proc = subprocess.Popen(
            [str(python), "manage.py", "runworkers", "--concurrency", "1"],
            cwd=project, env=clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)
        self._queue.put(None)

    def expect(self, text: str, timeout: float = 60.0) -> None:
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"no {text!r} from runworkers:\n" + "\n".join(self.lines)) from None
            if line is None:
                raise AssertionError(f"runworkers exited ({self.proc.wait()}):\n"
                                     + "\n".join(self.lines))
            if text in line:
                return


@pytest.mark.pool
def test_installed_wheel_runs_a_job_in_a_throwaway_project(
    wheel: Path, venv_python: Path, fresh_database: dict[str, str], tmp_path: Path
) -> None:
    project = tmp_path / "project"
    (project / "throwaway").mkdir(parents=True)
    (project / "throwaway" / "__init__.py").write_text("")
    db = fresh_database
    databases = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": db["name"],
                             "USER": db["user"], "PASSWORD": db["password"], "HOST": db["host"],
                             "PORT": db["port"]}}
    (project / "throwaway" / "settings.py").write_text(f"{SETTINGS}DATABASES = {databases!r}\n")
    (project / "throwaway" / "urls.py").write_text(URLS)
    (project / "manage.py").write_text(MANAGE)

    def run(*args: str) -> str:
        env = clean_env(DJANGO_SETTINGS_MODULE="throwaway.settings")
        out = subprocess.run([str(venv_python), *args], cwd=project, env=env,
                             capture_output=True, text=True, timeout=300,
                             stdin=subprocess.DEVNULL)
        assert out.returncode == 0, f"{args}:\n{out.stdout}{out.stderr}"
        return out.stdout + out.stderr

    origin = run("-c", "import pgbackground, sys; print(pgbackground.__file__)").strip()
    assert not Path(origin).resolve().is_relative_to(ROOT), origin
    run("manage.py", "migrate", "--no-input")
    run("manage.py", "check")

    pool = Pool(venv_python, project)
    try:
        pool.expect("running")
        out = run("-c", END_TO_END, str(wheel))
        assert "JOB" in out and "ADMIN job changelist ok" in out and "END TO END OK" in out, out
    finally:
        if pool.proc.poll() is None:
            pool.proc.send_signal(signal.SIGTERM)
        try:
            code = pool.proc.wait(90)
        except subprocess.TimeoutExpired:
            pool.proc.kill()
            raise
    assert code == 0, "\n".join(pool.lines)
    assert "pgbackground worker stopped" in "\n".join(pool.lines)
