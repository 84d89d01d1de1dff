"""Stopping our own child processes: SIGTERM first, SIGKILL only for one that ignores it."""

from __future__ import annotations

import subprocess
import sys
import time

from zerogate.netops.command import spawn, stop

IGNORES_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"


def test_stop_terms_all_at_once_and_kills_only_the_one_that_ignores_it() -> None:
    polite = spawn([sys.executable, "-c", "import time; time.sleep(60)"])
    stubborn = spawn([sys.executable, "-c", IGNORES_TERM], stdout=subprocess.PIPE)
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"  # the handler is set
    done = spawn([sys.executable, "-c", "pass"])
    done.wait(10)
    started = time.monotonic()
    assert stop([polite, stubborn, done], grace=1.0) == [True, False, False]
    assert time.monotonic() - started < 10
    assert polite.returncode == -15 and stubborn.returncode == -9
