"""Helpers the benchmark scripts share (run_all skips files starting with "_")."""

from __future__ import annotations

import argparse
import itertools
import math
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation), so p100 is the maximum."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def unwind_on_sigterm() -> None:
    """SIGTERM (e.g. from run_all) unwinds like Ctrl-C, so every ``finally`` runs."""
    signal.signal(signal.SIGTERM, _terminate)


def add_controller_options(parser: argparse.ArgumentParser, time_limit: float) -> None:
    """--database and --time-limit, as every benchmark that starts a controller takes them."""
    parser.add_argument(
        "--database",
        default="",
        help="postgresql://USER@HOST:PORT/DB of an empty database (default: SQLite in a temp dir)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=time_limit,
        help=f"stop measuring after this many seconds (default {time_limit:g})",
    )


def run_in_scratch_dir(prefix: str, run: Callable[[Path], int]) -> int:
    """``run(dir)`` in a temporary directory that is removed however it ends
    (Ctrl-C or SIGTERM unwind every ``finally``: the controller is stopped)."""
    unwind_on_sigterm()
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            return run(Path(tmp))
    except KeyboardInterrupt:
        print("interrupted; controller stopped and temporary files removed", file=sys.stderr)
        return 130


# Inside a client namespace: start a non-blocking TCP connect every EVERY s, give each
# ATTEMPT s; print "ok|fail START END" for each. Ends when stdin closes or after LIMIT s.
POLLER = r"""
import errno, selectors, socket, sys, threading, time
host, port = sys.argv[1], int(sys.argv[2])
every, attempt, limit = float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
stop = threading.Event()
def stdin_closed():
    sys.stdin.read()
    stop.set()
threading.Thread(target=stdin_closed, daemon=True).start()
sel = selectors.DefaultSelector()
end = time.monotonic() + limit
next_start = time.monotonic()
def report(ok, started, done):
    print("ok" if ok else "fail", f"{started:.6f}", f"{done:.6f}", flush=True)
while not stop.is_set() and time.monotonic() < end:
    now = time.monotonic()
    if now >= next_start:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        if s.connect_ex((host, port)) in (0, errno.EINPROGRESS):
            sel.register(s, selectors.EVENT_WRITE, now)
        else:
            s.close()
            report(False, now, time.monotonic())
        next_start = now + every
    for key, _ in sel.select(timeout=max(0.0, next_start - time.monotonic())):
        s, started = key.fileobj, key.data
        sel.unregister(s)
        done = time.monotonic()
        try:
            s.getpeername()  # raises unless connected
            ok = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        except OSError:
            ok = False
        report(ok and done - started <= attempt, started, done)
        s.close()
    now = time.monotonic()
    for key in list(sel.get_map().values()):
        if now - key.data > attempt:
            sel.unregister(key.fileobj)
            key.fileobj.close()
            report(False, key.data, now)
"""


@dataclass
class Poller:
    """Fresh TCP connections from inside a namespace to ``host:port``, one started every
    ``every`` s, each allowed ``attempt`` s: every attempt as (worked, start, end), in the
    order they ended (bench/failover.py's traffic gaps, bench/dataplane.py's cut/restore)."""

    proc: subprocess.Popen[str]
    attempts: list[tuple[bool, float, float]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    reader: threading.Thread | None = None

    @classmethod
    def start(
        cls, namespace: str, host: str, port: int, *, every: float, attempt: float, limit: float
    ) -> Poller:
        """``namespace``: the full name (``topo.ns("cl1")``)."""
        from zerogate.netops import netns  # only the namespace benchmarks need it

        argv = [sys.executable, "-I", "-c", POLLER, host, str(port), str(every), str(attempt), str(limit)]
        proc = subprocess.Popen(
            netns.exec_argv(namespace, argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        poller = cls(proc)
        poller.reader = threading.Thread(target=poller._read, name="poller-reader", daemon=True)
        poller.reader.start()
        return poller

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            words = line.split()
            if len(words) == 3 and words[0] in ("ok", "fail"):
                with self.cond:
                    self.attempts.append((words[0] == "ok", float(words[1]), float(words[2])))
                    self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    @property
    def ok(self) -> list[tuple[float, float]]:
        """(start, end) of each attempt that worked."""
        with self.cond:
            return [(s, e) for worked, s, e in self.attempts if worked]

    def gap(self, kill_started: float, kill_done: float, give_up: float) -> float:
        """The longest time between the ends of two successive successes, from the last one
        ending before ``kill_started`` to the first one started after ``kill_done``."""
        with self.cond:

            def after_kill() -> bool:
                return any(w and s > kill_done for w, s, _ in self.attempts)

            if not self.cond.wait_for(after_kill, timeout=give_up):
                raise TimeoutError(f"no connection worked within {give_up:.0f} s of the kill")
            ok = [(s, e) for w, s, e in self.attempts if w]
        before = [e for _, e in ok if e <= kill_started]
        after = next(e for s, e in ok if s > kill_done)
        if not before:
            raise RuntimeError("the poller saw no success before the kill")
        ends = sorted({max(before), after, *(e for _, e in ok if max(before) < e < after)})
        return max(b - a for a, b in itertools.pairwise(ends))

    def working(self, since: float) -> bool:
        """Whether a connection started after ``since`` worked."""
        with self.cond:
            return any(w and s > since for w, s, _ in self.attempts)

    def wait_flip(self, up: bool, after: float, timeout: float) -> float | None:
        """End time of the first attempt that started after ``after`` and saw ``up``."""

        def found() -> float | None:
            return next((e for w, s, e in self.attempts if w == up and s >= after), None)

        with self.cond:
            self.cond.wait_for(lambda: found() is not None or self.proc.poll() is not None, timeout=timeout)
            return found()

    def state(self) -> bool | None:
        """The result of the attempt that ended last."""
        with self.cond:
            return self.attempts[-1][0] if self.attempts else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()  # the poller ends when its stdin closes
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()  # our own child, by PID
                self.proc.wait(timeout=5)
        if self.reader is not None:
            self.reader.join(timeout=5)
