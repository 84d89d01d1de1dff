"""Clean-up watchdogs for what the testbed starts: one small Python process per
resource (a topology slot, a private slapd, the tests' PostgreSQL) that outlives
its owner only to clean up after it.

``atexit`` does not run when the owner is SIGKILLed or calls ``os._exit`` (a
crashed xdist worker, pytest-timeout). So the owner starts a watchdog whose
stdin is a pipe only the owner writes to: when the owner ends, the pipe reaches
EOF and the watchdog stops the resource by its own records. A clean close first
tells the watchdog to stand down (:func:`dismiss_watchdog`). The watchdog runs
in its own session, so a Ctrl-C aimed at the tests does not stop it first.
What a watchdog cleans is its owner's business: the code it runs is passed in.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Sequence

from zerogate.netops.command import spawn


def start_watchdog(args: Sequence[str], *, pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
    """Start ``python -I ARGS`` (``-c CODE ...`` or ``SCRIPT ...``) reading the owner's pipe on stdin."""
    return spawn(
        [sys.executable, "-I", *args],
        stdin=subprocess.PIPE,
        stderr=None,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
    )


def dismiss_watchdog(watchdog: subprocess.Popen[bytes], farewell: bytes = b"") -> None:
    """The owner cleaned up itself: send ``farewell``, close the pipe, wait for the watchdog to leave."""
    with contextlib.suppress(OSError, ValueError):
        if watchdog.stdin is not None:
            if farewell:
                watchdog.stdin.write(farewell)
            watchdog.stdin.close()
    try:
        watchdog.wait(timeout=10)
    except subprocess.TimeoutExpired:
        watchdog.kill()  # our own child
        watchdog.wait()
