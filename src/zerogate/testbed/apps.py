"""Real applications in a topology's "app" namespace: nginx, an OpenSSH server, PostgreSQL.

Each ``start_*`` function writes a private configuration under ``topo.tmp``,
starts the server inside the app namespace through ``topo.popen`` (so the
topology stops it by PID when it closes), bound to ``topo.app_address`` only,
and returns once the server answers a real client run inside the app
namespace. Every app shows the source address it saw, which is how tests tell
SNAT from routed mode:

- nginx, port 80: ``200`` with body ``"$remote_addr\\n"``; port 8080: a fixed
  body (:data:`OTHER_PORT_BODY`), for "a port no policy grants";
- sshd, port 22: root logs in with a fresh key only; ``echo $SSH_CLIENT``;
- PostgreSQL, port 5432: trust authentication for every host (a throwaway
  server in a private namespace); ``select inet_client_addr()``.

The ``*_argv`` helpers build client command lines for ``topo.run(ns, argv)``.

Errors: :class:`AppStartError` (a :class:`TestbedError`); its message says
which server failed and ends with the tail of that server's log.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from zerogate.netops.command import run, spawn
from zerogate.netops.command import stop as stop_processes
from zerogate.testbed.topology import TestbedError, Topology

__all__ = [
    "HTTP_PORT",
    "OTHER_HTTP_PORT",
    "OTHER_PORT_BODY",
    "POSTGRES_PORT",
    "SSH_PORT",
    "AppStartError",
    "Apps",
    "Nginx",
    "Postgres",
    "Sshd",
    "SshdProcess",
    "launch_sshd",
    "netns_launcher",
    "postgres_bindir",
    "render_nginx_conf",
    "render_postgres_settings",
    "render_sshd_config",
    "start_apps",
    "start_nginx",
    "start_postgres",
    "start_sshd",
]

HTTP_PORT = 80
OTHER_HTTP_PORT = 8080
OTHER_PORT_BODY = "zerogate testbed: port 8080\n"
SSH_PORT = 22
POSTGRES_PORT = 5432
START_TIMEOUT = 20.0
CLIENT_TIMEOUT = 3  # seconds, for the connect timeout of curl/ssh/psql command lines
PG_LIB_DIR = Path("/usr/lib/postgresql")
PG_OS_USER = "postgres"
SSHD_PRIVSEP_DIR = Path("/run/sshd")
_LOG_TAIL = 30

Host = str | IPv4Address


class AppStartError(TestbedError):
    """An app server did not start or does not answer; the message ends with its log tail."""


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-_LOG_TAIL:]) or "(log is empty)"


def _wait_until(
    probe: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float
) -> None:
    """Poll ``probe`` until it is true; fail early if the server exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AppStartError(
                f"{what} exited with status {proc.returncode} while starting; {log}:\n{_log_tail(log)}"
            )
        if probe():
            return
        if time.monotonic() > deadline:
            raise AppStartError(f"{what} did not answer within {timeout:g} s; {log}:\n{_log_tail(log)}")
        time.sleep(0.02)  # polling interval, not a guess at the start-up time


# -- nginx -------------------------------------------------------------------


def render_nginx_conf(address: IPv4Address, base: Path) -> str:
    """A self-contained nginx.conf: foreground, all state below ``base``, two servers on ``address``."""
    return f"""\
# zerogate testbed nginx (generated)
daemon off;
master_process on;
worker_processes 1;
user root;
pid {base}/nginx.pid;
error_log {base}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {base}/temp/client_body;
    proxy_temp_path {base}/temp/proxy;
    fastcgi_temp_path {base}/temp/fastcgi;
    uwsgi_temp_path {base}/temp/uwsgi;
    scgi_temp_path {base}/temp/scgi;
    server {{
        listen {address}:{HTTP_PORT};
        location / {{
            return 200 "$remote_addr\\n";
        }}
    }}
    server {{
        listen {address}:{OTHER_HTTP_PORT};
        location / {{
            return 200 "{OTHER_PORT_BODY.strip()}\\n";
        }}
    }}
}}
"""


