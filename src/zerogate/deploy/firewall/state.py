"""The controlling side's state of commit-confirmed applies, in one directory.

State directory (default ``/var/lib/zerogate/firewall``, 0700, files 0600; an SSH
target gets its own ``targets/<user>@<host>-<port>`` below it)::

    lock                  flock held by apply / confirm / rollback / the local timer
    pending.json          present while an apply awaits confirmation
    last.json             outcome of the most recent apply (for status, rollback --last)
    applied-<id>.nft      the ruleset as applied        } on this host for the local target;
    snapshot-<id>.nft     restore script: the touched   } in the target's directory for an
                          tables as they were before    } SSH target
    timer.log             what detached local timers did
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from zerogate.deploy.firewall.errors import FirewallApplyError, StateLockedError

DEFAULT_STATE_DIR = Path("/var/lib/zerogate/firewall")
KEEP_APPLIES = 20


def stale_files(names: Sequence[str], keep: int = KEEP_APPLIES) -> list[str]:
    """Per kind of apply file (ruleset copy, snapshot, fired marker), all but the newest ``keep``."""
    stale: list[str] = []
    for prefix, suffix in (("applied-", ".nft"), ("snapshot-", ".nft"), ("rollback-", ".fired")):
        ours = sorted(n for n in names if n.startswith(prefix) and n.endswith(suffix))
        stale += ours[:-keep] if keep > 0 else ours
    return stale


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
    # Where the apply went and how its rollback is armed there (defaults: files written
    # before SSH targets existed). timer: "process" (the local zerogate timer), "detached"
    # (a setsid'd shell on the target) or "systemd" (a transient timer unit on the target).
    target: str = "local"
    timer: str = "process"
    timer_unit: str = ""  # name of the armed rollback on the target (unit / process $0)
    marker_file: str = ""  # on the target: written when the armed rollback has fired


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
        for name in stale_files([p.name for p in self.root.iterdir()], keep):
            (self.root / name).unlink(missing_ok=True)

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
