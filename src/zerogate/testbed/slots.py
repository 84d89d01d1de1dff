"""Testbed slots: which topology number k a process may use, and cleaning up after it.

Topology k (1..250) owns the names ``zg{k}-*``, ``zg{k}host`` and the subnet
198.18.k.0/24, so a slot is the unit of ownership; :mod:`zerogate.testbed.topology`
builds the network inside one. This module is the machinery around that:

- a slot is held by ``flock`` on ``/run/zerogate-testbed/{k}.lock``;
  :func:`allocate_slot` takes the first free one whose subnet no other
  interface of the root namespace uses, :func:`claim_slot` also sweeps it and
  starts its watchdog. The lock file holds a small record
  (``pid``, ``tmp``: the holder's temp dir), so the next holder of a crashed
  slot knows what to remove;
- :func:`sweep_slot` removes everything a holder of k may have left: processes
  in its namespaces, the namespaces, the root veth, stale wireguard-go sockets
  and the temp dir. It returns warnings and never raises;
- :func:`start_watchdog` starts a small process that shares the slot's lock
  and waits for its owner: if the owner ends without :func:`dismiss_watchdog`
  (SIGKILL, ``os._exit``, a crashed xdist worker), the watchdog sweeps the slot
  before it lets the lock go; :func:`release_slot` is the orderly end.

Set ``ZEROGATE_KEEP_TESTBED=1`` (:data:`KEEP_ENV`) to keep the temp dir.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

from zerogate.netops import netns
from zerogate.testbed.watchdog import dismiss_watchdog as _dismiss
from zerogate.testbed.watchdog import start_watchdog as _start

__all__ = [
    "KEEP_ENV",
    "LOCK_DIR",
    "MAX_INDEX",
    "TMP_PREFIX",
    "WIREGUARD_SOCKET_DIR",
    "allocate_slot",
    "claim_slot",
    "dismiss_watchdog",
    "keep_tmp_requested",
    "parse_lock_record",
    "parse_root_addresses",
    "read_record",
    "recorded_tmp",
    "release_slot",
    "start_watchdog",
    "sweep_slot",
    "watchdog_main",
    "write_record",
]

log = logging.getLogger(__name__)

LOCK_DIR = Path("/run/zerogate-testbed")
WIREGUARD_SOCKET_DIR = Path("/var/run/wireguard")
KEEP_ENV = "ZEROGATE_KEEP_TESTBED"
MAX_INDEX = 250
TMP_PREFIX = "zerogate-testbed-"


# -- slot locks ----------------------------------------------------------------


def _lock_path(k: int) -> Path:
    return LOCK_DIR / f"{k}.lock"


def _try_lock(k: int) -> int | None:
    fd = os.open(_lock_path(k), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def parse_root_addresses(text: str) -> list[tuple[str, IPv4Interface]]:
    """(interface, address) pairs from ``ip -4 -o address show`` output."""
    found = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 4 and words[2] == "inet":
            found.append((words[1].split("@")[0], IPv4Interface(words[3])))
    return found


def _foreign_subnet_users(
    k: int, subnet: IPv4Network, addresses: list[tuple[str, IPv4Interface]]
) -> list[str]:
    """Root-namespace interfaces, other than slot k's own veth, with an address in ``subnet``."""
    return [name for name, address in addresses if address.ip in subnet and name != f"zg{k}host"]


def allocate_slot(subnet_of: Callable[[int], IPv4Network]) -> tuple[int, int] | None:
    """Lock the first free slot k whose subnet (``subnet_of(k)``) nothing else uses.

    Returns (k, lock fd), or None when every slot is taken.
    """
    LOCK_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    addresses = parse_root_addresses(netns.run_ip(["-4", "-o", "address", "show"]))
    for k in range(1, MAX_INDEX + 1):
        if _foreign_subnet_users(k, subnet_of(k), addresses):
            continue  # e.g. a hand-made test network on 198.18.k.0/24
        fd = _try_lock(k)
        if fd is not None:
            return k, fd
    return None


def claim_slot(
    subnet_of: Callable[[int], IPv4Network],
) -> tuple[int, int, subprocess.Popen[bytes]] | None:
    """Allocate a slot, remove what a crashed earlier holder left there, start its watchdog.

    Returns (k, lock fd, watchdog), or None when every slot is taken.
    """
    slot = allocate_slot(subnet_of)
    if slot is None:
        return None
    k, fd = slot
    try:
        stale_tmp = recorded_tmp(k, read_record(fd))
        for warning in sweep_slot(k, tmp=stale_tmp, keep_tmp=keep_tmp_requested()):
            log.warning("testbed slot %d, left-overs of an earlier run: %s", k, warning)
        return k, fd, start_watchdog(k, fd)
    except BaseException:
        os.close(fd)
        raise


