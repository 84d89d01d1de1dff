"""The local target's rollback: a detached ``python -m zerogate.deploy.firewall.rollback_timer``.

:class:`~zerogate.deploy.firewall.targets.LocalTarget` starts it (own session, no
inherited fds) before an apply's rules go live. It waits for the pending deadline
and restores the snapshot under the state lock unless the apply was confirmed or
rolled back meanwhile (then ``confirm``/``rollback`` stop it with SIGTERM).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from zerogate.deploy.firewall.commit import MAX_CONFIRM_WINDOW, NOT_CONFIRMED, restore, utc_clock
from zerogate.deploy.firewall.errors import FirewallApplyError
from zerogate.deploy.firewall.state import StateStore
from zerogate.deploy.firewall.targets import TIMER_FLAG, LocalTarget

log = logging.getLogger(__name__)


def run_rollback_timer(state_dir: Path, token: str, poll: float = 0.2) -> str:
    """The detached timer: wait for the pending deadline, then roll back unless confirmed.

    The deadline is re-read every ``poll`` seconds and again under the lock, because apply
    moves it (from "check running" to "awaiting confirm") while the timer already runs.
    """
    store = StateStore(state_dir)
    target = LocalTarget(store)
    gone = "nothing to do: the apply was confirmed or rolled back"
    end = time.monotonic() + MAX_CONFIRM_WINDOW + 3600
    failures = 0
    while time.monotonic() < end and failures < 10:
        try:
            p = store.pending()
            if p is None or p.token != token:
                return gone
            if (left := p.deadline - time.time()) > 0:
                time.sleep(min(poll, left))
                continue
            with store.lock(wait=600):  # an apply still checking holds it; so does confirm
                p = store.pending()
                if p is None or p.token != token:
                    return gone
                if p.deadline > time.time():
                    continue
                restore(store, target, p, NOT_CONFIRMED, f"deadline {utc_clock(p.deadline)} passed")
                return f"rolled back apply {p.id}: {', '.join(p.tables)} restored from {p.snapshot_file}"
        except FirewallApplyError as exc:
            failures += 1
            log.error("rollback for %s failed: %s", token[:6], exc)
            time.sleep(5)  # the marker stays: try again, then leave it to 'zerogate firewall rollback'
    return "gave up: run 'zerogate firewall rollback' by hand"


def _timer_main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s timer[%(process)d] %(message)s")
    state_dir, token = Path(argv[0]), argv[1]

    def stopped(signum: int, _frame: object) -> None:
        log.info("stopped (%s): the apply was confirmed or rolled back", signal.Signals(signum).name)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stopped)  # confirm/rollback stop us, always while holding the lock
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # own session already; a stray hangup must not stop us
    log.info("armed for token %s...", token[:6])
    log.info("%s", run_rollback_timer(state_dir, token))
    return 0


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == TIMER_FLAG:
    sys.exit(_timer_main(sys.argv[2:]))
