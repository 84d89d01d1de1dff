"""A private, throwaway PostgreSQL server for the test suite.

``PostgresServer`` runs ``initdb`` into a fresh temporary directory, starts a
``postgres`` process listening only on 127.0.0.1 on a free port, waits until it
accepts connections, and on ``stop()`` shuts it down (``pg_ctl stop -m
immediate``) and deletes the directory. ``stop()`` is also registered with
``atexit`` and run on SIGTERM/SIGHUP, so an interrupted run leaves no server and
no directory behind. Only the process this module started is ever signalled.

PostgreSQL refuses to run as root. When the tests run as root (CI does), the
server runs as the ``postgres`` OS user that the Debian ``postgresql`` package
creates (``scripts/bootstrap`` installs it); otherwise it runs as the current
user. The database superuser is always ``postgres``.

Errors: everything this module raises is a ``PostgresServerError`` whose message
says what failed and, when the server itself failed, ends with its log tail.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from zerogate.testbed.ports import free_port
from zerogate.testbed.watchdog import dismiss_watchdog, start_watchdog

__all__ = ["PostgresServer", "PostgresServerError", "find_bindir"]

PG_LIB_DIR = Path("/usr/lib/postgresql")
SERVER_OS_USER = "postgres"
SUPERUSER = "postgres"
MAINTENANCE_DB = "postgres"
BOOTSTRAP_HINT = "run scripts/bootstrap as root to install the Debian 'postgresql' package"

# Settings for a disposable server: durability is pointless for data that is
# deleted at the end of the run, and turning it off makes DDL-heavy tests fast.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "100",
    "log_min_messages": "warning",
    "log_timezone": "'UTC'",
    "timezone": "'UTC'",
}

# Trust auth is acceptable only because this is a throwaway server bound to the
# loopback address, with its unix socket in a 0700 directory; nothing remote can
# reach it and it holds only test data.
PG_HBA = """\
# zerogate test server: disposable, loopback only; trust is deliberate.
host    all    all    127.0.0.1/32    trust
"""

_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_PORT_IN_USE = "Address already in use"
_START_ATTEMPTS = 5
_LOG_TAIL_LINES = 40


class PostgresServerError(RuntimeError):
    """The test PostgreSQL server could not be found, started, used or stopped."""


@dataclass(frozen=True)
class _RunAs:
    """The OS identity the server's programs run under (None: the current user)."""

    uid: int | None = None
    gid: int | None = None
    home: str = "/"

    def popen_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        # extra_groups=[] drops root's supplementary groups as well.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def find_bindir() -> Path:
    """Return the bin directory of the newest PostgreSQL under /usr/lib/postgresql."""
    versions: list[tuple[tuple[int, ...], Path]] = []
    if PG_LIB_DIR.is_dir():
        for entry in PG_LIB_DIR.iterdir():
            bindir = entry / "bin"
            if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
                with contextlib.suppress(ValueError):
                    versions.append((tuple(int(p) for p in entry.name.split(".")), bindir))
    if not versions:
        raise PostgresServerError(f"no PostgreSQL server binaries found under {PG_LIB_DIR}; {BOOTSTRAP_HINT}")
    return max(versions)[1]


def _run_as() -> _RunAs:
    if os.geteuid() != 0:
        return _RunAs(home=os.environ.get("HOME", "/"))
    try:
        pw = pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        raise PostgresServerError(
            f"tests run as root but OS user {SERVER_OS_USER!r} does not exist, and "
            f"PostgreSQL refuses to run as root; {BOOTSTRAP_HINT}"
        ) from None
    return _RunAs(uid=pw.pw_uid, gid=pw.pw_gid, home=pw.pw_dir)


def _temp_parent() -> str:
    """A directory the server user can traverse (pytest's tmp dirs are 0700)."""
    parent = tempfile.gettempdir()
    path = Path(parent).resolve()
    for p in (path, *path.parents):
        if not p.stat().st_mode & stat.S_IXOTH:
            return "/tmp"
    return parent


def _clean_env(home: str) -> dict[str, str]:
    # No PG* variables from the caller's environment: they would redirect
    # clients to some other server.
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "LC_ALL": "C",
        "LANG": "C",
    }


