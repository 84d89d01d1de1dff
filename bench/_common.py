"""Helpers the benchmark scripts share (run_all skips files starting with "_")."""

from __future__ import annotations

import math
import signal
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