@dataclass(frozen=True)
class Nginx:
    """nginx on ``address``: port 80 echoes the client address, port 8080 answers :data:`OTHER_PORT_BODY`."""

    address: IPv4Address
    process: subprocess.Popen[bytes]
    log: Path
    port: int = HTTP_PORT
    other_port: int = OTHER_HTTP_PORT

    def url(self, host: Host, port: int | None = None, path: str = "/") -> str:
        return f"http://{host}:{port or self.port}{path}"

    def curl_argv(self, host: Host, port: int | None = None, path: str = "/") -> list[str]:
        """``curl`` printing the body; exit status non-zero when the connection fails."""
        timeouts = ["--connect-timeout", str(CLIENT_TIMEOUT), "--max-time", "10"]
        # --noproxy: an HTTP(S)_PROXY from the caller's environment must not capture testbed traffic.
        return ["curl", "-sS", "--noproxy", "*", *timeouts, self.url(host, port, path)]


def start_nginx(topo: Topology, *, timeout: float = START_TIMEOUT) -> Nginx:
    """Start a private nginx in the app namespace and wait until it answers there."""
    base = topo.tmp / "nginx"
    (base / "temp").mkdir(parents=True)
    conf = base / "nginx.conf"
    conf.write_text(render_nginx_conf(topo.app_address, base))
    log = base / "error.log"  # nginx's own error log and its stderr
    program = shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if program is None:
        raise AppStartError("nginx not found; install the Debian package 'nginx-light'")
    proc = topo.popen("app", [program, "-p", str(base), "-c", str(conf), "-e", str(log)], log=log)
    nginx = Nginx(topo.app_address, proc, log)
    url = nginx.url(topo.app_address)
    probe = ["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1", url]

    def answers() -> bool:
        return topo.run("app", probe, check=False, timeout=5).stdout == "200"

    _wait_until(answers, proc, "nginx", log, timeout)
    return nginx


# -- OpenSSH server -------------------------------------------------------------


def render_sshd_config(
    address: IPv4Address, base: Path, *, port: int = SSH_PORT, users: Sequence[str] = ("root",)
) -> str:
    """sshd_config for key-only logins of ``users`` (root by key only), every path below ``base``;
    a non-root user's key is read from its own ``~/.ssh/authorized_keys`` (sshd reads it as the user)."""
    others = "".join(
        f"Match User {u}\n    AuthorizedKeysFile %h/.ssh/authorized_keys\n" for u in users if u != "root"
    )
    return f"""\
# zerogate testbed sshd (generated): {", ".join(users)} with the testbed key only
ListenAddress {address}:{port}
HostKey {base}/host_ed25519
PidFile none
AuthorizedKeysFile {base}/authorized_keys
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers {" ".join(users)}
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 100:30:200
MaxSessions 100
LogLevel INFO
# Sessions start as if from a shell already: bash then skips ~/.bashrc, so a login
# here never runs the machine's rc files (e.g. a pyenv rehash that waits 60 s on a
# stale lock) and a test's SSH round trip costs only the SSH handshake.
SetEnv SHLVL=1
{others}"""


@dataclass(frozen=True)
class SshdProcess:
    """A private sshd started by :func:`launch_sshd`: its process, log and host key."""

    process: subprocess.Popen[bytes]
    log: Path
    host_public_key: str  # "ssh-ed25519 AAAA..."
    address: IPv4Address
    port: int


Launcher = Callable[[list[str], Path], subprocess.Popen[bytes]]


