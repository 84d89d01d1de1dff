"""A private OpenLDAP ``slapd`` for tests, the demo and benchmarks.

:class:`Slapd` writes a ``slapd.conf`` into a fresh temporary directory (mdb
backend, the core/cosine/inetorgperson/nis schemas and a two-attribute stand-in
for Active Directory's ``computer`` class), seeds the directory offline with
``slapadd`` (suffix, ``ou=computers``, ``ou=groups``, ``ou=services`` with a
read-only and a writer account), starts ``slapd -d none`` in the foreground on
``ldap://127.0.0.1:PORT/`` only, and returns once the root DN can bind. Nothing
outside that directory is read or written (no ``/etc/ldap/slapd.d``, no ldapi
socket). ``stop()`` signals the slapd process this module started, by PID, and
deletes the directory; it also runs at interpreter exit.

Accounts (passwords are random per server and handed to slapd as ``{SSHA}``):

- the root DN ``cn=admin,SUFFIX``: everything;
- :data:`WRITER_RDN` (``cn=segment,ou=services``): reads everything, may change
  the ``member`` attribute of groups under ``ou=groups``, or only of the groups
  named with ``writer_groups`` -- what the segment server needs;
- :data:`READER_RDN` (``cn=reader,ou=services``): reads everything, writes
  nothing.

Opt-in ``config_database=True``: slapd also serves its ``cn=config`` database,
with :data:`CONFIG_ADMIN_DN` (password in :attr:`Slapd.config_admin`) as its
root, so a test can change ACLs online (``olcAccess`` of ``olcDatabase={1}mdb``).
slapd then runs with ``-f slapd.conf -F slapd.d``: it converts the file into the
``slapd.d`` directory inside the same temporary directory and writes online
changes there. The default (no ``cn=config``, ``-f`` only) is unchanged.

When run as root the server drops to the ``openldap`` OS user (the Debian
package creates it) and the directory is handed to that user.

The helpers :meth:`Slapd.ldapmodify` and :meth:`Slapd.ldapsearch` run the real
OpenLDAP clients (``ldap-utils``) as the root DN; :func:`computer_entry`,
:func:`group_entry` and :func:`render_ldif` build entries with escaped DNs.

Errors: :class:`SlapdError` (a :class:`TestbedError`); when slapd itself failed,
its message ends with the server's log tail.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import ldap3
from ldap3.core.exceptions import LDAPException

from zerogate.netops.command import CommandError, command_env, run, spawn
from zerogate.testbed.ports import free_port
from zerogate.testbed.slapd_entries import Entry, computer_entry, group_entry, render_ldif
from zerogate.testbed.topology import TestbedError
from zerogate.testbed.watchdog import dismiss_watchdog, start_watchdog

__all__ = [
    "AD_COMPUTER_SCHEMA",
    "CONFIG_ADMIN_DN",
    "READER_RDN",
    "WRITER_RDN",
    "Entry",
    "Slapd",
    "SlapdError",
    "computer_entry",
    "group_entry",
    "render_ldif",
    "render_slapd_conf",
    "ssha",
]

SUFFIX = "dc=zerogate,dc=test"
ROOT_RDN = "cn=admin"
WRITER_RDN = "cn=segment,ou=services"
READER_RDN = "cn=reader,ou=services"
CONFIG_ADMIN_DN = "cn=admin,cn=config"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
SERVER_OS_USER = "openldap"
START_TIMEOUT = 30.0
CLIENT_TIMEOUT = 30.0
_START_ATTEMPTS = 5
_LOG_TAIL = 40
_PORT_IN_USE = "Address already in use"

# OpenLDAP ships no schema for AD's dNSHostName; this stand-in (AD's own OIDs)
# lets tests build the "AD shape" of a computer entry next to device/ipHost.
AD_COMPUTER_SCHEMA = """\
# zerogate testbed: a minimal stand-in for Active Directory's computer class
attributetype ( 1.2.840.113556.1.4.619 NAME 'dNSHostName'
    EQUALITY caseIgnoreMatch
    SUBSTR caseIgnoreSubstringsMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
objectclass ( 1.2.840.113556.1.5.1.30 NAME 'computer'
    SUP top AUXILIARY
    MAY dNSHostName )
"""


class SlapdError(TestbedError):
    """The test slapd could not be configured, started, used or stopped."""


def ssha(password: str) -> str:
    """``{SSHA}`` hash of ``password`` (salted SHA-1, what slappasswd produces by default)."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt, usedforsecurity=False).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def render_slapd_conf(
    base: Path,
    suffix: str,
    root_dn: str,
    root_hash: str,
    writer_groups: Sequence[str] = (),
    config_root_hash: str | None = None,
) -> str:
    """slapd.conf for one mdb database below ``base``; the ``member`` attribute of the
    ``writer_groups`` (DNs) writable by the writer, or of every group under ``ou=groups``
    when none are named. With ``config_root_hash``, a ``cn=config`` database whose
    root is :data:`CONFIG_ADMIN_DN` comes first."""
    schemas = "".join(
        f"include {SCHEMA_DIR}/{name}.schema\n" for name in ("core", "cosine", "inetorgperson", "nis")
    )
    writer = f"{WRITER_RDN},{suffix}"
    targets = [f'dn.exact="{dn}"' for dn in writer_groups] or [f'dn.subtree="ou=groups,{suffix}"']
    writable = "".join(
        f'access to {target} attrs=member\n    by dn.exact="{writer}" write\n    by users read\n    by * none\n'
        for target in targets
    )
    config = ""
    if config_root_hash is not None:
        config = f'database config\nrootdn "{CONFIG_ADMIN_DN}"\nrootpw {config_root_hash}\n\n'
    return f"""\
# zerogate testbed slapd (generated)
{schemas}include {base}/ad-computer.schema
pidfile {base}/slapd.pid
argsfile {base}/slapd.args
modulepath {MODULE_DIR}
moduleload back_mdb
sizelimit unlimited

{config}database mdb
maxsize 1073741824
suffix "{suffix}"
rootdn "{root_dn}"
rootpw {root_hash}
directory {base}/data
index objectClass eq
index cn eq,sub
index member eq

access to attrs=userPassword
    by anonymous auth
    by * none
{writable}access to *
    by users read
    by * none
"""


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-_LOG_TAIL:]) or "(log is empty)"


