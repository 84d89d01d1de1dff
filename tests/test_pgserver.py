"""The test harness's private PostgreSQL server works and cleans up after itself."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

import pgserver
from pgserver import PostgresServer, PostgresServerError

pytestmark = pytest.mark.postgres


def _async_url(url: str) -> str:
    scheme, rest = url.split("://", 1)
    driver = {"postgresql": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}[scheme]
    return f"{driver}://{rest}"


async def _scalar(url: str, sql: str) -> object:
    engine = create_async_engine(_async_url(url))
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(sql))).scalar_one()
    finally:
        await engine.dispose()


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sqlalchemy_asyncpg_engine_reaches_the_server(postgres_url: str) -> None:
    version = asyncio.run(_scalar(postgres_url, "SELECT version()"))
    assert isinstance(version, str) and version.startswith("PostgreSQL ")
    dbname = postgres_url.rsplit("/", 1)[1]
    assert asyncio.run(_scalar(postgres_url, "SELECT current_database()")) == dbname


def test_psql_client_reaches_the_server(postgres_server: PostgresServer, postgres_url: str) -> None:
    dbname = postgres_url.rsplit("/", 1)[1]
    argv = [
        postgres_server.bin("psql"), "-h", "127.0.0.1", "-p", str(postgres_server.port),
        "-U", "postgres", "-d", dbname, "-Atc", "select 1",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={"LC_ALL": "C"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1\n"
    # The dsn property is a connection string psql accepts as-is.
    done = subprocess.run(
        [postgres_server.bin("psql"), "-d", postgres_server.dsn, "-Atc", "select current_user"],
        capture_output=True, text=True, timeout=30, env={"LC_ALL": "C"},
    )  # fmt: skip
    assert done.stdout == "postgres\n", done.stderr


def test_server_listens_on_loopback_with_durability_off(postgres_server: PostgresServer) -> None:
    out = postgres_server.psql(
        "SELECT current_setting('listen_addresses'), current_setting('fsync'),"
        " current_setting('synchronous_commit'), current_setting('full_page_writes')"
    )
    assert out == "127.0.0.1|off|off|off\n"


def test_fresh_databases_are_empty_and_isolated(postgres_server: PostgresServer) -> None:
    url_a = postgres_server.create_database("isolation_a")
    url_b = postgres_server.create_database("isolation_b")

    async def scenario() -> tuple[object, object]:
        engine_a = create_async_engine(_async_url(url_a))
        try:
            async with engine_a.begin() as conn:
                await conn.execute(text("CREATE TABLE marker (x int)"))
                await conn.execute(text("INSERT INTO marker VALUES (42)"))
            async with engine_a.connect() as conn:
                in_a = (await conn.execute(text("SELECT x FROM marker"))).scalar_one()
            in_b = await _scalar(url_b, "SELECT to_regclass('public.marker') IS NULL")
            # The engine's pool still holds a session; that must not block the drop.
            postgres_server.drop_database("isolation_a")
        finally:
            await engine_a.dispose()
        return in_a, in_b

    in_a, b_has_no_table = asyncio.run(scenario())
    assert in_a == 42
    assert b_has_no_table is True
    names = postgres_server.psql("SELECT datname FROM pg_database").split()
    assert "isolation_a" not in names and "isolation_b" in names
    postgres_server.drop_database("isolation_b")


def test_database_names_are_validated(postgres_server: PostgresServer) -> None:
    with pytest.raises(PostgresServerError, match="invalid test database name"):
        postgres_server.create_database('x"; DROP DATABASE postgres; --')


def test_database_url_gives_an_empty_database_per_engine(database_url: str) -> None:
    if database_url.startswith("sqlite:///"):
        assert Path(database_url.removeprefix("sqlite:///")).parent.is_dir()
        sql = "SELECT count(*) FROM sqlite_master"
    else:
        assert database_url.startswith("postgresql://postgres@127.0.0.1:")
        sql = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    assert asyncio.run(_scalar(database_url, sql)) == 0


def test_stop_removes_data_dir_and_closes_port() -> None:
    server = PostgresServer().start()
    base, port = server.base_dir, server.port
    assert base is not None and (base / "data" / "PG_VERSION").is_file()
    assert oct(base.stat().st_mode & 0o777) == "0o700"
    assert server.psql("select 1") == "1\n"

    server.stop()

    assert not base.exists()
    assert _refuses_connections(port)
    server.stop()  # idempotent
    with pytest.raises(PostgresServerError, match="not running"):
        _ = server.url


def test_failed_start_reports_log_tail_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(pgserver.SERVER_SETTINGS, "no_such_setting_zg", "1")
    server = PostgresServer(start_timeout=20)
    with pytest.raises(PostgresServerError) as failure:
        server.start()
    message = str(failure.value)
    # The server's own complaint is in the message, taken from its log.
    assert 'unrecognized configuration parameter "no_such_setting_zg"' in message
    base = Path(message.split(" did not start in ", 1)[1].split(";", 1)[0])
    assert base.name.startswith("zerogate-pg-")
    assert not base.exists()
    assert server.base_dir is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_test_process_leaves_no_server_behind(signum: signal.Signals) -> None:
    """SIGTERM runs the handler in-process; after SIGKILL the watchdog cleans up."""
    tests_dir = str(Path(__file__).resolve().parent)
    child = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {tests_dir!r})
        from pgserver import PostgresServer
        server = PostgresServer().start()
        print(server.base_dir, server.port, flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        base_s, port_s = proc.stdout.readline().split()
        base, port = Path(base_s), int(port_s)
        assert base.is_dir() and not _refuses_connections(port)
        proc.send_signal(signum)
        assert proc.wait(timeout=20) == -signum
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Postmaster and watchdog were grandchildren; wait until they are gone.
    deadline = time.monotonic() + 15
    while (base.exists() or _processes_mentioning(base)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not base.exists()
    assert _processes_mentioning(base) == []
    assert _refuses_connections(port)


def _processes_mentioning(base: Path) -> list[int]:
    """PIDs of live processes whose command line mentions ``base``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(base).encode() in cmdline:
            found.append(int(entry.name))
    return [pid for pid in found if pid != os.getpid()]
