"""Create a deployment (``controller init``) and load one to serve it.

Init writes, in DATA_DIR (0700): the CA key and certificate, the server key
and certificate for the configured names, ``controller.toml``, and (SQLite)
the database; it then migrates the schema and prints a one-time bootstrap
code. Private keys are written 0600 and never leave the data directory.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from zerogate.controller.config import (
    CONFIG_NAME,
    ControllerSettings,
    load_settings,
    render_settings_file,
)
from zerogate.pki.ca import ca_pin, create_ca, issue_server_certificate
from zerogate.pki.credentials import new_bootstrap_code, normalize_code, token_digest
from zerogate.policy.pool import DEFAULT_BLOCKS
from zerogate.store.db import Database, DatabaseError, redact_url, upgrade_schema, utcnow
from zerogate.store.models import AddressPoolRow, DeploymentState

log = logging.getLogger(__name__)

BOOTSTRAP_TTL = timedelta(days=7)


class DeploymentError(Exception):
    """The deployment cannot be created or loaded; the message says what to do."""


@dataclass(frozen=True)
class InitResult:
    settings: ControllerSettings
    bootstrap_code: str
    ca_pin: str


def write_private(path: Path, data: bytes) -> None:
    """Write a secret so that it is never readable by others, not even briefly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


async def _seed(db: Database, bootstrap_code: str) -> None:
    async with db.sessions() as session, session.begin():
        if await session.scalar(select(DeploymentState)) is not None:
            raise DeploymentError(
                "this database already holds a zerogate deployment; use another database or an empty one"
            )
        now = utcnow()
        session.add(
            DeploymentState(
                id=1,
                revision=1,
                bootstrap_digest=token_digest(normalize_code(bootstrap_code)),
                bootstrap_expires_at=now + BOOTSTRAP_TTL,
                created_at=now,
            )
        )
        session.add(AddressPoolRow(name="default", blocks=[str(b) for b in DEFAULT_BLOCKS], created_at=now))
    async with db.write() as tx:
        tx.audit(
            actor="cli:controller-init",
            action="init",
            object_type="deployment",
            details={"database": redact_url(db.url)},
        )


def init_deployment(data_dir: Path, overrides: dict[str, Any]) -> InitResult:
    """Create everything a controller needs; on any failure remove what was made."""
    import asyncio

    if (data_dir / CONFIG_NAME).exists():
        raise DeploymentError(f"{data_dir} already holds a deployment ({CONFIG_NAME} exists)")
    created_dir = not data_dir.exists()
    if data_dir.exists() and any(data_dir.iterdir()):
        raise DeploymentError(f"{data_dir} is not empty; choose a new or empty directory")
    settings = load_settings(data_dir, overrides)
    made: list[Path] = []
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        ca_key, ca_cert = create_ca("zerogate deployment CA")
        server_key, server_cert = issue_server_certificate(ca_key, ca_cert, settings.server_names)
        for path, data, secret in (
            (settings.ca_key_path, ca_key, True),
            (settings.ca_cert_path, ca_cert, False),
            (settings.server_key_path, server_key, True),
            (settings.server_cert_path, server_cert + ca_cert, False),
        ):
            made.append(path)
            if secret:
                write_private(path, data)
            else:
                path.write_bytes(data)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        upgrade_schema(settings.database_url)
        if settings.database_url.startswith("sqlite"):
            made.extend(data_dir.glob("zerogate.db*"))
        code = new_bootstrap_code()
        db = Database(settings.database_url)

        async def seed() -> None:
            try:
                await _seed(db, code)
            finally:
                await db.close()

        asyncio.run(seed())
        config_path = data_dir / CONFIG_NAME
        config_path.write_text(render_settings_file(settings))
        made.append(config_path)
    except BaseException:
        for path in made + list(data_dir.glob("zerogate.db*")):
            path.unlink(missing_ok=True)
        if created_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    return InitResult(settings=settings, bootstrap_code=code, ca_pin=ca_pin(ca_cert))


def reset_bootstrap(settings: ControllerSettings) -> str:
    """A new one-time bootstrap code, allowed only while no admin is active.

    For a deployment whose first code expired or was lost before anyone signed
    in; once an admin exists, admins create accounts instead.
    """
    import asyncio

    from zerogate.store.models import Account

    code = new_bootstrap_code()

    async def run() -> None:
        db = Database(settings.database_url)
        try:
            async with db.write() as tx:
                active = await tx.session.scalar(
                    select(Account).where(Account.kind == "admin", Account.status == "active")
                )
                if active is not None:
                    raise DeploymentError(
                        f"admin {active.username!r} is active: sign in and create accounts instead"
                    )
                tx.state.bootstrap_digest = token_digest(normalize_code(code))
                tx.state.bootstrap_expires_at = utcnow() + BOOTSTRAP_TTL
                tx.audit(
                    actor="cli:controller-reset-bootstrap", action="reset-bootstrap", object_type="deployment"
                )
        finally:
            await db.close()

    asyncio.run(run())
    return code


def read_material(settings: ControllerSettings) -> tuple[bytes, bytes]:
    """(ca_pem, ca_key_pem), refusing keys that others can read."""
    for path in (settings.ca_key_path, settings.server_key_path):
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            raise DeploymentError(
                f"{path} is missing: is {settings.data_dir} a deployment made by 'zerogate controller init'?"
            ) from None
        if mode & 0o077:
            raise DeploymentError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
    return settings.ca_cert_path.read_bytes(), settings.ca_key_path.read_bytes()


def check_deployment(settings: ControllerSettings) -> list[str]:
    """Problems that would stop 'controller run', without starting anything."""
    problems: list[str] = []
    if not (settings.data_dir / CONFIG_NAME).exists():
        problems.append(f"{settings.data_dir / CONFIG_NAME} is missing: run 'zerogate controller init'")
        return problems
    try:
        read_material(settings)
    except DeploymentError as exc:
        problems.append(str(exc))
    try:
        from zerogate.store.db import async_url

        async_url(settings.database_url)
    except DatabaseError as exc:
        problems.append(str(exc))
    return problems