def _find(program: str) -> str:
    path = shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        package = "slapd" if program.startswith("slap") else "ldap-utils"
        raise SlapdError(f"{program} not found; install the Debian package {package!r}")
    return path


@dataclass(frozen=True)
class _Account:
    dn: str
    password: str = field(repr=False)


class Slapd:
    """One private slapd on 127.0.0.1; ``with Slapd() as ldap: ...``."""

    def __init__(
        self,
        *,
        suffix: str = SUFFIX,
        start_timeout: float = START_TIMEOUT,
        writer_groups: Sequence[str] = (),
        config_database: bool = False,
    ) -> None:
        self.suffix = suffix
        self.writer_groups = tuple(writer_groups)  # empty: the writer may change every group's members
        self.computers_dn = f"ou=computers,{suffix}"
        self.groups_dn = f"ou=groups,{suffix}"
        self.start_timeout = start_timeout
        self.root = _Account(f"{ROOT_RDN},{suffix}", secrets.token_urlsafe(18))
        self.writer = _Account(f"{WRITER_RDN},{suffix}", secrets.token_urlsafe(18))
        self.reader = _Account(f"{READER_RDN},{suffix}", secrets.token_urlsafe(18))
        # The cn=config root (None: slapd serves no cn=config, the default).
        self.config_admin = _Account(CONFIG_ADMIN_DN, secrets.token_urlsafe(18)) if config_database else None
        self._base: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self.start_seconds: float | None = None

    def __repr__(self) -> str:  # no passwords
        return f"Slapd(suffix={self.suffix!r}, port={self._port}, base={self._base})"

    # -- addresses ---------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None or self._proc is None:
            raise SlapdError("the test slapd is not running; call start()")
        return self._port

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def base_dir(self) -> Path | None:
        """The temporary directory holding config, data and ``slapd.log`` (None when stopped)."""
        return self._base

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Slapd:
        # ``with Slapd().start(entries):`` works too.
        return self if self._base is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, entries: Iterable[Entry] = ()) -> Slapd:
        """Configure, seed (base entries + ``entries``, offline), start and wait until binds answer."""
        if self._base is not None:
            raise SlapdError("the test slapd is already started")
        began = time.monotonic()
        _live.add(self)
        try:
            self._base = Path(tempfile.mkdtemp(prefix="zerogate-slapd-", dir="/tmp"))
            self._watchdog = _start_watchdog(self._base)
            self._configure(entries)
            self._launch()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop the slapd this object started (by PID) and delete its directory. Idempotent."""
        proc, self._proc = self._proc, None
        base, self._base = self._base, None
        watchdog, self._watchdog = self._watchdog, None
        try:
            if proc is not None:
                _terminate(proc)
        finally:
            if base is not None:
                shutil.rmtree(base, ignore_errors=True)
            if watchdog is not None:
                dismiss_watchdog(watchdog)
            _live.discard(self)

    # -- clients -----------------------------------------------------------

    def ldapmodify(self, ldif: str, *, add: bool = False) -> str:
        """Apply ``ldif`` with the real ``ldapmodify`` (``-a``: add entries) as the root DN."""
        argv = [_find("ldapmodify"), *self._client_args(), *(["-a"] if add else [])]
        return self._client(argv, ldif)

    def add_entries(self, entries: Iterable[Entry]) -> None:
        """Add entries online (``ldapmodify -a``)."""
        self.ldapmodify(render_ldif(entries), add=True)

    def ldapsearch(self, base: str, filter: str = "(objectClass=*)", *attrs: str, scope: str = "sub") -> str:
        """LDIF printed by the real ``ldapsearch`` (as the root DN, lines not wrapped)."""
        argv = [_find("ldapsearch"), *self._client_args(), "-LLL", "-o", "ldif-wrap=no"]
        argv += ["-s", scope, "-b", base, filter, *attrs]
        return self._client(argv, None)

    def _client_args(self) -> list[str]:
        assert self._base is not None
        return ["-x", "-H", self.url, "-D", self.root.dn, "-y", str(self._base / "root.pw")]

    def _client(self, argv: list[str], stdin: str | None) -> str:
        # LDAPNOINIT: ignore /etc/ldap/ldap.conf and ~/.ldaprc.
        env = command_env({"PATH": "/usr/bin:/bin", "LDAPNOINIT": "1"})
        try:
            return run(argv, input=stdin, env=env, timeout=CLIENT_TIMEOUT).stdout
        except CommandError as exc:
            raise SlapdError(f"{Path(argv[0]).name} against {self.url} failed: {exc.stderr}") from None

    # -- internals ---------------------------------------------------------

    def _base_entries(self) -> list[Entry]:
        dc = self.suffix.split(",", 1)[0].split("=", 1)[1]
        people = {"objectClass": ["organizationalRole", "simpleSecurityObject"]}
        return [
            (self.suffix, {"objectClass": ["dcObject", "organization"], "dc": [dc], "o": ["zerogate test"]}),
            (self.computers_dn, {"objectClass": ["organizationalUnit"], "ou": ["computers"]}),
            (self.groups_dn, {"objectClass": ["organizationalUnit"], "ou": ["groups"]}),
            (f"ou=services,{self.suffix}", {"objectClass": ["organizationalUnit"], "ou": ["services"]}),
            (self.writer.dn, {**people, "cn": ["segment"], "userPassword": [ssha(self.writer.password)]}),
            (self.reader.dn, {**people, "cn": ["reader"], "userPassword": [ssha(self.reader.password)]}),
        ]

    def _configure(self, entries: Iterable[Entry]) -> None:
        base = self._base
        assert base is not None
        (base / "data").mkdir()
        (base / "ad-computer.schema").write_text(AD_COMPUTER_SCHEMA)
        conf = base / "slapd.conf"
        config_hash = None if self.config_admin is None else ssha(self.config_admin.password)
        conf.write_text(
            render_slapd_conf(
                base, self.suffix, self.root.dn, ssha(self.root.password), self.writer_groups, config_hash
            )
        )
        pw_file = base / "root.pw"
        pw_file.touch(mode=0o600)
        pw_file.write_text(self.root.password)  # -y reads the whole file: no newline
        seed = base / "seed.ldif"
        seed.write_text(render_ldif([*self._base_entries(), *entries]))
        argv = [_find("slapadd"), "-q", "-f", str(conf), "-b", self.suffix, "-l", str(seed)]
        try:
            run(argv, env=command_env({"PATH": "/usr/bin:/bin"}), timeout=300)
        except CommandError as exc:
            raise SlapdError(f"slapadd could not load the seed entries: {exc.stderr}") from None
        owner = _server_user()
        if owner is not None:
            for path in (base, *base.rglob("*")):
                if path != pw_file:
                    os.chown(path, owner.pw_uid, owner.pw_gid)
        os.chmod(base, 0o700)

    def _launch(self) -> None:
        base = self._base
        assert base is not None
        log = base / "slapd.log"
        owner = _server_user()
        privs = [] if owner is None else ["-u", owner.pw_name, "-g", str(owner.pw_gid)]
        for _attempt in range(_START_ATTEMPTS):
            port = free_port()
            # -d none: stay in the foreground (we keep the PID); errors and start-up messages only.
            argv = [_find("slapd"), "-d", "none", "-f", str(base / "slapd.conf")]
            if self.config_admin is not None:
                argv += ["-F", str(self._fresh_config_dir())]
            argv += ["-h", f"ldap://127.0.0.1:{port}/"]
            with open(log, "ab") as out:
                self._proc = spawn([*argv, *privs], stdout=out, stderr=subprocess.STDOUT, cwd=base)
            self._port = port
            if self._wait_ready():
                return
            self._proc = None
            if _PORT_IN_USE not in _log_tail(log):
                break
        raise SlapdError(f"slapd did not start in {base}; {log}:\n{_log_tail(log)}")

    def _fresh_config_dir(self) -> Path:
        """An empty ``slapd.d`` for slapd to convert ``slapd.conf`` into (again on a retry)."""
        assert self._base is not None
        config_dir = self._base / "slapd.d"
        shutil.rmtree(config_dir, ignore_errors=True)
        config_dir.mkdir(mode=0o700)
        owner = _server_user()
        if owner is not None:
            os.chown(config_dir, owner.pw_uid, owner.pw_gid)
        return config_dir

    def _wait_ready(self) -> bool:
        """Poll a root bind until it answers; False if slapd exited (e.g. port taken)."""
        assert self._proc is not None and self._base is not None and self._port is not None
        deadline = time.monotonic() + self.start_timeout
        while self._proc.poll() is None:
            # A fresh Server each time: ldap3 shuns an address that refused a connection for seconds.
            server = ldap3.Server("127.0.0.1", port=self._port, connect_timeout=1, get_info=ldap3.NONE)
            conn = ldap3.Connection(server, self.root.dn, self.root.password, receive_timeout=2)
            with contextlib.suppress(LDAPException):
                if conn.bind():
                    conn.unbind()
                    return True
            if time.monotonic() > deadline:
                proc, self._proc = self._proc, None
                _terminate(proc)
                log = self._base / "slapd.log"
                raise SlapdError(
                    f"slapd did not accept a bind within {self.start_timeout:g} s on "
                    f"ldap://127.0.0.1:{self._port}/; {log}:\n{_log_tail(log)}"
                )
            time.sleep(0.02)  # polling interval, not a guess at the start-up time
        return False


def _server_user() -> pwd.struct_passwd | None:
    """The OS user slapd drops to when we are root (None: stay the current user)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        return None  # a loopback-only throwaway server may run as root


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """Stop our own slapd child: SIGTERM (clean mdb shutdown), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


# -- cleanup when this process dies without running Python cleanup -------------
#
# atexit does not run when the test process is SIGKILLed or calls os._exit (a
# crashed xdist worker, pytest-timeout). A small watchdog per server holds the
# read end of a pipe whose only writer is this process; at EOF it stops the
# slapd recorded in the server's pid file -- only if that process's command
# line names this server's slapd.conf -- and deletes the directory.

_WATCHDOG = """
import os, shutil, signal, sys, time
base = sys.argv[1]
for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(signum, signal.SIG_IGN)
sys.stdin.buffer.read()
def ours():
    try:
        pid = int(open(os.path.join(base, "slapd.pid")).read().split()[0])
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
    except (OSError, ValueError, IndexError):
        return None
    return pid if os.path.join(base, "slapd.conf").encode() in cmdline else None
if os.path.isdir(base):
    pid = ours()
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while ours() == pid and time.monotonic() < deadline:
            time.sleep(0.05)
        if ours() == pid:
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)
"""


def _start_watchdog(base: Path) -> subprocess.Popen[bytes]:
    return start_watchdog(["-c", _WATCHDOG, str(base)])


_live: set[Slapd] = set()


def _stop_all() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(_stop_all)
