"""Fixtures shared by the segment tests that need a real SSH host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from zerogate.testbed.sshhosts import SshFleet


@pytest.fixture
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SshFleet]:
    """One real sshd host and two client namespaces; after a failed test, the hosts' logs
    (the outcome comes from tests/conftest.py's report hook: pytest does not hand a
    test's exception to its fixtures)."""
    with SshFleet(1, tmp_path / "fleet", clients=2) as f:
        yield f
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(f.logs())
