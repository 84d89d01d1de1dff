"""Test network namespaces: a strict ``sh`` helper and the ``Netns`` class.

Tests usually take the ``make_netns`` fixture from ``tests/conftest.py``, which
builds ``Netns`` objects and closes them at teardown. Import the class itself
with ``from nstools import Netns, sh`` (conftest puts ``tests/`` on sys.path).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from zerogate.netops import netns
from zerogate.testbed.slots import LOCK_DIR

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def sh(*argv: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (30 s limit); with ``check``, a non-zero exit fails the test with its stderr."""
    r = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=30, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class Netns:
    """A network namespace created for one test; ``close`` deletes its links, then it.

    The name is ``zgut<pid><tag><4 hex>``, so parallel workers and reruns never clash.
    """

    def __init__(self, tag: str) -> None:
        self.name = f"zgut{os.getpid()}{tag}{secrets.token_hex(2)}"
        sh("ip", "netns", "add", self.name)
        sh("ip", "-n", self.name, "link", "set", "lo", "up")

    def ip(self, *args: str) -> str:
        """``ip -n NAME ARGS...``; returns its stdout."""
        return sh("ip", "-n", self.name, *args).stdout

    def run(
        self, *argv: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace (``ip netns exec``)."""
        return sh("ip", "netns", "exec", self.name, *argv, input=input, check=check)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a thread that joined this namespace (see :func:`call_in_netns`)."""
        return call_in_netns(self.name, fn)

    def pids(self) -> list[int]:
        """Processes living in the namespace (``ip netns pids``)."""
        return [int(p) for p in sh("ip", "netns", "pids", self.name).stdout.split()]

    def close(self) -> None:
        """Delete every link but ``lo`` (so wireguard-go exits), then the namespace; never raises."""
        r = sh("ip", "-n", self.name, "-j", "link", "show", check=False)
        for link in json.loads(r.stdout or "[]"):
            if link.get("ifname") != "lo":
                sh("ip", "-n", self.name, "link", "del", link["ifname"], check=False)
        sh("ip", "netns", "del", self.name, check=False)


def call_in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that joined network namespace ``name``.

    Sockets it opens keep the namespace afterwards, and child processes it
    starts (``nft``, ``ip``, ``wireguard-go``) run there too.
    """
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {name}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    t.join(60)
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def tcp(src_ns: Netns, src: str, dst_ns: Netns, dst: str, port: int) -> str:
    """One TCP connection from ``src`` in ``src_ns`` to ``dst:port`` in ``dst_ns``.

    Returns the source address the server saw, or ``"refused"`` / ``"dropped"``.
    """
    server = dst_ns.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    client = src_ns.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    with server, client:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((dst, port))
        server.listen(1)
        server.settimeout(1)
        client.bind((src, 0))
        client.settimeout(0.5)
        try:
            client.connect((dst, port))
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "dropped"
        conn, (peer, _) = server.accept()
        conn.close()
        return str(peer)


def slot_namespaces(k: int) -> list[str]:
    """The namespaces of testbed slot ``k`` that exist now."""
    return [n for n in netns.list_namespaces() if n.startswith(f"zg{k}-")]


def slot_is_free(k: int) -> bool:
    """Whether nobody holds testbed slot ``k``'s lock (probed without keeping it)."""
    fd = os.open(LOCK_DIR / f"{k}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing releases our probe lock too
    return True
