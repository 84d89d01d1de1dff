"""Several controllers on one PostgreSQL: 'zerogate controller join' with a
one-time secret, and the controllers' heartbeats ('admin controller list').

Real PostgreSQL (tests/pgserver.py), real controller processes (LocalController)
and the real CLI in subprocesses.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select, update

from pgserver import PostgresServer
from zerogate.controller.services.controllers import HEARTBEAT_SECONDS, MISSED_BEATS
from zerogate.netops.command import run
from zerogate.netops.controller_api import ApiError, make_ssl_context
from zerogate.pki.ca import certificate_info, create_csr, generate_private_key, is_issued_by
from zerogate.pki.wireguard import generate_keypair
from zerogate.store.db import Database, utcnow
from zerogate.store.models_controllers import ControllerJoinSecret
from zerogate.testbed.lab import wait_for
from zerogate.testbed.localrun import AccountSession, LocalController, zerogate_argv

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def controller(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalController]:
    """The deployment's first controller, on its own PostgreSQL database."""
    base = tmp_path_factory.mktemp("zjn")
    database = postgres_server.create_database(f"zjn_{uuid.uuid4().hex[:12]}")
    lc = LocalController(base / "first", database=database).init()
    try:
        lc.start()
        yield lc
    finally:
        lc.stop()


@pytest.fixture(scope="module")
def admin_cli(
    controller: LocalController, admin: AccountSession, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Any]:
    """`zerogate admin ...` with a profile holding the bootstrap admin's session."""
    profile = tmp_path_factory.mktemp("zjn-cli") / "admin.json"
    fd = os.open(profile, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": controller.url, "ca_pem": controller.ca_pem.decode(), "token": admin.token}, f)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROGATE_")}
    env |= {"LC_ALL": "C.UTF-8", "COLUMNS": "400", "ZEROGATE_PROFILE": str(profile)}

    def cli(*args: str) -> Any:
        return run([*zerogate_argv(), "admin", *args], env=env, timeout=60, check=False)

    return cli


def join_secret(admin: AccountSession, ttl: int = 60) -> str:
    r: dict[str, Any] = admin.client.post("/v1/controllers/join-secrets", {"ttl_minutes": ttl})
    secret: str = r["secret"]
    assert secret.startswith("zgj_") and r["hint"] == secret[4:8]
    return secret


def join(database: str, data_dir: Path, name: str, secret: str, tmp_path: Path) -> Any:
    secret_file = tmp_path / f"{name}.secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    argv = [*zerogate_argv(), "controller", "join", "--database", database, "--data-dir", str(data_dir)]
    argv += ["--name", name, "--server-name", "127.0.0.1", "--server-name", f"{name}.test"]
    argv += ["--listen", "127.0.0.1:0", "--secret-file", str(secret_file), "--json"]
    return run(argv, timeout=120, check=False)


def rows(database: str) -> list[ControllerJoinSecret]:
    async def read() -> list[ControllerJoinSecret]:
        db = Database(database)
        try:
            async with db.read() as session:
                return list((await session.scalars(select(ControllerJoinSecret))).all())
        finally:
            await db.close()

    return asyncio.run(read())


def served_certificate(url: str) -> bytes:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    return ssl.get_server_certificate((host, int(port))).encode()


def controllers(admin: AccountSession) -> dict[str, dict[str, Any]]:
    listed: list[dict[str, Any]] = admin.client.get("/v1/controllers")
    return {c["name"]: c for c in listed}


def test_join_refuses_sqlite(tmp_path: Path) -> None:
    r = join(f"sqlite:///{tmp_path / 'z.db'}", tmp_path / "d", "zjn-lite", "zgj_" + "A" * 43, tmp_path)
    assert r.returncode != 0
    assert "several controllers need PostgreSQL" in r.stderr + r.stdout
    assert not (tmp_path / "d").exists()


def test_wrong_secret_is_refused_and_writes_nothing(
    controller: LocalController, admin: AccountSession, tmp_path: Path
) -> None:
    real = join_secret(admin)
    wrong = "zgj_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    r = join(controller.database, tmp_path / "d", "zjn-wrong", wrong, tmp_path)
    assert r.returncode != 0
    assert "unknown join secret" in r.stderr + r.stdout
    assert wrong not in r.stderr + r.stdout
    assert not (tmp_path / "d").exists()
    garbled = join(controller.database, tmp_path / "d", "zjn-wrong", "not a secret\x1b[2J", tmp_path)
    assert garbled.returncode != 0 and "not a join secret" in garbled.stderr + garbled.stdout
    assert not (tmp_path / "d").exists()
    # The real secret is still unused.
    assert [x.used_at for x in rows(controller.database) if x.hint == real[4:8]] == [None]


def test_expired_secret_is_refused(
    controller: LocalController, admin: AccountSession, tmp_path: Path
) -> None:
    secret = join_secret(admin, ttl=1)

    async def expire() -> None:
        db = Database(controller.database)
        try:
            async with db.sessions() as session, session.begin():
                await session.execute(
                    update(ControllerJoinSecret)
                    .where(ControllerJoinSecret.hint == secret[4:8])
                    .values(expires_at=utcnow())
                )
        finally:
            await db.close()

    asyncio.run(expire())
    r = join(controller.database, tmp_path / "d", "zjn-late", secret, tmp_path)
    assert r.returncode != 0
    assert "expired" in r.stderr + r.stdout
    assert not (tmp_path / "d").exists()