def netns_launcher(ns: str) -> Launcher:
    """Start argv inside ``ns`` (``ip netns exec`` execs it: the PID is the program's own), output to a log."""

    def launch(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as logf:
            return spawn(["ip", "netns", "exec", ns, *argv], stdout=logf, stderr=logf)

    return launch


def launch_sshd(
    launcher: Launcher,
    base: Path,
    address: IPv4Address,
    authorized_keys: str,
    *,
    port: int = SSH_PORT,
    users: Sequence[str] = ("root",),
    timeout: float = START_TIMEOUT,
) -> SshdProcess:
    """The one sshd starter of the testbed: a fresh host key, the config and
    ``authorized_keys`` below ``base`` (created 0700), sshd started through
    ``launcher`` and waited for until it logs that it listens (or fails with
    its log). The caller owns the process and stops it by PID."""
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    host_public = _keygen(base / "host_ed25519", "zerogate-testbed-host")
    (base / "authorized_keys").write_text(authorized_keys)
    conf = base / "sshd_config"
    conf.write_text(render_sshd_config(address, base, port=port, users=users))
    # sshd insists on its privilege separation directory; Debian's init script
    # normally creates it, and there is no init system here.
    SSHD_PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    sshd_path = shutil.which("sshd", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if sshd_path is None:
        raise AppStartError("sshd not found; install the Debian package 'openssh-server'")
    log = base / "sshd.log"
    # sshd re-executes itself for each connection and needs its absolute path.
    proc = launcher([sshd_path, "-D", "-e", "-f", str(conf)], log)
    try:
        _wait_until(lambda: b"Server listening" in log.read_bytes(), proc, "sshd", log, timeout)
    except BaseException:
        _stop(proc)
        raise
    return SshdProcess(proc, log, host_public, address, port)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    stop_processes([proc])


@dataclass(frozen=True)
class Sshd:
    """OpenSSH on ``address``:22; ``ssh_argv`` logs in as root with the testbed key."""

    address: IPv4Address
    process: subprocess.Popen[bytes]
    log: Path
    key: Path  # the client's private key
    host_public_key: str  # "ssh-ed25519 AAAA..."
    port: int = SSH_PORT
    user: str = "root"

    def ssh_argv(self, host: Host, command: str) -> list[str]:
        """``ssh`` running ``command`` on the app (e.g. ``echo $SSH_CLIENT``), no prompts, no known_hosts."""
        return [
            "ssh", "-F", "/dev/null", "-i", str(self.key), "-p", str(self.port),
            "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={CLIENT_TIMEOUT}", "-o", "LogLevel=ERROR",
            f"{self.user}@{host}", command,
        ]  # fmt: skip


def _keygen(path: Path, comment: str) -> str:
    """Create an ed25519 key pair without passphrase; return the public key line."""
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], timeout=30)
    return path.with_suffix(".pub").read_text().strip()


def start_sshd(topo: Topology, *, timeout: float = START_TIMEOUT) -> Sshd:
    """Start a private sshd in the app namespace; wait until root can log in with the testbed key."""
    base = topo.tmp / "sshd"
    base.mkdir(mode=0o700)
    client_public = _keygen(base / "client_ed25519", "zerogate-testbed-client")
    started = launch_sshd(
        lambda argv, log: topo.popen("app", argv, log=log),
        base,
        topo.app_address,
        client_public + "\n",
        timeout=timeout,
    )
    proc, log, host_public = started.process, started.log, started.host_public_key
    sshd = Sshd(topo.app_address, proc, log, base / "client_ed25519", host_public)
    key_blob = host_public.split()[1]
    scan = ["ssh-keyscan", "-T", "1", "-t", "ed25519", "-p", str(SSH_PORT), str(topo.app_address)]

    def answers() -> bool:
        return key_blob in topo.run("app", scan, check=False, timeout=5).stdout

    _wait_until(answers, proc, "sshd", log, timeout)
    login = topo.run("app", sshd.ssh_argv(topo.app_address, "true"), check=False, timeout=15)
    if login.returncode != 0:
        raise AppStartError(
            f"sshd answers but the key login as root failed ({login.stderr.strip()}); {log}:\n{_log_tail(log)}"
        )
    return sshd


# -- PostgreSQL --------------------------------------------------------------------

# Trust is deliberate: a throwaway server inside a private namespace, holding
# nothing; tests must see exactly which source address reached it.
PG_HBA = """\
# zerogate testbed PostgreSQL (generated): private namespace, trust is deliberate
local   all    all                   trust
host    all    all    0.0.0.0/0      trust
"""


def render_postgres_settings(address: IPv4Address, socket_dir: Path) -> str:
    """Lines appended to postgresql.conf: listen on ``address`` only, no durability."""
    return f"""\
# zerogate testbed (generated)
listen_addresses = '{address}'
port = {POSTGRES_PORT}
unix_socket_directories = '{socket_dir}'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 32MB
max_connections = 100
log_min_messages = warning
log_timezone = 'UTC'
timezone = 'UTC'
"""


