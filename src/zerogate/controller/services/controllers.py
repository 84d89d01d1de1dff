"""The controllers of one deployment: one-time join secrets and heartbeats.

A join secret lets ``zerogate controller join`` make another controller of an
existing deployment without anyone copying the CA key by hand. The admin API
makes a 256-bit random secret, shows it once, and stores only its SHA-256 and
the CA key and certificate sealed with AES-256-GCM under a key derived from
the secret (HKDF-SHA256, random salt). The database therefore never holds
the CA key in clear, and the secret is never stored. The audit anchor's key
is derived from the CA key (:mod:`zerogate.store.anchor`), so the joined
controller gets it with the CA key and nothing else has to travel.

Every running controller upserts its row in ``controllers`` every
:data:`HEARTBEAT_SECONDS`; a row older than :data:`MISSED_BEATS` beats reads
as offline. The table is bounded (stale rows deleted, at most
:data:`MAX_CONTROLLERS` rows).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import secrets
import shutil
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller.config import CONFIG_NAME, ControllerSettings, load_settings, render_settings_file
from zerogate.controller.deployment import write_private
from zerogate.pki.ca import issue_server_certificate
from zerogate.store.anchor import ANCHOR_FILE, AuditAnchor
from zerogate.store.db import Database, sqlite_path, utcnow
from zerogate.store.models_controllers import ControllerJoinSecret, ControllerRow

log = logging.getLogger(__name__)

SECRET_PREFIX = "zgj_"  # noqa: S105 - the prefix of a join secret, not a secret
SECRET_RE = re.compile(r"zgj_[A-Za-z0-9_-]{43}")
NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,61}[A-Za-z0-9])?")
NAME_FILE = "controller-name"  # in the data dir: the name this controller heartbeats under
MAX_OUTSTANDING = 20  # unused, unexpired join secrets at once
HEARTBEAT_SECONDS = 5.0
MISSED_BEATS = 3
MAX_CONTROLLERS = 64
FORGET_AFTER = timedelta(days=30)
_INFO = b"zerogate controller join v1"


class JoinError(Exception):
    """A join secret cannot be made or used; the message says why (never the secret)."""


# ---------------------------------------------------------------------------
# sealing
# ---------------------------------------------------------------------------


def new_secret() -> tuple[str, bytes]:
    """(text shown to the admin once, the 32 raw bytes)."""
    raw = secrets.token_bytes(32)
    return SECRET_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode(), raw


def parse_secret(text: str) -> bytes:
    text = text.strip()
    if not SECRET_RE.fullmatch(text):
        raise JoinError("this is not a join secret (expected zgj_ and 43 characters)")
    return base64.urlsafe_b64decode(text[len(SECRET_PREFIX) :] + "=")


def secret_hash(raw: bytes) -> str:
    return hashlib.sha256(b"zerogate join secret\0" + raw).hexdigest()


def _aead(raw: bytes, salt: bytes) -> AESGCM:
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO).derive(raw))


def seal(raw: bytes, ca_cert: bytes, ca_key: bytes) -> tuple[bytes, bytes, bytes]:
    """(salt, nonce, ciphertext) of the CA material; the hash is bound as associated data."""
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    plain = json.dumps({"ca_cert": ca_cert.decode(), "ca_key": ca_key.decode()}).encode()
    return salt, nonce, _aead(raw, salt).encrypt(nonce, plain, secret_hash(raw).encode())


def unseal(raw: bytes, row: ControllerJoinSecret) -> tuple[bytes, bytes]:
    """(ca_cert, ca_key) from a row sealed with ``raw``."""
    try:
        plain = _aead(raw, row.salt).decrypt(row.nonce, row.ciphertext, row.secret_hash.encode())
        body = json.loads(plain)
        return body["ca_cert"].encode(), body["ca_key"].encode()
    except (InvalidTag, ValueError, KeyError, TypeError):
        raise JoinError("the join secret does not open the stored CA material") from None


# ---------------------------------------------------------------------------
# join secrets
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NewJoinSecret:
    secret: str
    row: ControllerJoinSecret


async def create_join_secret(
    session: AsyncSession, ca_cert: bytes, ca_key: bytes, created_by: str, ttl_minutes: int
) -> NewJoinSecret:
    """Seal the CA material under a new one-time secret. Spent and expired rows
    are deleted first, and the outstanding ones are capped."""
    now = utcnow()
    await session.execute(
        delete(ControllerJoinSecret).where(
            (ControllerJoinSecret.used_at.is_not(None)) | (ControllerJoinSecret.expires_at < now)
        )
    )
    outstanding = await session.scalar(select(func.count()).select_from(ControllerJoinSecret))
    if (outstanding or 0) >= MAX_OUTSTANDING:
        raise JoinError(f"{MAX_OUTSTANDING} join secrets are outstanding: use them or let them expire")
    text, raw = new_secret()
    salt, nonce, ciphertext = seal(raw, ca_cert, ca_key)
    row = ControllerJoinSecret(
        secret_hash=secret_hash(raw),
        hint=text[len(SECRET_PREFIX) : len(SECRET_PREFIX) + 4],
        salt=salt,
        nonce=nonce,
        ciphertext=ciphertext,
        created_by=created_by,
        created_at=now,
        expires_at=now + timedelta(minutes=ttl_minutes),
        used_at=None,
        used_by="",
    )
    session.add(row)
    await session.flush()
    return NewJoinSecret(text, row)


async def open_join_secret(session: AsyncSession, raw: bytes) -> tuple[ControllerJoinSecret, bytes, bytes]:
    """The row and its (ca_cert, ca_key); refuses unknown, used and expired secrets."""
    row = await session.scalar(
        select(ControllerJoinSecret).where(ControllerJoinSecret.secret_hash == secret_hash(raw))
    )
    if row is None:
        raise JoinError(
            "unknown join secret: check it was copied whole, or make a new one with "
            "'zerogate admin controller join-secret'"
        )
    if row.used_at is not None:
        raise JoinError("this join secret was already used: make a new one")
    if row.expires_at <= utcnow():
        raise JoinError("this join secret has expired: make a new one")
    ca_cert, ca_key = unseal(raw, row)
    return row, ca_cert, ca_key


async def claim_join_secret(session: AsyncSession, row_id: int, name: str) -> None:
    """Mark the secret used, atomically: of two joins with one secret one wins."""
    now = utcnow()
    result = await session.execute(
        update(ControllerJoinSecret)
        .where(
            ControllerJoinSecret.id == row_id,
            ControllerJoinSecret.used_at.is_(None),
            ControllerJoinSecret.expires_at > now,
        )
        .values(used_at=now, used_by=name)
    )
    if getattr(result, "rowcount", 0) != 1:
        raise JoinError("this join secret was already used: make a new one")


# ---------------------------------------------------------------------------
# heartbeats
# ---------------------------------------------------------------------------


def controller_name(data_dir: Path) -> str:
    """The name written by 'controller join', else this host's name."""
    try:
        name = (data_dir / NAME_FILE).read_text().strip()
    except OSError:
        name = ""
    if NAME_RE.fullmatch(name):
        return name
    host = socket.gethostname()
    return host if NAME_RE.fullmatch(host) else "controller"


