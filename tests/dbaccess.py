"""Direct access to a test controller's database, as an attacker with database
rights (or a clock that moved on) would have: SQLite through sqlite3, PostgreSQL
through the real psql client. Values come back as strings."""

from __future__ import annotations

import sqlite3
import subprocess

from zerogate.testbed.localrun import LocalController


class SqlError(Exception):
    """The database refused a statement."""


def run_sql(controller: LocalController, statement: str) -> list[tuple[str, ...]]:
    """Run one statement directly on the controller's database, as an attacker with access would."""
    if not controller.database:
        con = sqlite3.connect(controller.data_dir / "zerogate.db", timeout=10)
        try:
            with con:
                rows = con.execute(statement).fetchall()
        except sqlite3.DatabaseError as exc:
            raise SqlError(str(exc)) from exc
        finally:
            con.close()
        return [tuple("" if v is None else str(v) for v in row) for row in rows]
    r = subprocess.run(
        [
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-F",
            "\x1f",
            "-d",
            controller.database,
            "-c",
            statement,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if r.returncode != 0:
        raise SqlError(r.stderr.strip())
    return [tuple(line.split("\x1f")) for line in r.stdout.splitlines()]
