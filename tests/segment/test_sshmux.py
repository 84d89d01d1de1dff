"""Ending the shared SSH session without ``ssh -O exit``: a real ControlMaster (real sshd
in a namespace) agrees and is gone, socket and process; something else on the socket is refused."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from zerogate.segment import ssh as seg_ssh
from zerogate.segment.ssh import Access, AssetTarget
from zerogate.segment.sshmux import MuxError, terminate_master
from zerogate.testbed.sshhosts import SshFleet

needs_fleet = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "nft", "ssh", "setsid")),
    reason="needs root, iproute2, nftables and openssh",
)


def masters(control_path: Path) -> list[int]:
    """PIDs of ``ssh`` masters on ``control_path`` (a master titles itself ``ssh: PATH [mux]``)."""
    marker = str(control_path).encode()
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ssh: ") and marker in cmdline:
                found.append(int(entry.name))
    return found


@needs_fleet
@pytest.mark.xdist_group("segment-hosts")
def test_close_ends_the_master_without_running_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(seg_ssh, "run", lambda argv, **kw: started.append(list(argv)))
    with SshFleet(1, tmp_path / "fleet", clients=0) as fleet:
        host = fleet.hosts[0]
        access = Access(fleet.key, tmp_path / "state", kex_algorithms="curve25519-sha256")
        target = AssetTarget(host.asset(), access)

        assert fleet.call(lambda: target.run(["true"])).returncode == 0
        assert target.control_path.exists() and len(masters(target.control_path)) == 1
        fleet.call(target.close)
        end = time.monotonic() + 10
        while masters(target.control_path) and time.monotonic() < end:
            time.sleep(0.05)  # polling interval: the master exits right after it answers
        assert not masters(target.control_path) and not target.control_path.exists()
        assert started == []  # no "ssh -O exit"


def test_a_socket_that_is_not_a_master_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "not-a-master"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(64)
            conn.sendall(struct.pack(">III", 8, 0x12345678, 4))

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        with pytest.raises(MuxError, match="not an OpenSSH ControlMaster"):
            terminate_master(path, timeout=5)
    finally:
        t.join(5)
        server.close()
    with pytest.raises(OSError):
        terminate_master(tmp_path / "nothing-here", timeout=1)
