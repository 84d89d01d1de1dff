"""A small HTTPS server on 127.0.0.1 for tests that play a controller or a
TLS-inspecting middlebox: any handler class, any server context."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class TLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(("127.0.0.1", 0), handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        # Handshake in the handler thread, so a client that aborts it cannot stall accept().
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # rejected and aborted handshakes are what these tests provoke


@contextmanager
def serve_tls(handler: type[BaseHTTPRequestHandler], context: ssl.SSLContext) -> Iterator[str]:
    """Serve until the block ends; yields the base URL (https://127.0.0.1:PORT)."""
    server = TLSServer(handler, context)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
