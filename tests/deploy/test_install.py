"""The install plan (pure) and its application into a temporary root.

The end-to-end ``zerogate install`` runs are in test_systemd.py; these check
the plan's decisions one by one without running the CLI.
"""

from __future__ import annotations

import stat
from pathlib import Path

from zerogate.deploy.install import apply_install, plan_install
from zerogate.deploy.systemd import UnitSpec, env_file_path


def spec(role: str = "connector") -> UnitSpec:
    state = Path(f"/var/lib/zerogate/{role}")
    return UnitSpec(role, Path("/usr/bin/zerogate"), state, env_file_path(role), listen_port=51820)  # type: ignore[arg-type]


def test_a_controller_on_this_host_gets_its_service_user_and_starts() -> None:
    plan = plan_install(
        spec("controller"),
        prefix=Path("/"),
        unit_dir=Path("/etc/systemd/system"),
        environ={},
        start=True,
        enrolled=True,
    )
    assert plan.service_user
    assert plan.start == (
        ("systemctl", "daemon-reload"),
        ("systemctl", "enable", "--now", "zerogate-controller.service"),
    )
    assert plan.next_steps == ()
    assert plan.unit_path == Path("/etc/systemd/system/zerogate-controller.service")


def test_into_a_prefix_nothing_starts_and_the_next_steps_say_what_to_run_on_the_host(tmp_path: Path) -> None:
    plan = plan_install(
        spec("controller"),
        prefix=tmp_path,
        unit_dir=Path("/etc/systemd/system"),
        environ={},
        start=False,
        enrolled=True,
    )
    assert not plan.service_user and plan.start == ()
    assert plan.next_steps[0].startswith("useradd --system") and plan.next_steps[1].startswith(
        "chown -R zerogate"
    )
    assert plan.next_steps[-1] == "systemctl enable --now zerogate-controller.service"
    plan = plan_install(
        spec("connector"),
        prefix=tmp_path,
        unit_dir=Path("/etc/systemd/system"),
        environ={},
        start=False,
        enrolled=False,
    )
    assert plan.next_steps[0] == "zerogate connector enroll 'zg1...' --state-dir /var/lib/zerogate/connector"


def test_apply_writes_with_modes_keeps_an_edited_env_file_and_is_idempotent(tmp_path: Path) -> None:
    proxy = {"HTTPS_PROXY": "http://proxy.example:3128"}
    plan = plan_install(
        spec(),
        prefix=tmp_path,
        unit_dir=Path("/etc/systemd/system"),
        environ=proxy,
        start=False,
        enrolled=True,
    )
    done, _ = apply_install(plan)
    env = tmp_path / "etc/zerogate/connector.env"
    unit = tmp_path / "etc/systemd/system/zerogate-connector.service"
    assert done == [f"wrote {env}", f"wrote {unit}"]
    assert stat.S_IMODE(env.stat().st_mode) == 0o600 and stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "var/lib/zerogate/connector").stat().st_mode) == 0o700
    assert "proxy.example" in env.read_text()

    env.write_text("HTTPS_PROXY=http://edited:3128\n")
    env.chmod(0o644)
    done, _ = apply_install(plan)
    assert done == [f"unchanged: {unit}"]
    assert env.read_text() == "HTTPS_PROXY=http://edited:3128\n"  # the admin's edit stays
    assert stat.S_IMODE(env.stat().st_mode) == 0o600  # but not readable by others
