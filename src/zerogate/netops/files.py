"""Private files: atomic writes (keys, credentials, cached state) and the one way a
password is read from a file the operator keeps (0600, one line)."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def write_private(path: Path, data: str, mode: int = 0o600) -> None:
    """Atomically replace ``path`` with ``data`` (mode 0600 unless told otherwise)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    os.replace(tmp, path)


MAX_SECRET_FILE = 4096


class SecretFileError(ValueError):
    """A password file that cannot be used; the message never holds its content."""


def read_private_secret(path: Path) -> str:
    """The password in ``path``: a regular file of at most 4 KiB that only its owner can
    read, holding one line (a trailing newline is dropped, control characters refused)."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SECRET_FILE:
            raise SecretFileError(f"not a regular file of at most {MAX_SECRET_FILE} bytes")
        if info.st_mode & 0o077:
            raise SecretFileError("the password file is readable by others; chmod 600 it")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not text"
        raise SecretFileError(f"cannot read the password file ({why})") from None
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in secret):
        raise SecretFileError("the file must hold one password on one line")
    return secret