def parse_lock_record(text: str) -> dict[str, str]:
    """``key=value`` lines written into a slot's lock file (pid, tmp)."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def read_record(fd: int) -> dict[str, str]:
    return parse_lock_record(os.pread(fd, 4096, 0).decode(errors="replace"))


def write_record(fd: int, record: Mapping[str, str]) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, "".join(f"{k}={v}\n" for k, v in record.items()).encode(), 0)


def recorded_tmp(k: int, record: Mapping[str, str]) -> Path | None:
    """The temp dir a slot's lock file names, if it really is one of ours for slot k."""
    path = Path(record.get("tmp", ""))
    if path.is_absolute() and path.name.startswith(f"{TMP_PREFIX}{k}-") and path.is_dir():
        return path
    return None


def keep_tmp_requested() -> bool:
    return os.environ.get(KEEP_ENV, "") not in ("", "0")


# -- cleanup of one slot ---------------------------------------------------------


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _remove_stale_wg_sockets(k: int) -> list[str]:
    """Remove wireguard-go control sockets named zg{k}<role>.sock that nobody listens on."""
    warnings: list[str] = []
    pattern = re.compile(rf"zg{k}[a-z][a-z0-9]*\.sock")
    with contextlib.suppress(FileNotFoundError):
        for path in WIREGUARD_SOCKET_DIR.iterdir():
            if not pattern.fullmatch(path.name):
                continue
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(str(path))
                except OSError:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    continue
            warnings.append(f"{path} is still in use by a process outside the testbed; left alone")
    return warnings


def sweep_slot(k: int, *, tmp: Path | None, keep_tmp: bool) -> list[str]:
    """Remove everything slot ``k`` may have left: processes in its namespaces (SIGKILL),
    the namespaces ``zg{k}-*``, the root veth, stale WireGuard sockets and ``tmp``.

    Call only while holding the slot's lock. Returns warnings instead of raising.
    """
    warnings: list[str] = []
    prefix = f"zg{k}-"
    try:
        names = [n for n in netns.list_namespaces() if n.startswith(prefix)]
    except netns.NetnsError as e:
        warnings.append(str(e))
        names = []
    killed: list[int] = []
    for name in names:
        try:
            pids = netns.namespace_pids(name)
        except netns.NetnsError as e:
            warnings.append(str(e))
            continue
        for pid in pids:
            if pid == os.getpid():
                continue
            # A process in a namespace of this slot was started by this slot's holder.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.01)
    host_if = f"zg{k}host"
    try:
        if netns.link_exists(None, host_if):
            netns.delete_link(None, host_if)
    except netns.NetnsError as e:
        warnings.append(str(e))
    if names:
        try:
            netns.run_batch([netns.cmd_delete_namespace(n) for n in names], force=True)
        except netns.NetnsError as e:
            warnings.append(str(e))
    warnings += _remove_stale_wg_sockets(k)
    if tmp is not None and not keep_tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return warnings


# -- watchdog: cleans up if this process dies without close() -------------------


def start_watchdog(k: int, lock_fd: int) -> subprocess.Popen[bytes]:
    src = str(Path(__file__).resolve().parents[2])
    code = (
        f"import sys; sys.path.insert(0, {src!r}); "
        "from zerogate.testbed.slots import watchdog_main; "
        "watchdog_main(int(sys.argv[1]), int(sys.argv[2]))"
    )
    # it holds the slot (lock_fd) until its cleanup is done
    return _start(["-c", code, str(k), str(lock_fd)], pass_fds=(lock_fd,))


def dismiss_watchdog(process: subprocess.Popen[bytes]) -> None:
    _dismiss(process, b"closed\n")


def release_slot(lock_fd: int, watchdog: subprocess.Popen[bytes] | None) -> None:
    """Empty the slot's record, dismiss its watchdog and unlock it. Never raises."""
    with contextlib.suppress(OSError):
        write_record(lock_fd, {})  # nothing of ours is left for the next holder
    if watchdog is not None:
        try:
            dismiss_watchdog(watchdog)
        except Exception as e:
            log.warning("testbed: stopping the watchdog failed: %s", e)
    with contextlib.suppress(OSError):
        os.close(lock_fd)


def watchdog_main(k: int, lock_fd: int) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    message = sys.stdin.buffer.read()  # returns at EOF: the owner closed it or died
    if message.strip() == b"closed":
        return
    logging.basicConfig(level=logging.WARNING, format="zerogate testbed watchdog: %(message)s")
    tmp = recorded_tmp(k, read_record(lock_fd))
    for warning in sweep_slot(k, tmp=tmp, keep_tmp=keep_tmp_requested()):
        log.warning("slot %d: %s", k, warning)
    write_record(lock_fd, {})  # a kept temp dir is no left-over for the next holder to remove
