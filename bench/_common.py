"""Helpers the benchmark scripts share (run_all skips files starting with "_")."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import tempfile
from collections.abc import Callable
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