async def beat(db: Database, name: str, url: str, version: str, started: datetime) -> None:
    """Upsert this controller's row; forget stale rows and keep the table bounded."""
    if db.is_sqlite:
        # One writer at a time in SQLite: take this process's write turn (no
        # revision bump, no audit record) rather than race the API's writes.
        async with db.write() as tx:
            await _upsert(tx.session, name, url, version, started)
        return
    # PostgreSQL: a transaction of its own, clear of the deployment row's lock.
    async with db.sessions() as session, session.begin():
        await _upsert(session, name, url, version, started)


async def _upsert(session: AsyncSession, name: str, url: str, version: str, started: datetime) -> None:
    now = utcnow()
    row = await session.get(ControllerRow, name)
    if row is None:
        session.add(ControllerRow(name=name, url=url, version=version, started_at=started, last_seen=now))
    else:
        row.url, row.version, row.started_at, row.last_seen = url, version, started, now
    await session.execute(delete(ControllerRow).where(ControllerRow.last_seen < now - FORGET_AFTER))
    keep = select(ControllerRow.name).order_by(ControllerRow.last_seen.desc()).limit(MAX_CONTROLLERS)
    await session.execute(delete(ControllerRow).where(ControllerRow.name.not_in(keep.scalar_subquery())))


async def heartbeat_loop(db: Database, name: str, url: str, version: str) -> None:
    """Beat every HEARTBEAT_SECONDS until cancelled; a failed beat is logged and retried."""
    started = utcnow()
    while True:
        try:
            await beat(db, name, url, version, started)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("controller heartbeat not written: %s", type(exc).__name__)
        await asyncio.sleep(HEARTBEAT_SECONDS)


