"""Shared by the JIT listener and CLI tests: the controller's one call faked (the
tests that use it say ``fake_controller`` in their names), TLS files for the
listener, and a listener on loopback whose keeper reaches no host."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from zerogate.netops.controller_api import ApiError
from zerogate.pki.ca import create_ca, issue_server_certificate
from zerogate.segment.jit import JitKeeper
from zerogate.segment.jit_listener import JitListener, JitService
from zerogate.testbed.sshhosts import SERVER_ADDRESS


class FakeController:
    """The controller call, faked: records each body, answers 201 or raises ``ApiError``."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.refuse: ApiError | None = None

    def __call__(self, body: dict[str, Any]) -> Mapping[str, Any]:
        self.bodies.append(body)
        if self.refuse is not None:
            raise self.refuse
        expires = datetime.now(UTC) + timedelta(seconds=body["duration"])
        return {"opening_id": len(self.bodies), "asset": body["asset"], "source": body["source"],
                "protocol": body["protocol"], "port": body["port"], "expires_at": expires.isoformat()}  # fmt: skip


def tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """(CA file, cert file, key file 0600) for 127.0.0.1 and the fleet's server address."""
    ca_key, ca_cert = create_ca("jit test CA")
    key, cert = issue_server_certificate(ca_key, ca_cert, ["127.0.0.1", str(SERVER_ADDRESS)])
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca_cert)
    paths[1].write_bytes(cert)
    paths[2].touch(mode=0o600)
    paths[2].write_bytes(key)
    return paths


@contextlib.contextmanager
def loopback_listener(tls: tuple[Path, Path, Path]) -> Iterator[tuple[str, FakeController, Path]]:
    """A listener on 127.0.0.1 whose keeper knows no host access (nothing may get that far):
    yields (its URL, the fake controller, the CA file)."""
    controller = FakeController()
    listener = JitListener(JitService(JitKeeper(None), controller), "127.0.0.1:0", str(tls[1]), str(tls[2]))
    listener.start()
    try:
        yield f"https://127.0.0.1:{listener.port}", controller, tls[0]
    finally:
        listener.stop()
