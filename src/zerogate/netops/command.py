"""Run one system command (ip, wg, nft, wireguard-go) with a readable error."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence

log = logging.getLogger(__name__)


class CommandError(RuntimeError):
    """A system command failed; the message names the command and its stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        shown = " ".join(self.argv[:4]) + (" ..." if len(self.argv) > 4 else "")
        super().__init__(f"'{shown}' failed ({returncode}): {self.stderr or 'no error output'}")


def require(tool: str, package: str) -> str:
    """The path of ``tool``, or an error saying which Debian package provides it."""
    path = shutil.which(tool)
    if path is None:
        raise CommandError([tool], 127, f"{tool} not found: install the Debian package '{package}'")
    return path


def run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    timeout: float = 60,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; raise :class:`CommandError` on a non-zero exit when ``check``."""
    try:
        r = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except FileNotFoundError:
        raise CommandError(argv, 127, f"{argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise CommandError(argv, -1, f"timed out after {timeout:.0f} s") from None
    if check and r.returncode != 0:
        raise CommandError(argv, r.returncode, r.stderr or r.stdout)
    return r
