"""Commit-confirmed firewall apply: snapshot, apply atomically, check, roll back unless confirmed.

``apply_ruleset`` works in this order, holding the state-directory lock throughout:
validate the file (``nft -c -f``), snapshot exactly the tables it touches into a
restore script (validated too), write the *pending* marker, start the detached
rollback timer, load the file (``nft -f``, atomic), check the management path over
a fresh connection (an SSH banner by default). A failed check restores the snapshot
at once; a passing one leaves the timer running until ``confirm``. The timer is
armed *before* the new rules go live, so a session killed mid-apply still rolls back.

State directory (default ``/var/lib/zerogate/firewall``, 0700, files 0600)::

    lock                  flock held by apply / confirm / rollback / the timer
    pending.json          present while an apply awaits confirmation
    last.json             outcome of the most recent apply (for status, rollback --last)
    applied-<id>.nft      the ruleset as applied
    snapshot-<id>.nft     restore script: the touched tables as they were before
    timer.log             what detached timers did

Pure parts (which tables a file touches, the restore script, check targets,
timer command lines) are plain functions; the ``RulesetBackend`` protocol is
the seam for iptables-restore files later.

Errors (all ``FirewallApplyError``): ``RulesetError`` (bad file, nothing
changed), ``PendingApplyError``, ``NothingPendingError``, ``StateLockedError``,
``ManagementCheckError`` (path already broken, nothing changed),
``CheckFailedRolledBack``, ``BackendError`` (nft failed).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/zerogate/firewall")
TIMER_FLAG = "--rollback-timer"
TIMER_MODULE = "zerogate.deploy.firewall_apply"  # not __name__: that is "__main__" inside the timer
MAX_CONFIRM_WINDOW = 86400.0
CHECK_GRACE = 3.0  # timer deadline while the check runs: check timeout + this (apply holds the lock)
KEEP_APPLIES = 20


class FirewallApplyError(Exception):
    """Base of every error this module raises; the message is one line for the user."""


class RulesetError(FirewallApplyError):
    pass


class PendingApplyError(FirewallApplyError):
    pass


class NothingPendingError(FirewallApplyError):
    pass


class StateLockedError(FirewallApplyError):
    pass


class ManagementCheckError(FirewallApplyError):
    pass


class CheckFailedRolledBack(FirewallApplyError):
    pass


class BackendError(FirewallApplyError):
    pass


# ---------------------------------------------------------------------------
# Pure: which tables an nftables file touches, and how to restore them
# ---------------------------------------------------------------------------

FAMILIES = frozenset({"ip", "ip6", "inet", "arp", "bridge", "netdev"})
_VERBS = frozenset({"add", "create", "insert", "replace", "delete", "destroy", "flush"})
_OBJECTS = frozenset(
    {"table", "chain", "rule", "set", "map", "element", "flowtable", "counter", "quota", "limit",
     "synproxy", "secmark", "ct"}
)  # fmt: skip
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")


@dataclass(frozen=True, order=True)
class TableRef:
    family: str
    name: str

    def __str__(self) -> str:
        return f"{self.family} {self.name}"

    @classmethod
    def parse(cls, text: str) -> TableRef:
        family, _, name = text.partition(" ")
        return cls(family, name)


@dataclass(frozen=True)
class RulesetScope:
    """What a ruleset file changes: named tables, or everything (``flush ruleset``)."""

    tables: tuple[TableRef, ...]
    whole_ruleset: bool = False

    def describe(self) -> str:
        return "the whole ruleset" if self.whole_ruleset else ", ".join(f"table {t}" for t in self.tables)


def _tokens(text: str) -> Iterator[tuple[str, int]]:
    """nft tokens with their line: words, quoted strings, ``{ } ;`` and newlines; comments dropped."""
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and text[i + 1 : i + 2] == "\n":
            i, line = i + 2, line + 1
            continue
        if c == "\n":
            yield "\n", line
            line += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise RulesetError(f"line {line}: unterminated string")
            yield text[i : end + 1], line
            line += text.count("\n", i, end)
            i = end
        elif c in "{};":
            yield c, line
        elif not c.isspace():
            j = i
            while j < n and not text[j].isspace() and text[j] not in '{};#"':
                j += 1
            yield text[i:j], line
            i = j
            continue
        i += 1


def _statements(text: str) -> Iterator[tuple[list[str], int]]:
    """Top-level statements (a ``table x { ... }`` block counts as one) with their first line."""
    current: list[str] = []
    start, depth = 0, 0
    for tok, line in _tokens(text):
        if depth == 0 and tok in ("\n", ";"):
            if current:
                yield current, start
            current = []
            continue
        if tok == "\n":
            continue
        if not current:
            start = line
        current.append(tok)
        depth += {"{": 1, "}": -1}.get(tok, 0)
        if depth < 0:
            raise RulesetError(f"line {line}: '}}' without a matching '{{'")
    if current:
        yield current, start


def _table_ref(tokens: Sequence[str], at: int, line: int) -> TableRef:
    words = [t for t in tokens[at : at + 2] if t not in "{};"]
    family = "ip"
    if len(words) == 2 and words[0] in FAMILIES:
        family, words = words[0], words[1:]
    name = words[0].strip('"') if words else ""
    if name.startswith("$"):
        raise RulesetError(f"line {line}: table name from a variable ({name}) is not supported; write it out")
    if not _NAME.match(name):
        raise RulesetError(f"line {line}: cannot tell which table this statement changes")
    return TableRef(family, name)


def nft_scope(text: str) -> RulesetScope:
    """The tables an nftables file creates, changes or deletes (pure; no nft needed)."""
    found: dict[TableRef, None] = {}
    whole = False
    for toks, line in _statements(text):
        verb = toks[0]
        if verb in ("define", "redefine", "undefine"):
            continue
        if verb == "include":
            raise RulesetError(f"line {line}: 'include' is not supported; apply one self-contained file")
        if verb == "table":
            found[_table_ref(toks, 1, line)] = None
            continue
        if verb not in _VERBS or len(toks) < 2:
            raise RulesetError(
                f"line {line}: '{' '.join(toks[:3])}' is not a ruleset statement nft -f applies"
            )
        if verb == "flush" and toks[1] == "ruleset":
            whole = True
            continue
        if toks[1] not in _OBJECTS:
            raise RulesetError(f"line {line}: unknown object '{toks[1]}' after '{verb}'")
        at = 3 if toks[1] == "ct" else 2
        found[_table_ref(toks, at, line)] = None
    if not found and not whole:
        raise RulesetError("the file defines no table: nothing to apply")
    return RulesetScope(tuple(found), whole)


def parse_nft_tables(listing: str) -> set[TableRef]:
    """Tables from ``nft list tables`` output (``table inet zerogate`` per line)."""
    refs = set()
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table":
            refs.add(TableRef(parts[1], parts[2]))
    return refs


def render_nft_restore(scope: RulesetScope, listings: Mapping[TableRef, str | None], header: str = "") -> str:
    """A script for ``nft -f`` that puts the scope back as listed (``None``: the table did not exist).

    For a whole-ruleset scope pass one listing under any key: the ``nft list ruleset`` output.
    """
    lines = [f"# {h}" for h in header.splitlines()]
    if scope.whole_ruleset:
        lines.append("flush ruleset")
        lines.extend(v.rstrip("\n") for v in listings.values() if v)
    else:
        for ref in scope.tables:
            lines.append(f"table {ref} {{}}")  # create-if-missing so the delete always works
            lines.append(f"delete table {ref}")
            if (body := listings.get(ref)) is not None:
                lines.append(body.rstrip("\n"))
    return "\n".join(lines) + "\n"


def parse_check_target(text: str, default_port: int = 22) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``HOST`` -> (host, port)."""
    host, port = text.strip(), str(default_port)
    if host.startswith("["):
        inner, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad check target {text!r}: use [ADDRESS]:PORT for IPv6")
        host, port = inner, rest[1:] or port
    elif host.count(":") == 1:
        host, port = host.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad check target {text!r}: use HOST:PORT, e.g. 127.0.0.1:22")
    return host, int(port)


