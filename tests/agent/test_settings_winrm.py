"""The segment server's WinRM settings: nothing needed without Windows assets, the
password only from a private file, weak combinations refused, ``run --check`` says
whether Windows assets can be managed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zerogate.agent import settings as settings_mod
from zerogate.agent.settings import ConfigError, SegmentSettings, load_settings
from zerogate.cli.main import app


@pytest.fixture(autouse=True)
def _no_host_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    monkeypatch.setattr(settings_mod, "CONFIG_DIR", etc)
    for name in list(os.environ):
        if name.startswith("ZEROGATE_SEGMENT_"):
            monkeypatch.delenv(name)


def test_without_windows_assets_nothing_is_needed() -> None:
    s, _ = load_settings(SegmentSettings, environ={})
    assert (s.winrm_password_file, s.winrm_auth, s.winrm_transport) == ("", "kerberos", "https")
    assert s.winrm_password() is None


def test_the_winrm_password_comes_from_a_private_file(tmp_path: Path) -> None:
    secret = tmp_path / "winrm.pw"
    secret.write_text("W1n-s3cret\n")
    secret.chmod(0o600)
    s, _ = load_settings(SegmentSettings, flags={"winrm_password_file": str(secret)}, environ={})
    assert s.winrm_password() == "W1n-s3cret"
    assert "W1n-s3cret" not in json.dumps(s.model_dump(mode="json"))
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match=r"winrm_password_file.*readable by others") as info:
        s.winrm_password()
    assert "W1n-s3cret" not in str(info.value)
    missing, _ = load_settings(
        SegmentSettings, flags={"winrm_password_file": str(tmp_path / "no")}, environ={}
    )
    with pytest.raises(ConfigError, match="winrm_password_file"):
        missing.winrm_password()
    path = tmp_path / "segment.toml"
    path.write_text('[segment]\nwinrm_password = "W1n-s3cret"\n')
    with pytest.raises(ConfigError, match="winrm_password: Extra inputs are not permitted"):
        load_settings(SegmentSettings, config=path, environ={})


def test_auth_and_transport_are_checked_and_case_insensitive() -> None:
    env = {"ZEROGATE_SEGMENT_WINRM_AUTH": "NTLM", "ZEROGATE_SEGMENT_WINRM_TRANSPORT": "HTTPS"}
    s, _ = load_settings(SegmentSettings, environ=env)
    assert (s.winrm_auth, s.winrm_transport) == ("ntlm", "https")
    for bad in ({"winrm_auth": "basic"}, {"winrm_auth": "credssp"}, {"winrm_transport": "ftp"}):
        with pytest.raises(ConfigError, match="winrm_"):
            load_settings(SegmentSettings, flags=bad, environ={})
    with pytest.raises(ConfigError, match="needs winrm_auth"):
        load_settings(SegmentSettings, flags={"winrm_transport": "http", "winrm_auth": "ntlm"}, environ={})
    s, _ = load_settings(SegmentSettings, flags={"winrm_transport": "http"}, environ={})  # Kerberos: fine
    assert s.winrm_transport == "http"


def test_run_check_says_whether_windows_assets_can_be_managed(tmp_path: Path) -> None:
    def check(*extra: str) -> tuple[int, str]:
        r = CliRunner().invoke(
            app, ["segment", "run", "--check", "--state-dir", str(tmp_path), *extra], env={"COLUMNS": "300"}
        )
        return r.exit_code, r.output

    code, out = check()
    assert code == 0 and "no WinRM password" in " ".join(out.split())
    config = tmp_path / "segment.toml"
    secret = tmp_path / "winrm.pw"
    secret.write_text("pw\n")
    secret.chmod(0o640)
    config.write_text(f'[segment]\nwinrm_password_file = "{secret}"\n')
    code, out = check("--config", str(config))
    assert code == 1 and "winrm_password_file" in out
    secret.chmod(0o600)
    code, out = check("--config", str(config))
    assert code == 0 and "no WinRM password" not in " ".join(out.split())
