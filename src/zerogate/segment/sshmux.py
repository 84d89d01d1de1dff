"""Ending an OpenSSH ControlMaster without starting ``ssh -O exit`` (one process fewer per operation).

The master listens on its ControlPath (a Unix socket in a 0700 directory of ours) and
speaks OpenSSH's multiplexing protocol (``PROTOCOL.mux`` in the OpenSSH sources):
every message is a 32-bit length and a payload that starts with a 32-bit type. Both
sides send ``MUX_MSG_HELLO`` with the protocol version; the client then sends
``MUX_C_TERMINATE`` with a request id and the master answers ``MUX_S_OK`` (or just
closes the socket: it may exit before the answer is flushed) and exits, closing its
connection to the host -- what ``ssh -O exit`` sends, as a few bytes
on a socket instead of a program run (an ``ssh`` process costs the server about 4 ms
of CPU, measured by ``bench/segment_enforce.py``).

Errors: :class:`MuxError` (an ``OSError``) when no master answers as one should; the
caller then falls back to ``ssh -O exit``.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

MUX_MSG_HELLO = 0x00000001
MUX_C_TERMINATE = 0x10000005
MUX_S_OK = 0x80000001
MUX_VERSION = 4
_MAX_MESSAGE = 256 * 1024  # a hello with extensions is far smaller


class MuxError(OSError):
    """The socket did not answer as an OpenSSH ControlMaster that agreed to exit."""


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">I", len(payload)) + payload)


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise MuxError("the ControlMaster closed the socket mid-message")
        data += chunk
    return data


def _message(sock: socket.socket) -> tuple[int, int]:
    """The next message's type and first 32-bit field (the version or the request id)."""
    (size,) = struct.unpack(">I", _read(sock, 4))
    if not 8 <= size <= _MAX_MESSAGE:
        raise MuxError(f"a ControlMaster message of {size} bytes makes no sense")
    kind, value = struct.unpack(">II", _read(sock, size)[:8])
    return kind, value


def terminate_master(control_path: Path, timeout: float = 5.0) -> None:
    """Ask the ControlMaster on ``control_path`` to exit; returns once it agreed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(control_path))
        _send(sock, struct.pack(">II", MUX_MSG_HELLO, MUX_VERSION))
        kind, version = _message(sock)
        if kind != MUX_MSG_HELLO or version != MUX_VERSION:
            raise MuxError(f"not an OpenSSH ControlMaster (hello {kind:#x}, version {version})")
        _send(sock, struct.pack(">II", MUX_C_TERMINATE, 1))
        if not sock.recv(1, socket.MSG_PEEK):
            return  # the master exited before its answer went out (``ssh -O exit`` accepts that too)
        kind, request = _message(sock)
        if kind != MUX_S_OK or request != 1:
            raise MuxError(f"the ControlMaster refused to exit (answer {kind:#x})")
