"""A TCP port on loopback that nothing listens on now, for a server a test starts."""

from __future__ import annotations

import socket


def free_port() -> int:
    """The kernel picks it; a server started right after gets it unless something
    else bound it meanwhile, which the servers' start-up checks report."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
