"""The segment demo (``scripts/demo_segment.py``) as ``make demo </dev/null`` runs
it: no terminal, so it must finish by itself, pass every check and leave nothing
behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.xdist_group("segment-hosts"),
    pytest.mark.skipif(
        os.geteuid() != 0
        or not all(
            shutil.which(t) for t in ("ip", "nft", "conntrack", "ss", "ssh", "sudo", "useradd", "curl")
        )
        or not Path("/usr/sbin/sshd").exists()
        or shutil.which("nginx", path="/usr/sbin:/usr/bin") is None,
        reason="needs root, iproute2, nftables, conntrack, openssh, sudo, useradd, curl and nginx",
    ),
]
DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo_segment.py"


def test_the_segment_demo_finishes_by_itself_and_behaves_as_policy_says() -> None:
    r = subprocess.run(
        [sys.executable, str(DEMO)], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240
    )
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "WRONG" not in out and "Segment demo passed." in out
    expected = [
        r"\[9/9\] Tear down",
        r"the key the server saw is the host's own\s+as policy says",
        r"client A: curl http://web-1/ \(1\)\s+reached",
        r"rule \d+: accept tcp/80 from 10\.99\.254\.1/32\s+evidence: \d+ connection",
        r"a rule for web, from client A only\s+as policy says",
        r"enforced in \d+\.\d s",
        r"client A: curl http://web-1/ \(learned\)\s+reached .* as policy says",
        r"client A: curl http://web-1:8080/ \(not learned\)\s+refused .* as policy says",
        r"client B: curl http://web-1/ \(not learned\)\s+refused .* as policy says",
        r"segment server: ssh \(management, always open\)\s+reached",
        r"table inet zerogate_segment \{",
        r"client B: curl http://web-1/\s+reached .* as policy says",
        r"no namespaces, processes or account left behind\s+as policy says",
    ]
    missing = [pattern for pattern in expected if not re.search(pattern, out)]
    assert not missing, f"missing {missing} in:\n{out}"
