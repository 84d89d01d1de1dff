"""Status reports: every few seconds, what the daemon sees, POSTed to the controller."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from zerogate.agent.state import DeviceIdentity
from zerogate.netops.controller_api import ControllerError

log = logging.getLogger(__name__)

REPORT_INTERVAL = 5.0


def report_loop(
    identity: DeviceIdentity,
    build: Callable[[], dict[str, Any]],
    stop: threading.Event,
    interval: float | None = None,
) -> None:
    """POST ``build()`` to /v1/report every ``interval`` seconds until ``stop``; never raises.

    One client for the whole loop: its kept-alive connection (60 s, see
    controller_api) outlives the interval, so reports share one TLS connection.
    """
    every = REPORT_INTERVAL if interval is None else interval
    with identity.client(timeout=10) as api:
        while not stop.wait(every):
            try:
                body = build()
                # the controller marks the device offline after three missed intervals
                body.setdefault("details", {})["report_interval"] = every
                api.post("/v1/report", body)
            except ControllerError as exc:
                log.debug("report not delivered: %s", exc)
            except Exception as exc:  # reporting must never stop the data plane
                log.warning("could not build the status report: %s", exc)