def postgres_bindir() -> Path:
    """The bin directory of the newest PostgreSQL under /usr/lib/postgresql."""
    found: list[tuple[tuple[int, ...], Path]] = []
    if PG_LIB_DIR.is_dir():
        for entry in PG_LIB_DIR.iterdir():
            if (entry / "bin" / "postgres").is_file() and (entry / "bin" / "initdb").is_file():
                with contextlib.suppress(ValueError):
                    found.append((tuple(int(p) for p in entry.name.split(".")), entry / "bin"))
    if not found:
        raise AppStartError(
            f"no PostgreSQL server under {PG_LIB_DIR}; install the Debian package 'postgresql'"
        )
    return max(found)[1]


@dataclass(frozen=True)
class Postgres:
    """PostgreSQL on ``address``:5432, superuser ``postgres``, trust authentication."""

    address: IPv4Address
    process: subprocess.Popen[bytes]
    log: Path
    data_dir: Path
    bindir: Path
    port: int = POSTGRES_PORT
    user: str = "postgres"
    dbname: str = "postgres"

    def conninfo(self, host: Host) -> str:
        return (
            f"host={host} port={self.port} user={self.user} dbname={self.dbname} "
            f"connect_timeout={CLIENT_TIMEOUT} sslmode=disable"
        )

    def psql_argv(self, host: Host, sql: str) -> list[str]:
        """``psql`` running ``sql`` and printing bare values (e.g. ``select inet_client_addr()``)."""
        psql = str(self.bindir / "psql")
        return [psql, "-X", "-Atq", "-v", "ON_ERROR_STOP=1", "-d", self.conninfo(host), "-c", sql]


def start_postgres(topo: Topology, *, timeout: float = START_TIMEOUT) -> Postgres:
    """initdb a fresh cluster and run it as the ``postgres`` OS user in the app namespace."""
    bindir = postgres_bindir()
    try:
        pw = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise AppStartError(
            f"OS user {PG_OS_USER!r} does not exist (PostgreSQL refuses to run as root); "
            "install the Debian package 'postgresql'"
        ) from None
    base = topo.tmp / "postgres"
    base.mkdir(mode=0o700)
    os.chown(base, pw.pw_uid, pw.pw_gid)
    data, sockets = base / "data", base / "socket"
    env = {"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir, "LC_ALL": "C", "LANG": "C"}
    init = run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--encoding=UTF8", "--locale=C",
         "--no-sync", "--auth=trust"],
        cwd=base, env=env, timeout=120, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], check=False,
    )  # fmt: skip
    if init.returncode != 0:
        raise AppStartError(f"initdb failed ({init.returncode}):\n{(init.stdout + init.stderr)[-3000:]}")
    sockets.mkdir(mode=0o700)
    os.chown(sockets, pw.pw_uid, pw.pw_gid)
    # Files made by initdb keep their owner when root appends to or rewrites them.
    with open(data / "postgresql.conf", "a") as conf:
        conf.write("\n" + render_postgres_settings(topo.app_address, sockets))
    (data / "pg_hba.conf").write_text(PG_HBA)
    log = base / "postgres.log"
    # setpriv execs the server: the tracked PID is the postmaster itself.
    argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]
    argv += [str(bindir / "postgres"), "-D", str(data)]
    proc = topo.popen("app", argv, log=log, env=env, stop_signal=signal.SIGINT)  # SIGINT: fast shutdown
    pg = Postgres(topo.app_address, proc, log, data, bindir)
    address = str(topo.app_address)
    probe = [str(bindir / "pg_isready"), "-q", "-h", address, "-p", str(POSTGRES_PORT), "-t", "1"]

    def answers() -> bool:
        return topo.run("app", probe, check=False, timeout=5).returncode == 0

    _wait_until(answers, proc, "PostgreSQL", log, timeout)
    return pg


# -- all three ----------------------------------------------------------------------


@dataclass(frozen=True)
class Apps:
    nginx: Nginx
    sshd: Sshd
    postgres: Postgres


def start_apps(topo: Topology, *, timeout: float = START_TIMEOUT) -> Apps:
    """Start nginx, sshd and PostgreSQL at the same time; raise the first failure."""
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="zg-testbed-app") as pool:
        nginx = pool.submit(start_nginx, topo, timeout=timeout)
        sshd = pool.submit(start_sshd, topo, timeout=timeout)
        postgres = pool.submit(start_postgres, topo, timeout=timeout)
        return Apps(nginx.result(), sshd.result(), postgres.result())