def timer_argv(python: str, state_dir: Path, token: str) -> list[str]:
    return [python, "-m", TIMER_MODULE, TIMER_FLAG, str(state_dir), token]


def is_timer_cmdline(raw: bytes, token: str) -> bool:
    """Whether a /proc/PID/cmdline belongs to the rollback timer for ``token``."""
    args = raw.decode(errors="replace").split("\0")
    return TIMER_FLAG in args and token in args and TIMER_MODULE in args


# ---------------------------------------------------------------------------
# State: pending marker, last outcome, lock
# ---------------------------------------------------------------------------


@dataclass
class PendingApply:
    id: str
    token: str
    backend: str
    tables: list[str]
    whole_ruleset: bool
    ruleset_file: str
    snapshot_file: str
    applied_at: float
    deadline: float
    phase: str = "applying"  # then "awaiting-confirm"
    timer_pid: int | None = None


@dataclass
class Outcome:
    id: str
    outcome: str
    at: float
    tables: list[str]
    snapshot_file: str
    backend: str = "nftables"
    detail: str = ""


class StateStore:
    """Files in the state directory; every change is an atomic replace of a 0600 file."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()  # the timer runs in /

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        tmp = path.with_name(f".{name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(text)
        os.replace(tmp, path)
        return path

    def _read_json(self, name: str) -> dict[str, object] | None:
        try:
            data = json.loads((self.root / name).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise FirewallApplyError(
                f"{self.root / name} is unreadable ({exc}); inspect or remove it"
            ) from exc
        return data if isinstance(data, dict) else None

    def pending(self) -> PendingApply | None:
        data = self._read_json("pending.json")
        try:
            return PendingApply(**data) if data else None  # type: ignore[arg-type]
        except TypeError as exc:
            raise FirewallApplyError(f"{self.root / 'pending.json'} is not a pending apply ({exc})") from None

    def set_pending(self, p: PendingApply) -> None:
        self.write("pending.json", json.dumps(asdict(p), indent=2))

    def clear_pending(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / "pending.json").unlink()

    def last(self) -> Outcome | None:
        data = self._read_json("last.json")
        try:
            return Outcome(**data) if data else None  # type: ignore[arg-type]
        except TypeError:
            return None  # only informational; the next apply rewrites it

    def set_last(self, o: Outcome) -> None:
        self.write("last.json", json.dumps(asdict(o), indent=2))

    def prune(self, keep: int = KEEP_APPLIES) -> None:
        for prefix in ("applied-", "snapshot-"):
            old = sorted(self.root.glob(f"{prefix}*.nft"))[:-keep]
            for path in old:
                path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self, wait: float) -> Iterator[None]:
        """Exclusive flock on ``lock``; gives up after ``wait`` seconds."""
        self.ensure()
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            end = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= end:
                        raise StateLockedError(
                            f"another 'zerogate firewall' apply/confirm/rollback holds {self.root / 'lock'}; "
                            "wait for it to finish and try again"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------
# I/O: backends, management check, rollback timer
# ---------------------------------------------------------------------------


class RulesetBackend(Protocol):
    """One firewall tool: nftables now, iptables-restore later."""

    name: str

    def scope(self, text: str) -> RulesetScope: ...
    def validate(self, path: Path) -> None: ...
    def snapshot(self, scope: RulesetScope, header: str) -> str: ...
    def load(self, path: Path) -> None: ...


class NftBackend:
    name = "nftables"

    def __init__(self, nft: str | None = None) -> None:
        self.nft = nft or shutil.which("nft") or "/usr/sbin/nft"

    def _run(self, *args: str) -> str:
        try:
            r = subprocess.run(
                [self.nft, *args],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "LC_ALL": "C"},
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackendError(f"cannot run {self.nft}: {exc}") from exc
        if r.returncode != 0:
            lines = [ln.strip() for ln in r.stderr.splitlines() if ln.strip(" \t^~")]  # drop caret lines
            first = " | ".join(lines[:3])
            raise BackendError(f"nft {' '.join(args)} failed: {first or f'exit {r.returncode}'}")
        return r.stdout

    def scope(self, text: str) -> RulesetScope:
        return nft_scope(text)

    def validate(self, path: Path) -> None:
        try:
            self._run("-c", "-f", str(path))
        except BackendError as exc:
            raise RulesetError(f"{exc}; nothing was changed") from None

    def snapshot(self, scope: RulesetScope, header: str) -> str:
        if scope.whole_ruleset:
            return render_nft_restore(scope, {TableRef("", ""): self._run("list", "ruleset")}, header)
        existing = parse_nft_tables(self._run("list", "tables"))
        listings = {
            ref: self._run("list", "table", ref.family, ref.name) if ref in existing else None
            for ref in scope.tables
        }
        return render_nft_restore(scope, listings, header)

    def load(self, path: Path) -> None:
        self._run("-f", str(path))


BACKENDS: dict[str, Callable[[], RulesetBackend]] = {"nftables": NftBackend}


def backend_named(name: str) -> RulesetBackend:
    if name not in BACKENDS:
        raise FirewallApplyError(f"unknown firewall backend {name!r} (known: {', '.join(BACKENDS)})")
    return BACKENDS[name]()


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str


@dataclass(frozen=True)
class SshBannerCheck:
    """A fresh TCP connection that must yield an ``SSH-`` banner line within ``timeout`` seconds."""

    host: str
    port: int
    timeout: float = 5.0

    def run(self) -> CheckResult:
        where = f"{self.host}:{self.port}"
        start = time.monotonic()
        end = start + self.timeout
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as s:
                data = b""
                while not _banner(data):
                    left = end - time.monotonic()
                    if left <= 0 or len(data) > 4096:
                        break
                    s.settimeout(left)
                    chunk = s.recv(1024)
                    if not chunk:
                        break
                    data += chunk
        except OSError as exc:
            timed_out = isinstance(exc, TimeoutError)
            reason = f"no answer within {self.timeout:g} s" if timed_out else (exc.strerror or str(exc))
            return CheckResult(False, f"no SSH banner from {where} ({reason})")
        if banner := _banner(data):
            return CheckResult(
                True, f"SSH banner {banner!r} from {where} in {time.monotonic() - start:.2f} s"
            )
        return CheckResult(False, f"{where} answered without an SSH banner within {self.timeout:g} s")


def _banner(data: bytes) -> str:
    lines = data.split(b"\n")
    for line in lines[:-1]:  # complete lines only
        if line.startswith(b"SSH-"):
            return line.rstrip(b"\r").decode(errors="replace")
    return ""


class ManagementCheck(Protocol):
    def run(self) -> CheckResult: ...


def spawn_timer(store: StateStore, token: str) -> int:
    """Start the detached rollback timer (own session, no inherited fds); return its PID."""
    logf = os.open(store.root / "timer.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            timer_argv(sys.executable, store.root, token),
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            cwd="/",
            start_new_session=True,
        )
    finally:
        os.close(logf)
    return proc.pid


def stop_timer(pid: int | None, token: str, wait: float = 3.0) -> bool:
    """SIGTERM the timer if ``pid`` is still our timer for ``token`` (pidfd: no PID-reuse race)."""
    if not pid or pid == os.getpid():
        return False
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return False
    try:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        if not is_timer_cmdline(cmdline, token):
            return False
        signal.pidfd_send_signal(fd, signal.SIGTERM)
        if not select.select([fd], [], [], wait)[0]:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def timer_alive(pid: int | None, token: str) -> bool:
    if not pid:
        return False
    try:
        return is_timer_cmdline(Path(f"/proc/{pid}/cmdline").read_bytes(), token)
    except OSError:
        return False


# ---------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------


@dataclass
class ApplyResult:
    id: str
    tables: list[str]
    snapshot_file: str
    check: str
    deadline: float | None = None
    confirm_within: float | None = None
    outcome: str = "awaiting-confirm"


def _outcome(p: PendingApply, outcome: str, detail: str = "") -> Outcome:
    return Outcome(p.id, outcome, time.time(), p.tables, p.snapshot_file, p.backend, detail)


def _restore(store: StateStore, p: PendingApply, outcome: str, detail: str = "") -> None:
    """Load the snapshot, then forget the pending apply (kept pending if the restore fails)."""
    try:
        backend_named(p.backend).load(Path(p.snapshot_file))
    except BackendError as exc:
        raise BackendError(
            f"rollback failed: {exc}; the snapshot is {p.snapshot_file} (load it by hand: nft -f FILE)"
        ) from None
    store.clear_pending()
    store.set_last(_outcome(p, outcome, detail))


def _prepare(
    store: StateStore,
    backend: RulesetBackend,
    source: Path,
    text: str,
    scope: RulesetScope,
    check: ManagementCheck | None,
) -> tuple[str, Path, Path]:
    """Validate, pre-check and snapshot (nothing changes yet); returns (id, ruleset copy, snapshot)."""
    apply_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"
    ruleset_file = store.write(f"applied-{apply_id}.nft", text)
    snapshot_file = store.root / f"snapshot-{apply_id}.nft"
    try:
        try:  # the copy: later edits of the user's file cannot sneak in
            backend.validate(ruleset_file)
        except RulesetError as exc:  # nft names the copy; the user knows their own file
            raise RulesetError(str(exc).replace(str(ruleset_file), str(source))) from None
        if check is not None and not (pre := check.run()).ok:
            raise ManagementCheckError(
                f"management check fails before applying anything: {pre.detail}; fix it, point "
                "--check-ssh at a working SSH server, or pass --no-check if you have console access"
            )
        header = f"zerogate firewall snapshot before apply {apply_id}: {scope.describe()}"
        store.write(snapshot_file.name, backend.snapshot(scope, header))
        try:
            backend.validate(snapshot_file)
        except RulesetError as exc:
            raise RulesetError(
                f"the current state would not restore cleanly, so not applying: {exc}"
            ) from None
    except FirewallApplyError:
        ruleset_file.unlink(missing_ok=True)
        snapshot_file.unlink(missing_ok=True)
        raise
    return apply_id, ruleset_file, snapshot_file


def apply_ruleset(
    path: Path,
    store: StateStore,
    backend: RulesetBackend,
    check: ManagementCheck | None,
    confirm_within: float | None,
    check_timeout: float = 5.0,
    lock_wait: float = 30.0,
) -> ApplyResult:
    """Apply ``path`` commit-confirmed (``confirm_within=None``: no timer, only the check)."""
    if confirm_within is not None and not 0 < confirm_within <= MAX_CONFIRM_WINDOW:
        raise FirewallApplyError(f"--confirm-within must be between 1 and {MAX_CONFIRM_WINDOW:g} seconds")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesetError(f"cannot read {path}: {exc}") from None
    scope = backend.scope(text)  # parse errors before touching any state
    with store.lock(lock_wait):
        if (p := store.pending()) is not None:
            raise PendingApplyError(
                f"apply {p.id} ({', '.join(p.tables)}) is still pending: run 'zerogate firewall confirm' "
                "or 'zerogate firewall rollback' first"
            )
        apply_id, ruleset_file, snapshot_file = _prepare(store, backend, path, text, scope, check)
        tables = [str(t) for t in scope.tables] or ["(whole ruleset)"]
        now, token = time.time(), secrets.token_hex(16)
        p = PendingApply(
            apply_id, token, backend.name, tables, scope.whole_ruleset, str(ruleset_file),
            str(snapshot_file), now, deadline=now + check_timeout + CHECK_GRACE,
        )  # fmt: skip
        # Arm the timer before the rules go live: a killed session mid-apply still rolls back.
        store.set_pending(p)
        try:
            p.timer_pid = spawn_timer(store, token)
        except OSError as exc:
            store.clear_pending()
            raise FirewallApplyError(
                f"cannot start the rollback timer ({exc}); nothing was changed"
            ) from None
        store.set_pending(p)
        try:
            backend.load(ruleset_file)
        except BackendError as exc:
            stop_timer(p.timer_pid, token)
            store.clear_pending()
            raise BackendError(f"{exc}; nothing was changed") from None
        post = check.run() if check is not None else CheckResult(True, "not checked (--no-check)")
        if not post.ok:
            _restore(store, p, "rolled back: management check failed", post.detail)
            stop_timer(p.timer_pid, token)
            raise CheckFailedRolledBack(
                f"management check failed after applying ({post.detail}); rolled back to the previous state"
            )
        result = ApplyResult(apply_id, tables, str(snapshot_file), post.detail)
        if confirm_within is None:
            stop_timer(p.timer_pid, token)
            store.clear_pending()
            store.set_last(_outcome(p, "applied (no confirm)", post.detail))
            result.outcome = "applied"
        else:
            result.deadline, result.confirm_within = time.time() + confirm_within, confirm_within
            store.set_pending(replace(p, phase="awaiting-confirm", deadline=result.deadline))
        store.prune()
        return result


def confirm(store: StateStore, lock_wait: float = 30.0) -> PendingApply:
    """Keep the pending apply: stop its timer and drop the marker."""
    with store.lock(lock_wait):
        p = store.pending()
        if p is None:
            raise NothingPendingError(_nothing_pending(store))
        stop_timer(p.timer_pid, p.token)
        store.clear_pending()
        store.set_last(_outcome(p, "confirmed"))
        return p


def rollback(
    store: StateStore, token: str | None = None, last: bool = False, lock_wait: float = 30.0
) -> str | None:
    """Restore the pending apply's snapshot now (or, with ``last``, the last apply's).

    With ``token`` only the pending apply holding it is rolled back; returns ``None`` when it
    is gone (already confirmed or rolled back) instead of raising.
    """
    with store.lock(lock_wait):
        p = store.pending()
        if p is not None and (token is None or p.token == token):
            _restore(store, p, "rolled back" if token is None else "rolled back: not confirmed")
            stop_timer(p.timer_pid, p.token)
            return f"rolled back apply {p.id}: {', '.join(p.tables)} restored from {p.snapshot_file}"
        if token is not None:
            return None
        o = store.last()
        if o is None or not last:
            hint = "; pass --last to restore the state from before the last apply" if o else ""
            raise NothingPendingError(_nothing_pending(store) + hint)
        backend_named(o.backend).load(Path(o.snapshot_file))
        store.set_last(replace(o, outcome="rolled back (--last)", at=time.time()))
        return f"restored the state from before apply {o.id}: {', '.join(o.tables)} from {o.snapshot_file}"


def _nothing_pending(store: StateStore) -> str:
    o = store.last()
    tail = f" (last apply {o.id}: {o.outcome} at {_clock(o.at)})" if o else ""
    return f"no apply is pending in {store.root}{tail}"


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def status(store: StateStore) -> dict[str, object]:
    """What is pending (if anything), its deadline and timer, and the last outcome."""
    p = store.pending() if store.root.exists() else None
    o = store.last() if store.root.exists() else None
    data: dict[str, object] = {"state_dir": str(store.root), "pending": p is not None}
    if p is not None:
        alive = timer_alive(p.timer_pid, p.token)
        data.update(
            id=p.id, phase=p.phase, tables=p.tables, applied_at=_clock(p.applied_at),
            deadline=_clock(p.deadline), seconds_left=max(0, round(p.deadline - time.time())),
            timer_pid=p.timer_pid, timer_running=alive, snapshot_file=p.snapshot_file,
            ruleset_file=p.ruleset_file,
        )  # fmt: skip
        if not alive:
            data["warning"] = (
                "the rollback timer is not running: run 'zerogate firewall confirm' or 'rollback'"
            )
    if o is not None:
        data.update(
            last_id=o.id, last_outcome=o.outcome, last_at=_clock(o.at), last_tables=o.tables,
            previous_snapshot=o.snapshot_file,
        )  # fmt: skip
    return data


def run_rollback_timer(state_dir: Path, token: str, poll: float = 0.2) -> str:
    """The detached timer: wait for the pending deadline, then roll back unless confirmed.

    The deadline is re-read every ``poll`` seconds and again under the lock, because apply
    moves it (from "check running" to "awaiting confirm") while the timer already runs.
    """
    store = StateStore(state_dir)
    gone = "nothing to do: the apply was confirmed or rolled back"
    end = time.monotonic() + MAX_CONFIRM_WINDOW + 3600
    failures = 0
    while time.monotonic() < end and failures < 10:
        try:
            p = store.pending()
            if p is None or p.token != token:
                return gone
            if (left := p.deadline - time.time()) > 0:
                time.sleep(min(poll, left))
                continue
            with store.lock(wait=600):  # an apply still checking holds it; so does confirm
                p = store.pending()
                if p is None or p.token != token:
                    return gone
                if p.deadline > time.time():
                    continue
                _restore(store, p, "rolled back: not confirmed", f"deadline {_clock(p.deadline)} passed")
                return f"rolled back apply {p.id}: {', '.join(p.tables)} restored from {p.snapshot_file}"
        except FirewallApplyError as exc:
            failures += 1
            log.error("rollback for %s failed: %s", token[:6], exc)
            time.sleep(5)  # the marker stays: try again, then leave it to 'zerogate firewall rollback'
    return "gave up: run 'zerogate firewall rollback' by hand"


def _timer_main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s timer[%(process)d] %(message)s")
    state_dir, token = Path(argv[0]), argv[1]

    def stopped(signum: int, _frame: object) -> None:
        log.info("stopped (%s): the apply was confirmed or rolled back", signal.Signals(signum).name)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stopped)  # confirm/rollback stop us, always while holding the lock
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # own session already; a stray hangup must not stop us
    log.info("armed for token %s...", token[:6])
    log.info("%s", run_rollback_timer(state_dir, token))
    return 0


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == TIMER_FLAG:
    sys.exit(_timer_main(sys.argv[2:]))
