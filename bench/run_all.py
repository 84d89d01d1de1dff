"""Run every benchmark in bench/ with its defaults and print their tables in turn.

Run: .venv/bin/python bench/run_all.py [--only NAME ...] [--timeout S]

Each ``bench/*.py`` script (except this one) runs as its own subprocess with
this interpreter, one after another, so they never compete for the CPU. The
exit status is non-zero when any of them fails or times out. On Ctrl-C or
SIGTERM the running benchmark is asked to stop (SIGTERM, it cleans up its own
controller and temporary files), then killed if it does not stop in time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _common import unwind_on_sigterm

BENCH_DIR = Path(__file__).resolve().parent
STOP_GRACE = 20.0  # seconds a benchmark gets to clean up after SIGTERM


def benchmarks() -> list[Path]:
    me = Path(__file__).resolve()
    return sorted(p for p in BENCH_DIR.glob("*.py") if p.resolve() != me and not p.name.startswith("_"))


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the one child we started: SIGTERM, then SIGKILL after the grace period."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def run_one(script: Path, timeout: float) -> tuple[str, float]:
    started = time.monotonic()
    # Output goes straight to our stdout/stderr so each table appears as it is printed.
    proc = subprocess.Popen([sys.executable, str(script)], cwd=BENCH_DIR.parent)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        return f"timed out after {timeout:.0f} s", time.monotonic() - started
    finally:
        stop(proc)
    return ("ok" if rc == 0 else f"exit status {rc}"), time.monotonic() - started


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="run only this script (repeatable)"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds each benchmark may take (default 900)"
    )
    args = parser.parse_args(argv)
    scripts = benchmarks()
    if args.only:
        wanted = {name.removesuffix(".py") for name in args.only}
        unknown = wanted - {p.stem for p in scripts}
        if unknown:
            parser.error(f"no such benchmark: {', '.join(sorted(unknown))}")
        scripts = [p for p in scripts if p.stem in wanted]
    unwind_on_sigterm()

    results: list[tuple[str, str, float]] = []
    try:
        for script in scripts:
            print(f"== {script.name}", flush=True)
            outcome, seconds = run_one(script, args.timeout)
            results.append((script.name, outcome, seconds))
            print(flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

    width = max(len(name) for name, _, _ in results)
    print(f"{'benchmark':<{width}}  {'seconds':>7}  outcome")
    print(f"{'-' * width}  {'-' * 7}  {'-' * 20}")
    for name, outcome, seconds in results:
        print(f"{name:<{width}}  {seconds:>7.1f}  {outcome}")
    return 0 if all(outcome == "ok" for _, outcome, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
