"""The thinnest end-to-end path: a real controller answers over pinned TLS."""

from __future__ import annotations

from zerogate.testbed.localrun import AccountSession, LocalController


def test_health_and_whoami(controller: LocalController, admin: AccountSession) -> None:
    with controller.client() as c:
        health = c.get("/v1/health")
    assert health["status"] == "ok" and health["revision"] >= 1
    assert admin.client.get("/v1/auth/whoami") == {
        "kind": "admin",
        "id": 1,
        "name": "admin",
        "role": "",
        "mfa": True,
    }
