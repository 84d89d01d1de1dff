"""``zerogate jit request`` against a real listener over TLS, with the controller call
faked (tests that need it say ``fake_controller``): what it sends, what it prints for
an opening and for each refusal, and that the opening it asked for really lets this
client reach the port on a real protected host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jitfake import FakeController, loopback_listener, tls_files
from zerogate.cli.main import app
from zerogate.netops.controller_api import ApiError
from zerogate.segment import hosts
from zerogate.segment.checks import tcp_connects
from zerogate.segment.jit import JitKeeper
from zerogate.segment.jit_listener import JitListener, JitService
from zerogate.segment.ssh import Access
from zerogate.testbed.lab import wait_for
from zerogate.testbed.sshhosts import SERVER_ADDRESS, SshFleet, call_in_netns, client_address

PASSWORD = "correct horse battery"
ENV = {"COLUMNS": "200"}


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path, Path]:
    return tls_files(tmp_path)


def invoke(*args: str, stdin: str = f"{PASSWORD}\n123456\n") -> tuple[int, str]:
    r = CliRunner().invoke(app, ["jit", "request", *args], env=ENV, input=stdin)
    return r.exit_code, r.output


@pytest.fixture
def loopback(tls: tuple[Path, Path, Path]) -> Iterator[tuple[str, FakeController, Path]]:
    with loopback_listener(tls) as served:
        yield served


@pytest.mark.parametrize(
    ("status", "retry", "says"),
    [(401, None, "sign-in failed"), (403, None, "may not open"), (404, None, "no such asset"),
     (429, 42.0, "try again in 42 s")],
)  # fmt: skip
def test_each_refusal_is_explained_fake_controller(
    loopback: tuple[str, FakeController, Path], status: int, retry: float | None, says: str
) -> None:
    url, controller, ca = loopback
    controller.refuse = ApiError(status, "refused", None, retry)
    code, out = invoke("web1:5432", "--server", url, "--user", "alice", "--ca-file", str(ca), "--password-stdin",
                       "--duration", "4h")  # fmt: skip
    assert code == 1 and says in out and f"HTTP {status}" in out and PASSWORD not in out
    sent = controller.bodies[0]
    assert {k: sent[k] for k in ("username", "password", "totp", "asset", "port", "protocol", "duration")} == {
        "username": "alice", "password": PASSWORD, "totp": "123456", "asset": "web1", "port": 5432,
        "protocol": "tcp", "duration": 14400,
    }  # fmt: skip


def test_bad_input_and_untrusted_certificate(loopback: tuple[str, FakeController, Path]) -> None:
    url, controller, ca = loopback
    base = ["--server", url, "--user", "alice", "--ca-file", str(ca), "--password-stdin"]
    assert invoke("web1:99999", *base)[0] == 2
    assert invoke("web1", *base, "--duration", "2h")[0] == 2
    assert invoke("web1", *base, "--protocol", "icmp")[0] == 2
    assert invoke("web1", "--server", "http://127.0.0.1", "--password-stdin")[0] == 2
    code, out = invoke("web1", *base, stdin=f"{PASSWORD}\n12ab56\n")
    assert code == 1 and "6 to 8 digits" in out
    code, out = invoke("web1", "--server", url, "--user", "alice", "--password-stdin")  # system CAs only
    assert code == 1 and "--ca-file" in out
    assert controller.bodies == []


def test_no_terminal_and_no_password_stdin_fails_clearly(loopback: tuple[str, FakeController, Path]) -> None:
    url, _, ca = loopback
    code, out = invoke("web1", "--server", url, "--ca-file", str(ca), "--user", "alice", stdin="")
    assert code == 1 and "--password-stdin" in out


needs_hosts = pytest.mark.skipif(
    os.geteuid() != 0
    or not all(shutil.which(t) for t in ("ip", "nft", "ssh", "ssh-keyscan", "setsid"))
    or not Path("/usr/sbin/sshd").exists(),
    reason="needs root, iproute2, nftables and openssh (client and server)",
)


@needs_hosts
def test_request_opens_the_port_for_this_client_fake_controller(
    tls: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    with SshFleet(1, tmp_path / "fleet", clients=2) as fleet:
        host = fleet.hosts[0]
        argv = [sys.executable, "-m", "http.server", "5432", "--bind", str(host.address)]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host.ns, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for(
                lambda: call_in_netns(host.ns, lambda: tcp_connects(host.address, 5432, 1.0)), 30, "port 5432"
            )
            access = Access(fleet.key, tmp_path / "state", remote_dir=str(tmp_path / "on-host"))
            asset = host.asset(mode="protected", rules_revision=2)
            assert fleet.call(lambda: hosts.enforce(asset, access, [SERVER_ADDRESS])).outcome == "applied"
            keeper = JitKeeper(access)
            keeper.update([asset])
            listener = fleet.call(
                lambda: JitListener(
                    JitService(keeper, FakeController()), f"{SERVER_ADDRESS}:0", str(tls[1]), str(tls[2])
                ).start()
            )
            try:
                url = f"https://{SERVER_ADDRESS}:{listener.port}"
                args = (
                    "host0:5432",
                    "--server",
                    url,
                    "--user",
                    "alice",
                    "--ca-file",
                    str(tls[0]),
                    "--password-stdin",
                )

                def reaches(j: int) -> bool:
                    return call_in_netns(fleet.client_ns(j), lambda: tcp_connects(host.address, 5432, 0.5))

                assert not reaches(0)
                code, out = call_in_netns(fleet.client_ns(0), lambda: invoke(*args))
                assert code == 0, out
                assert f"opened host0 tcp/5432 for {client_address(0)} until" in out
                assert reaches(0) and not reaches(1)
                code, out = call_in_netns(fleet.client_ns(1), lambda: invoke(*args, "--json"))
                assert code == 0, out
                assert json.loads(out)["source"] == str(client_address(1))
                assert reaches(1)
            finally:
                listener.stop()
        finally:
            proc.kill()
            proc.wait(5)
