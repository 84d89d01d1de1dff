"""Serve the controller: migrate, bind, TLS 1.3 only, run until signalled."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable

import uvicorn

from zerogate.controller.app import create_app
from zerogate.controller.auth import dummy_password_hash
from zerogate.controller.config import ControllerSettings
from zerogate.controller.deployment import open_database, read_material
from zerogate.controller.refusals import RefusalAudit
from zerogate.controller.state import ControllerState, RevisionWatch
from zerogate.controller.throttle import Throttle, ThrottleLimits

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets
    # whose listener says it is TCP, and without it every response waits ~40 ms
    # for the client's delayed ACK (measured by bench/controller_propagation.py).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


def throttle_limits(settings: ControllerSettings) -> ThrottleLimits:
    return ThrottleLimits(
        per_source=settings.login_failures_per_source,
        per_account=settings.login_failures_per_account,
        per_account_any_source=settings.login_failures_per_account_any_source,
        per_source_keys=settings.key_failures_per_source,
        window=settings.login_failure_window_seconds,
        delay_unit=settings.throttle_delay_seconds,
        account_delay_cap=settings.login_account_delay_max_seconds,
    )


# Longer than any device's report interval (agent.reporting.REPORT_INTERVAL, 5 s)
# and than the client's own keep-alive expiry (60 s, controller_api), so one
# connection (and one CONNECT tunnel through a proxy) carries every report.
KEEP_ALIVE_SECONDS = 75
# Woken long-polls answer at once (see ControllerServer); whatever else still
# runs after this long is cancelled, so a stop takes well under 1 s normally
# and at most about 1.3 s.
GRACEFUL_SHUTDOWN_SECONDS = 1


class ControllerServer(uvicorn.Server):
    """A uvicorn server that ends the devices' long-polls as soon as it is told to stop.

    Without this, each parked ``GET /v1/snapshot`` holds the shutdown until the
    graceful timeout cancels it (a traceback and an HTTP 500 per device).
    """

    def __init__(self, config: uvicorn.Config, watch: RevisionWatch) -> None:
        super().__init__(config)
        self.watch = watch

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Runs in the event loop right after SIGTERM/SIGINT set should_exit,
        # before uvicorn starts waiting for connections to finish.
        log.info("stopping: ending the devices' long-polls with 'controller going away'")
        self.watch.go_away()
        self._drop_idle_connections()
        await super().shutdown(sockets)

    def _drop_idle_connections(self) -> None:
        """Reset idle keep-alive connections instead of closing them politely.

        A TLS close waits for the peer's close_notify, and a device's idle
        pooled connection (kept 60 s between reports) never sends one until it
        is used again: each would hold the shutdown for the whole graceful
        timeout. The device sees a closed connection on its next request and
        opens a new one.
        """
        for connection in list(self.server_state.connections):
            cycle = getattr(connection, "cycle", None)
            transport = getattr(connection, "transport", None)
            if transport is not None and (cycle is None or cycle.response_complete):
                transport.abort()


def serve(
    settings: ControllerSettings, on_listening: Callable[[ControllerSettings], None] | None = None
) -> None:
    ca_pem, ca_key = read_material(settings)
    # Driver and SQL loggers print statements with their parameters (password
    # hashes, TOTP secrets): keep them quiet at every zerogate log level.
    for noisy in ("alembic", "aiosqlite", "asyncpg", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # migrated, append-only triggers restored, audit anchor wired
    db = open_database(settings, ca_key)
    # Made now, so the first sign-in with an unknown username is not the slow one.
    dummy_password_hash()
    sock = bind(settings.listen_host, settings.listen_port)
    actual_port = sock.getsockname()[1]
    if actual_port != settings.listen_port:
        settings = settings.model_copy(update={"listen_port": actual_port})
    state = ControllerState(
        settings=settings,
        db=db,
        ca_pem=ca_pem,
        ca_key_pem=ca_key,
        throttle=Throttle(throttle_limits(settings), db=db),  # shared with the other controllers
        watch=RevisionWatch(db),
        refusals=RefusalAudit(db, settings.audit_refusal_window_seconds),
    )
    config = uvicorn.Config(
        create_app(state),
        ssl_certfile=str(settings.server_cert_path),
        ssl_keyfile=str(settings.server_key_path),
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        server_header=False,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 by default, so any
        # local process could forge its source (audit log, throttle). Only the
        # configured proxies are believed; none by default.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=",".join(settings.trusted_proxies) or None,
    )
    config.load()
    assert config.ssl is not None
    config.ssl.minimum_version = ssl.TLSVersion.TLSv1_3
    server = ControllerServer(config, state.watch)
    if on_listening is not None:
        on_listening(settings)
    server.run(sockets=[sock])