def test_the_database_never_holds_the_ca_key_or_the_secret(
    controller: LocalController, admin: AccountSession
) -> None:
    secret = join_secret(admin)
    ca_key_pem = (controller.data_dir / "ca.key").read_bytes()
    key = serialization.load_pem_private_key(ca_key_pem, password=None)
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    stored = [x for x in rows(controller.database) if x.hint == secret[4:8]]
    assert len(stored) == 1
    row = stored[0]
    blob = row.ciphertext + row.salt + row.nonce + row.secret_hash.encode()
    body = b"".join(ca_key_pem.splitlines()[1:-1])  # the base64 of the key
    for needle in (ca_key_pem, der, body, body[:40], secret.encode(), secret[4:].encode()):
        assert needle not in blob
    assert len(row.ciphertext) > len(der)  # it is there, sealed


def test_joined_controller_serves_the_same_deployment(
    controller: LocalController, admin: AccountSession, admin_cli: Callable[..., Any], tmp_path: Path
) -> None:
    made = admin_cli("controller", "join-secret", "--ttl-minutes", "10", "--json")
    assert made.returncode == 0, made.stderr
    secret = json.loads(made.stdout)["secret"]
    data_dir = tmp_path / "second"
    r = join(controller.database, data_dir, "zjn-b", secret, tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("ca.key", "server.key"):
        assert (data_dir / name).stat().st_mode & 0o077 == 0
    assert (data_dir / "ca.pem").read_bytes() == controller.ca_pem
    # One-time: the same secret again is refused and writes nothing.
    again = join(controller.database, tmp_path / "third", "zjn-c", secret, tmp_path)
    assert again.returncode != 0 and "already used" in again.stderr + again.stdout
    assert not (tmp_path / "third").exists()

    # Its audit record (the join) carries a MAC from the key it derived from the CA key.
    verified = run([*zerogate_argv(), "controller", "audit-verify", "--data-dir", str(data_dir)], check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    second = LocalController(data_dir, database=controller.database, ca_pin=controller.ca_pin)
    second.log_path = tmp_path / "second.log"
    try:
        second.start()
        leaf = served_certificate(second.url)
        info = certificate_info(leaf)
        assert "zjn-b.test" in info.san_names and "127.0.0.1" in info.san_names
        assert is_issued_by(leaf, controller.ca_pem)
        assert leaf != served_certificate(controller.url)  # its own certificate, not a copy

        # A gateway enrolled through the first controller fetches its snapshot from the second.
        name = f"zjn-gw-{uuid.uuid4().hex[:6]}"
        admin.client.post(
            "/v1/gateways",
            {"name": name, "public_endpoint": f"{name}.test", "port_first": 51820, "port_last": 51830},
        )
        key = admin.client.post(f"/v1/gateways/{name}/provisioning-keys", {})["key"]
        _, wg_public = generate_keypair()
        with controller.client() as c:
            enrolled = c.post(
                "/v1/enroll",
                {
                    "key": key,
                    "name": f"{name}-host",
                    "csr": create_csr(generate_private_key(), f"{name}-host").decode(),
                    "wg_public_key": wg_public,
                },
            )
        with httpx.Client(
            base_url=second.url, verify=make_ssl_context(controller.ca_pem), trust_env=False, timeout=30
        ) as h:
            snap = h.get("/v1/snapshot", headers={"Authorization": f"Bearer {enrolled['credential']}"})
        assert snap.status_code == 200, snap.text
        assert snap.json()["gateway"]["name"] == name

        # Both controllers heartbeat; the stopped one turns offline after 3 missed beats.
        wait_for(
            lambda: (
                {c["status"] for c in controllers(admin).values()} == {"online"}
                and "zjn-b" in controllers(admin)
                and len(controllers(admin)) == 2
            ),
            15,
            "both controllers listed online",
        )
        assert controllers(admin)["zjn-b"]["url"] == second.url
        listed = admin_cli("controller", "list")
        assert listed.returncode == 0, listed.stderr
        assert "zjn-b" in listed.stdout and second.url in listed.stdout and "offline" not in listed.stdout
    finally:
        second.stop()
    stopped = time.monotonic()
    wait_for(
        lambda: controllers(admin)["zjn-b"]["status"] == "offline",
        HEARTBEAT_SECONDS * (MISSED_BEATS + 3),
        "the stopped controller listed offline",
    )
    print(f"\nstopped controller listed offline after {time.monotonic() - stopped:.1f} s")
    listed = json.loads(admin_cli("controller", "list", "--json").stdout)
    assert sorted((c["name"] == "zjn-b", c["status"]) for c in listed) == [
        (False, "online"),
        (True, "offline"),
    ]


def test_two_joins_with_one_secret_one_wins(
    controller: LocalController, admin: AccountSession, tmp_path: Path
) -> None:
    secret = join_secret(admin)
    results: dict[str, Any] = {}

    def attempt(name: str) -> None:
        results[name] = join(controller.database, tmp_path / name, name, secret, tmp_path)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in ("zjn-x", "zjn-y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    codes = sorted(r.returncode for r in results.values())
    assert codes[0] == 0 and codes[1] != 0, {n: r.stderr for n, r in results.items()}
    loser = next(n for n, r in results.items() if r.returncode != 0)
    assert "already used" in results[loser].stderr + results[loser].stdout
    assert not (tmp_path / loser).exists()


def test_a_sqlite_deployment_lists_its_one_controller_and_makes_no_join_secret(tmp_path: Path) -> None:
    with LocalController(tmp_path / "lite").init() as lite:
        lite.start()
        lite_admin = lite.bootstrap_admin()
        with pytest.raises(ApiError) as refused:
            lite_admin.client.post("/v1/controllers/join-secrets", {})
        assert refused.value.status == 409 and "PostgreSQL" in refused.value.message
        wait_for(lambda: len(controllers(lite_admin)) == 1, 15, "the controller's heartbeat")
        (only,) = controllers(lite_admin).values()
        assert only["status"] == "online" and only["url"] == lite.url
