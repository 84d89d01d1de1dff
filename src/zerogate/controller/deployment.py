"""Create a deployment (``controller init``) and load one to serve it.

Init writes, in DATA_DIR (0700): the CA key and certificate, the server key
and certificate for the configured names, ``controller.toml``, and (SQLite)
the database; it then migrates the schema and prints a one-time bootstrap
code. Private keys and the database are written 0600 and never leave the data
directory; the SQLite path in ``controller.toml`` is relative to it, so a
copied directory never writes to the original's database.

Every database handle that writes audit records carries the deployment's
audit anchor (key from the CA key, checkpoints in DATA_DIR): see
:mod:`zerogate.store.anchor`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, select, text
from sqlalchemy.exc import SQLAlchemyError

from zerogate.controller.config import (
    CONFIG_NAME,
    ControllerSettings,
    load_settings,
    render_settings_file,
)
from zerogate.pki.ca import ca_pin, create_ca, issue_server_certificate
from zerogate.pki.credentials import new_bootstrap_code, normalize_code, token_digest
from zerogate.policy.pool import DEFAULT_BLOCKS
from zerogate.store.anchor import ANCHOR_FILE, AnchorError, AuditAnchor
from zerogate.store.audit_guard import audit_trigger_problems, restore_audit_triggers
from zerogate.store.audit_verify import LogVerification, verify_audit_log
from zerogate.store.db import (
    MIGRATIONS_DIR,
    Database,
    DatabaseError,
    async_url,
    redact_url,
    sqlite_path,
    upgrade_schema,
    utcnow,
)
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
        made.append(data_dir / ANCHOR_FILE)
        db = Database(settings.database_url, anchor=AuditAnchor.for_data_dir(data_dir, ca_key))

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
    from zerogate.store.models import Account

    code = new_bootstrap_code()
    anchor = _anchor(settings, read_material(settings)[1])

    async def run() -> None:
        db = Database(settings.database_url, anchor=anchor)
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


def _anchor(settings: ControllerSettings, ca_key_pem: bytes) -> AuditAnchor:
    try:
        return AuditAnchor.for_data_dir(settings.data_dir, ca_key_pem)
    except AnchorError as exc:
        raise DeploymentError(f"{settings.ca_key_path}: {exc}") from None


def open_database(settings: ControllerSettings, ca_key_pem: bytes) -> Database:
    """The database to serve: migrated, its append-only triggers in place, the
    audit anchor wired. Triggers someone removed are restored, with a warning
    and an audit record saying what was found (the MACs and checkpoints tell
    what was changed meanwhile: 'zerogate admin audit verify')."""
    upgrade_schema(settings.database_url)
    anchor = _anchor(settings, ca_key_pem)

    async def guard() -> None:
        db = Database(settings.database_url, anchor=anchor)
        try:
            async with db.write() as tx:
                conn = await tx.session.connection()
                found = await audit_trigger_problems(conn)
                if found:
                    log.warning(
                        "audit log protection was removed (%s): restoring it; run "
                        "'zerogate admin audit verify' to see what was changed",
                        "; ".join(found),
                    )
                    await restore_audit_triggers(conn)
                    tx.audit(
                        actor="controller",
                        action="restore-audit-triggers",
                        object_type="audit-log",
                        details={"found": found},
                    )
        finally:
            await db.close()

    asyncio.run(guard())
    return Database(settings.database_url, anchor=anchor)


def verify_local(settings: ControllerSettings) -> LogVerification:
    """Verify the audit log straight from the database and this data directory's anchor."""
    anchor = _anchor(settings, read_material(settings)[1])

    async def run() -> LogVerification:
        db = Database(settings.database_url, anchor=anchor)
        try:
            return await verify_audit_log(db)
        finally:
            await db.close()

    return asyncio.run(run())


def _open_to_others(path: Path) -> str | None:
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        return None
    if mode & 0o077:
        return f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}"
    return None


def check_deployment(settings: ControllerSettings, audit_triggers: bool = False) -> list[str]:
    """Problems that would stop 'controller run', without starting anything:
    config, keys, database (file, modes, reachable, schema, deployment row)
    and, with ``audit_triggers``, the audit log's append-only triggers (which
    'run' restores)."""
    problems: list[str] = []
    if not (settings.data_dir / CONFIG_NAME).exists():
        problems.append(f"{settings.data_dir / CONFIG_NAME} is missing: run 'zerogate controller init'")
        return problems
    try:
        read_material(settings)
    except DeploymentError as exc:
        problems.append(str(exc))
    try:
        async_url(settings.database_url)
    except DatabaseError as exc:
        problems.append(str(exc))
        return problems
    path = sqlite_path(settings.database_url)
    if path is not None:
        if not path.exists():
            # Connecting would create an empty file and hide the loss.
            problems.append(
                f"the database file {path} is missing: restore it from a backup, or set 'database' "
                f"in {settings.data_dir / CONFIG_NAME} to where it is"
            )
            return problems
        for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            problems.extend(p for p in [_open_to_others(file)] if p)
    problems.extend(p for p in [_open_to_others(settings.data_dir / ANCHOR_FILE)] if p)
    problems.extend(asyncio.run(_database_problems(settings, audit_triggers)))
    return problems


async def _database_problems(settings: ControllerSettings, audit_triggers: bool) -> list[str]:
    url = settings.database_url
    db = Database(url)
    try:
        return await asyncio.wait_for(_schema_problems(db, audit_triggers), timeout=20)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [f"cannot open the database {redact_url(url)}: {reason}"]
    finally:
        await db.close()


async def _schema_problems(db: Database, audit_triggers: bool) -> list[str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    known = {s.revision for s in ScriptDirectory.from_config(config).walk_revisions()}
    where = redact_url(db.url)
    missing = f"{where} holds no zerogate deployment: run 'zerogate controller init' or fix 'database'"
    async with db.engine.connect() as conn:
        tables = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        if "alembic_version" not in tables or "deployment_state" not in tables:
            return [missing]
        version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
        if version not in known:
            return [f"{where} has schema revision {version!r}, unknown to this zerogate: upgrade zerogate"]
        if not await conn.scalar(text("SELECT count(*) FROM deployment_state WHERE id = 1")):
            return [missing]
        if audit_triggers:
            return [
                f"audit log protection: {p}; 'zerogate controller run' restores it, then run "
                "'zerogate admin audit verify'"
                for p in await audit_trigger_problems(conn)
            ]
    return []
