"""Atomic writes of private files (keys, credentials, cached state)."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: str, mode: int = 0o600) -> None:
    """Atomically replace ``path`` with ``data`` (mode 0600 unless told otherwise)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    os.replace(tmp, path)
