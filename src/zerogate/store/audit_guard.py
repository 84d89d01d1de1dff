"""The audit log's append-only triggers: find them missing or altered, and restore them.

The triggers (created by migrations 0001 and 0003) make the database refuse
UPDATE, DELETE and (PostgreSQL) TRUNCATE on ``audit_log``. Someone with
database rights can drop, disable or rewrite them; the MACs and checkpoints
still catch what they then change, but the controller should not keep running
without its first line of defence, so ``run`` restores them and ``--check``
reports them.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

_REFUSAL = "audit_log is append-only"

_SQLITE_TRIGGERS = {
    f"audit_log_no_{verb.lower()}": (
        f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
        f"BEGIN SELECT RAISE(ABORT, '{_REFUSAL}'); END"
    )
    for verb in ("UPDATE", "DELETE")
}

_PG_FUNCTION = (
    "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    f"$$ BEGIN RAISE EXCEPTION '{_REFUSAL}'; END $$"
)
# name -> (CREATE statement, the events pg_get_triggerdef must list, row or statement level)
_PG_TRIGGERS = {
    "audit_log_append_only": (
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
        ("UPDATE", "DELETE"),
        "FOR EACH ROW",
    ),
    "audit_log_no_truncate": (
        "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
        ("TRUNCATE",),
        "FOR EACH STATEMENT",
    ),
}


def _normal(sql: str) -> str:
    return " ".join(sql.split()).lower()


async def audit_trigger_problems(conn: AsyncConnection) -> list[str]:
    """One line per trigger that is missing, disabled or no longer refuses; [] when all hold."""
    if conn.dialect.name == "sqlite":
        rows = await conn.execute(
            text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_log'")
        )
        found = {name: sql or "" for name, sql in rows}
        problems = []
        for name, sql in _SQLITE_TRIGGERS.items():
            if name not in found:
                problems.append(f"trigger {name} is missing")
            elif _normal(found[name]) != _normal(sql):
                problems.append(f"trigger {name} was altered")
        return problems
    rows = await conn.execute(
        text(
            "SELECT t.tgname, t.tgenabled::text, pg_get_triggerdef(t.oid), p.prosrc "
            "FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
            "WHERE t.tgrelid = to_regclass('audit_log') AND NOT t.tgisinternal"
        )
    )
    pg_found = {name: (enabled, definition, source) for name, enabled, definition, source in rows}
    problems = []
    for name, (_, events, level) in _PG_TRIGGERS.items():
        if name not in pg_found:
            problems.append(f"trigger {name} is missing")
            continue
        enabled, definition, source = pg_found[name]
        if enabled not in ("O", "A"):  # D: disabled; R: fires only for replication sessions
            problems.append(f"trigger {name} is disabled")
        elif (
            not definition.startswith(f"CREATE TRIGGER {name} BEFORE ")
            or any(event not in definition for event in events)
            or level not in definition
            or _normal(source) != _normal(f"BEGIN RAISE EXCEPTION '{_REFUSAL}'; END")
        ):
            problems.append(f"trigger {name} was altered")
    return problems


async def restore_audit_triggers(conn: AsyncConnection) -> None:
    """Recreate every append-only trigger (and on PostgreSQL its function) as the migrations made it."""
    if conn.dialect.name == "sqlite":
        for name, sql in _SQLITE_TRIGGERS.items():
            await conn.execute(text(f"DROP TRIGGER IF EXISTS {name}"))
            await conn.execute(text(sql))
        return
    await conn.execute(text(_PG_FUNCTION))
    for name, (sql, _, _) in _PG_TRIGGERS.items():
        await conn.execute(text(f"DROP TRIGGER IF EXISTS {name} ON audit_log"))
        await conn.execute(text(sql))
