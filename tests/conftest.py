"""Shared pytest fixtures for the zerogate test suite.

Sections below group fixtures by what they provide; add new ones to the section
they belong to (or a new section) rather than to the end of the file.
"""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Tests run with --import-mode=importlib, which does not put tests/ on sys.path.
# Helper modules that live next to this file (pgserver.py) are imported as
# top-level modules; test files may then also `from pgserver import ...`.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from nstools import Netns  # noqa: E402
from pgserver import PostgresServer  # noqa: E402
from zerogate.testbed.localrun import AccountSession, LocalController  # noqa: E402

# ---------------------------------------------------------------------------
# Test outcome on the item, so fixtures can print diagnostics after a failure
# ---------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Under ``--dist loadgroup`` (make test), pytest-xdist keeps the tests of one
    ``xdist_group`` on one worker, in order, by adding ``@group`` to their node ids. When
    that fails (pytest 9 with pytest-xdist 3.8 silently did), modules with a shared Lab
    are set up several times and tests that build on the one before fail at random:
    fail each grouped test with the reason instead."""
    if getattr(item.config.option, "loadgroup", False) and item.get_closest_marker("xdist_group"):
        if "@" not in item.nodeid:
            pytest.fail(
                "--dist loadgroup is not grouping (the node id lacks its @group): check the pytest "
                "and pytest-xdist versions in requirements.lock",
                pytrace=False,
            )


# ---------------------------------------------------------------------------
# Databases: a private PostgreSQL server and per-test databases
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL server per test process (per xdist worker).

    Started lazily, the first time a test asks for it; stopped and its
    directory removed at the end of the session (also on Ctrl-C / SIGTERM).
    """
    with PostgresServer() as server:
        yield server


def _database_name(nodeid: str) -> str:
    """A unique, valid database name that still says which test made it."""
    test = nodeid.rsplit("::", 1)[-1].lower()
    slug = re.sub(r"[^a-z0-9_]+", "_", test).strip("_")[:40]
    return f"t_{slug}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """URL (``postgresql://postgres@127.0.0.1:PORT/DB``) of a new, empty database.

    The database is dropped after the test, disconnecting any session the test
    left open.
    """
    name = _database_name(request.node.nodeid)
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
    ids=["sqlite", "postgresql"],
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run the test once against SQLite and once against PostgreSQL.

    Returns ``sqlite:///<tmp_path>/zerogate.db`` or the URL of a new, empty
    PostgreSQL database; the application converts either to its async driver.
    Deselect the PostgreSQL half with ``-m "not postgres"``.
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'zerogate.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


# ---------------------------------------------------------------------------
# Controller / API fixtures
# ---------------------------------------------------------------------------
# One real controller per test module and database engine (a subprocess of
# `zerogate controller run` on 127.0.0.1), with a signed-in admin. Tests in a
# module share it, so they use unique object names (see `unique`).


@pytest.fixture(scope="module")
def controller_env() -> dict[str, str]:
    """Extra environment for the module's controller; a test module overrides it."""
    return {}


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def controller(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, controller_env: dict[str, str]
) -> Iterator[LocalController]:
    base = tmp_path_factory.mktemp("controller")
    database = ""
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        database = server.create_database(f"zg_{uuid.uuid4().hex[:12]}")
    lc = LocalController(base / "data", database=database, extra_env=controller_env).init()
    try:
        lc.start()
        yield lc
    finally:
        lc.stop()


@pytest.fixture(scope="module")
def admin(controller: LocalController) -> AccountSession:
    """The first admin, bootstrapped and signed in (password + TOTP)."""
    return controller.bootstrap_admin()  # closed by controller.stop()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """unique("grp") -> "grp-1a2b3c": object names that never clash within a module."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:6]}"


# ---------------------------------------------------------------------------
# Network namespaces (the Netns class and `sh` live in tests/nstools.py)
# ---------------------------------------------------------------------------


@pytest.fixture
def make_netns() -> Iterator[Callable[[str], Netns]]:
    """make_netns("gw") -> a new Netns named zgut<pid>gw<hex>; every one is closed at teardown.

    Keep tags short: the name must stay a valid namespace name. Needs root.
    """
    made: list[Netns] = []

    def make(tag: str) -> Netns:
        made.append(Netns(tag))
        return made[-1]

    try:
        yield make
    finally:
        for ns in made:
            ns.close()


# ---------------------------------------------------------------------------
# PKI / network / namespace fixtures (to be added)
# ---------------------------------------------------------------------------