class PostgresServer:
    """One private PostgreSQL server on 127.0.0.1; ``with PostgresServer() as pg: ...``."""

    def __init__(self, *, start_timeout: float = 30.0) -> None:
        self.start_timeout = start_timeout
        self.bindir = find_bindir()
        self._run_as = _run_as()
        self._env = _clean_env(self._run_as.home)
        self._base: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None

    # -- addresses ---------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None or self._proc is None:
            raise PostgresServerError("the PostgreSQL test server is not running; call start()")
        return self._port

    @property
    def url(self) -> str:
        """SQLAlchemy-style URL of the maintenance database (no driver suffix)."""
        return self.url_for(MAINTENANCE_DB)

    @property
    def dsn(self) -> str:
        """libpq keyword/value connection string for psql and friends."""
        return self.dsn_for(MAINTENANCE_DB)

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def dsn_for(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname}"

    @property
    def base_dir(self) -> Path | None:
        """The temporary directory holding data, socket and log (None when stopped)."""
        return self._base

    @property
    def data_dir(self) -> Path | None:
        return None if self._base is None else self._base / "data"

    def bin(self, program: str) -> str:
        """Absolute path of a PostgreSQL program (psql, pg_dump, ...) of this version."""
        return str(self.bindir / program)

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> PostgresServer:
        if self._base is not None:
            raise PostgresServerError("the PostgreSQL test server is already started")
        began = time.monotonic()
        _register(self)
        try:
            self._base = Path(tempfile.mkdtemp(prefix="zerogate-pg-", dir=_temp_parent()))
            if self._run_as.uid is not None:
                os.chown(self._base, self._run_as.uid, self._run_as.gid or 0)
            os.chmod(self._base, 0o700)
            self._watchdog = _start_watchdog(self._base)
            self._initdb()
            self._launch()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop the server (if running) and delete its directory. Idempotent."""
        proc, self._proc = self._proc, None
        base, self._base = self._base, None
        watchdog, self._watchdog = self._watchdog, None
        try:
            if proc is not None and proc.poll() is None and base is not None:
                self._pg_ctl_stop(base)
                self._reap(proc)
        finally:
            if base is not None:
                shutil.rmtree(base, ignore_errors=True)
            if watchdog is not None:
                dismiss_watchdog(watchdog)
            _unregister(self)

    # -- databases ---------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL (like ``url``)."""
        self._check_name(name)
        # FILE_COPY is the fastest strategy for a tiny template with fsync off.
        self.psql(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting any session still using it."""
        self._check_name(name)
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def psql(self, sql: str, dbname: str = MAINTENANCE_DB) -> str:
        """Run SQL through the real psql client; return its unaligned output."""
        argv = [
            self.bin("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-Atq",
            "-d", self.dsn_for(dbname), "-c", sql,
        ]  # fmt: skip
        done = subprocess.run(argv, env=self._env, capture_output=True, timeout=60)
        if done.returncode != 0:
            raise PostgresServerError(
                f"psql failed ({done.returncode}) running {sql!r}: "
                f"{done.stderr.decode(errors='replace').strip()}"
            )
        return done.stdout.decode()

    @staticmethod
    def _check_name(name: str) -> None:
        if not _DB_NAME.fullmatch(name):
            raise PostgresServerError(
                f"invalid test database name {name!r}: use 1-63 of [a-z0-9_], not starting with a digit"
            )

    # -- internals ---------------------------------------------------------

    def _as_server_user(
        self, argv: list[str], *, cwd: Path, **kwargs: Any
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            argv,
            env=self._env,
            cwd=cwd,
            capture_output=True,
            **self._run_as.popen_kwargs(),
            **kwargs,
        )

    def _initdb(self) -> None:
        assert self._base is not None
        data = self._base / "data"
        argv = [
            self.bin("initdb"), "-D", str(data), "-U", SUPERUSER,
            "--encoding=UTF8", "--locale=C", "--no-sync", "--auth=trust",
        ]  # fmt: skip
        done = self._as_server_user(argv, cwd=self._base, timeout=120)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise PostgresServerError(f"initdb failed ({done.returncode}):\n{output[-4000:]}")
        settings = "".join(f"{k} = {v}\n" for k, v in SERVER_SETTINGS.items())
        # initdb made these files as the server user; appending/replacing as
        # root keeps their owner.
        with open(data / "postgresql.conf", "a") as conf:
            conf.write("\n# zerogate test harness\n" + settings)
            conf.write(f"unix_socket_directories = '{self._base / 'socket'}'\n")
        (data / "pg_hba.conf").write_text(PG_HBA)
        socket_dir = self._base / "socket"
        socket_dir.mkdir(mode=0o700)
        if self._run_as.uid is not None:
            os.chown(socket_dir, self._run_as.uid, self._run_as.gid or 0)

    def _launch(self) -> None:
        assert self._base is not None
        log_path = self._base / "postgres.log"
        for _attempt in range(_START_ATTEMPTS):
            port = free_port()
            with open(log_path, "ab") as log:
                # Same process group as the tests: a Ctrl-C in the terminal
                # also reaches the server, which then shuts down by itself.
                self._proc = subprocess.Popen(
                    [self.bin("postgres"), "-D", str(self._base / "data"), "-p", str(port)],
                    env=self._env,
                    cwd=self._base,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    **self._run_as.popen_kwargs(),
                )
            self._port = port
            if self._wait_ready(port):
                return
            self._proc.wait(timeout=10)
            self._proc = None
            if _PORT_IN_USE not in self._log_tail():
                break
        raise PostgresServerError(
            f"PostgreSQL did not start in {self._base}; server log tail:\n{self._log_tail()}"
        )

    def _wait_ready(self, port: int) -> bool:
        """Poll pg_isready until the server accepts connections; False if it died."""
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        argv = [
            self.bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port),
            "-U", SUPERUSER, "-d", MAINTENANCE_DB, "-t", "2",
        ]  # fmt: skip
        while True:
            if self._proc.poll() is not None:
                return False
            if subprocess.run(argv, env=self._env, timeout=10).returncode == 0:
                return True
            if time.monotonic() > deadline:
                raise PostgresServerError(
                    f"PostgreSQL did not accept connections within {self.start_timeout:.0f}s "
                    f"on 127.0.0.1:{port}:\n{self._log_tail()}"
                )
            time.sleep(0.02)  # polling interval, not a wait for a guessed duration

    def _pg_ctl_stop(self, base: Path) -> None:
        argv = [
            self.bin("pg_ctl"), "stop", "-D", str(base / "data"),
            "-m", "immediate", "-w", "-t", "10",
        ]  # fmt: skip
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            self._as_server_user(argv, cwd=base, timeout=20)

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes]) -> None:
        """Wait for the postmaster we started; signal it ourselves if pg_ctl did not."""
        for sig in (None, signal.SIGQUIT, signal.SIGKILL):
            if sig is not None:
                proc.send_signal(sig)  # proc is our own child: the postmaster itself
            try:
                proc.wait(timeout=10)
                return
            except subprocess.TimeoutExpired:
                continue

    def _log_tail(self) -> str:
        if self._base is None:
            return "(no log)"
        try:
            lines = (self._base / "postgres.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-_LOG_TAIL_LINES:])


# -- cleanup if this process dies without running Python cleanup ----------
#
# atexit and signal handlers do not run when the test process is SIGKILLed or
# calls os._exit (a crashed xdist worker, pytest-timeout's thread method). A
# small watchdog process, started per server, holds the read end of a pipe whose
# only writer is the test process; when the read returns EOF, the test process is
# gone (or stop() dismissed it). If the server directory still exists, the
# watchdog stops the postmaster recorded in it -- after checking that this PID
# really is the postmaster of that directory -- and deletes the directory.


def _start_watchdog(base: Path) -> subprocess.Popen[bytes]:
    return start_watchdog([str(Path(__file__).resolve()), "--watchdog", str(base)])


def _postmaster_pid(data: Path) -> int | None:
    """PID from data/postmaster.pid if that process is the postmaster of ``data``."""
    try:
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if str(data).encode() in cmdline else None


def _watchdog_main(base: Path) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    sys.stdin.buffer.read()  # returns at EOF: the test process closed or died
    if not base.exists():
        return  # stopped normally
    pid = _postmaster_pid(base / "data")
    if pid is not None:
        os.kill(pid, signal.SIGQUIT)  # what pg_ctl stop -m immediate sends
        deadline = time.monotonic() + 10
        while _postmaster_pid(base / "data") == pid and time.monotonic() < deadline:
            time.sleep(0.05)
        if _postmaster_pid(base / "data") == pid:
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)


# -- cleanup on interpreter exit and on termination signals -----------------

# Strong references: a server nobody holds any more must still be stopped.
_live: set[PostgresServer] = set()
_previous_handlers: dict[int, Any] = {}
_CLEANUP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _stop_all() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.stop()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _stop_all()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    # Re-deliver with the original disposition so the exit status stays honest.
    signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_signal_handlers() -> None:
    for signum in _CLEANUP_SIGNALS:
        if signum in _previous_handlers:
            continue
        try:
            _previous_handlers[signum] = signal.signal(signum, _on_signal)
        except ValueError:  # not the main thread: rely on atexit and teardown
            return


def _register(server: PostgresServer) -> None:
    _live.add(server)
    _install_signal_handlers()


def _unregister(server: PostgresServer) -> None:
    _live.discard(server)


atexit.register(_stop_all)


if __name__ == "__main__" and sys.argv[1:2] == ["--watchdog"]:
    _watchdog_main(Path(sys.argv[2]))