async def list_controllers(session: AsyncSession) -> list[dict[str, Any]]:
    now = utcnow()
    cutoff = now - timedelta(seconds=HEARTBEAT_SECONDS * MISSED_BEATS)
    rows = (await session.scalars(select(ControllerRow).order_by(ControllerRow.name))).all()
    return [
        {
            "name": r.name,
            "url": r.url,
            "version": r.version,
            "started_at": r.started_at.isoformat(timespec="seconds"),
            "last_seen": r.last_seen.isoformat(timespec="seconds"),
            "status": "online" if r.last_seen >= cutoff else "offline",
        }
        for r in rows
    ]


# ---------------------------------------------------------------------------
# joining (the 'zerogate controller join' side)
# ---------------------------------------------------------------------------


def join_deployment(data_dir: Path, name: str, secret: str, overrides: dict[str, Any]) -> ControllerSettings:
    """Make ``data_dir`` another controller of the deployment in the database.

    Nothing is written unless the secret opens the stored CA material and this
    join wins the claim on it; on any later failure what was made is removed
    (the secret stays spent: make a new one).
    """
    database = str(overrides.get("database") or "")
    if not database or sqlite_path(database) is not None or database.startswith("sqlite"):
        raise JoinError(
            "several controllers need PostgreSQL: give --database postgresql://USER:PASS@HOST:PORT/DB "
            "(a SQLite deployment has exactly one controller)"
        )
    if not NAME_RE.fullmatch(name):
        raise JoinError("--name: a host name (letters, digits, dots and dashes, at most 63)")
    raw = parse_secret(secret)
    if (data_dir / CONFIG_NAME).exists():
        raise JoinError(f"{data_dir} already holds a deployment ({CONFIG_NAME} exists)")
    if data_dir.exists() and any(data_dir.iterdir()):
        raise JoinError(f"{data_dir} is not empty; choose a new or empty directory")
    settings = load_settings(data_dir, overrides)

    async def opened() -> tuple[int, bytes, bytes]:
        db = Database(settings.database_url)
        try:
            async with db.read() as session:
                row, ca_cert, ca_key = await open_join_secret(session, raw)
                return row.id, ca_cert, ca_key
        except SQLAlchemyError as exc:
            raise JoinError(
                "the database holds no join secrets: is it a zerogate deployment, upgraded to this version? "
                f"({type(exc).__name__})"
            ) from None
        finally:
            await db.close()

    row_id, ca_cert, ca_key = asyncio.run(opened())  # nothing written yet
    created_dir = not data_dir.exists()
    made: list[Path] = []
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data_dir.chmod(0o700)
        made.append(data_dir / ANCHOR_FILE)

        async def claim() -> None:
            db = Database(settings.database_url, anchor=AuditAnchor.for_data_dir(data_dir, ca_key))
            try:
                async with db.write() as tx:
                    await claim_join_secret(tx.session, row_id, name)
                    tx.audit(
                        actor=f"cli:controller-join:{name}",
                        action="join-controller",
                        object_type="controller",
                        object_id=name,
                        details={"server_names": list(settings.server_names)},
                    )
            finally:
                await db.close()

        asyncio.run(claim())
        server_key, server_cert = issue_server_certificate(ca_key, ca_cert, settings.server_names)
        for path, data, private in (
            (settings.ca_key_path, ca_key, True),
            (settings.ca_cert_path, ca_cert, False),
            (settings.server_key_path, server_key, True),
            (settings.server_cert_path, server_cert + ca_cert, False),
            (data_dir / NAME_FILE, name.encode() + b"\n", False),
            (data_dir / CONFIG_NAME, render_settings_file(settings).encode(), False),
        ):
            made.append(path)
            if private:
                write_private(path, data)
            else:
                path.write_bytes(data)
    except BaseException:
        for path in made:
            path.unlink(missing_ok=True)
        if created_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    return settings
