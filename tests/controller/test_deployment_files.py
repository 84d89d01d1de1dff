"""The deployment's files (issue 8, defects 12 and 14): a copied data directory
uses its own database, ``run --check`` opens the database and says what is
wrong with it, and the database files are private (0600) and refused otherwise.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from zerogate.testbed.localrun import LocalController, zerogate_argv


def zerogate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROGATE_")}
    return subprocess.run(
        [*zerogate_argv(), *args],
        capture_output=True,
        text=True,
        env=env | {"LC_ALL": "C.UTF-8", "COLUMNS": "400"},
        timeout=60,
        check=False,
    )


def said(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join((result.stdout + result.stderr).split())


def check(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return zerogate("controller", "run", "--check", "--data-dir", str(data_dir), *args)


def accounts(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute("SELECT count(*) FROM accounts").fetchone()[0])
    finally:
        con.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def deployment(tmp_path: Path) -> LocalController:
    return LocalController(tmp_path / "original").init()


# ---------------------------------------------------------------------------
# 12: the database path and --check
# ---------------------------------------------------------------------------


def test_a_copied_data_directory_uses_its_own_database(deployment: LocalController, tmp_path: Path) -> None:
    config = (deployment.data_dir / "controller.toml").read_text()
    assert 'database = "sqlite:///zerogate.db"' in config and str(tmp_path) not in config

    copy = LocalController(tmp_path / "copy")
    shutil.copytree(deployment.data_dir, copy.data_dir)
    copy.bootstrap_code = deployment.bootstrap_code
    copy.ca_pin = deployment.ca_pin
    with copy.start():
        copy.bootstrap_admin()
    assert accounts(copy.data_dir / "zerogate.db") == 1
    assert accounts(deployment.data_dir / "zerogate.db") == 0  # the original is untouched
    assert check(deployment.data_dir).returncode == 0


def test_an_absolute_database_path_from_an_older_init_still_works(
    deployment: LocalController, tmp_path: Path
) -> None:
    moved = tmp_path / "elsewhere.db"
    shutil.move(deployment.data_dir / "zerogate.db", moved)
    (deployment.data_dir / "controller.toml").write_text(
        f'[controller]\ndatabase = "sqlite:///{moved}"\nlisten_host = "127.0.0.1"\nlisten_port = 0\n'
    )
    r = check(deployment.data_dir)
    assert r.returncode == 0, said(r)
    assert f"database sqlite:///{moved}" in said(r)


def test_check_reports_a_missing_database_file_without_creating_it(deployment: LocalController) -> None:
    db = deployment.data_dir / "zerogate.db"
    db.unlink()
    r = check(deployment.data_dir)
    assert r.returncode == 1
    assert f"FAIL the database file {db} is missing: restore it from a backup" in said(r)
    assert not db.exists()
    run = zerogate("controller", "run", "--data-dir", str(deployment.data_dir))
    assert run.returncode == 1 and "is missing" in said(run) and "Traceback" not in said(run)
    assert not db.exists()


def test_check_reports_an_unreachable_database(deployment: LocalController) -> None:
    # Port 9 (discard) on 127.0.0.1: nothing listens there in the test environment.
    r = check(deployment.data_dir, "--database", "postgresql://zg:secret-pw@127.0.0.1:9/zerogate")
    assert r.returncode == 1
    text = said(r)
    assert "FAIL cannot open the database postgresql://zg:***@127.0.0.1:9/zerogate" in text
    assert "secret-pw" not in text and "Traceback" not in text


@pytest.mark.postgres
def test_check_reports_a_database_without_a_deployment(
    deployment: LocalController, postgres_url: str
) -> None:
    r = check(deployment.data_dir, "--database", postgres_url)
    assert r.returncode == 1
    assert "holds no zerogate deployment: run 'zerogate controller init'" in said(r)


def test_check_reports_a_database_without_the_deployment_row(deployment: LocalController) -> None:
    con = sqlite3.connect(deployment.data_dir / "zerogate.db")
    with con:
        con.execute("DELETE FROM deployment_state")
    con.close()
    r = check(deployment.data_dir)
    assert r.returncode == 1 and "holds no zerogate deployment" in said(r)


# ---------------------------------------------------------------------------
# 14: private database files
# ---------------------------------------------------------------------------


def test_database_files_are_created_private(deployment: LocalController) -> None:
    data = deployment.data_dir
    with deployment.start():
        deployment.bootstrap_admin()
        files = [*sorted(data.glob("zerogate.db*")), data / "audit-anchor.jsonl"]
        assert {p.name for p in files} >= {"zerogate.db", "zerogate.db-wal", "zerogate.db-shm"}
        assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}


def test_a_database_readable_by_others_is_refused(deployment: LocalController) -> None:
    path = deployment.data_dir / "zerogate.db"
    path.chmod(0o644)
    expected = f"{path} is readable by others (mode 644); run: chmod 600 {path}"
    r = check(deployment.data_dir)
    assert r.returncode == 1 and expected in said(r)
    run = zerogate("controller", "run", "--data-dir", str(deployment.data_dir))
    assert run.returncode == 1 and expected in said(run)


def test_a_wal_file_readable_by_others_is_reported(deployment: LocalController) -> None:
    # SQLite removes the WAL when the last connection closes, so only a running
    # controller's WAL can be found like this; --check still names it.
    wal = deployment.data_dir / "zerogate.db-wal"
    wal.touch(mode=0o600)
    wal.chmod(0o640)
    r = check(deployment.data_dir)
    assert r.returncode == 1
    assert f"{wal} is readable by others (mode 640); run: chmod 600 {wal}" in said(r)
