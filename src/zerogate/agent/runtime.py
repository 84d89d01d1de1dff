"""Start, wait, stop: a daemon's snapshot follower on the main thread with its
loops (probes, reports, ...) beside it, the data plane torn down on the way out
unless asked to keep it; and the process wiring around it (signals)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from zerogate import __version__
from zerogate.agent.backend import DataplaneBackend
from zerogate.agent.metrics_local import start_local_metrics
from zerogate.agent.settings import metrics_address
from zerogate.agent.state import DeviceIdentity

log = logging.getLogger(__name__)


class Daemon(Protocol):
    def run(self, stop: threading.Event, keep_on_exit: bool = False) -> None: ...


class StopRequested(BaseException):
    """SIGTERM/SIGINT: unwinds whatever the main thread was waiting on; the daemon tears down."""


def serve(
    role: str,
    dp: DataplaneBackend,
    lock: threading.RLock,
    follow: Callable[[threading.Event], None],
    loops: Sequence[Callable[[threading.Event], None]],
    stop: threading.Event,
    keep_on_exit: bool,
) -> None:
    """Run ``follow`` (the snapshot follower) with ``loops`` beside it in threads;
    on the way out stop them and, unless ``keep_on_exit``, remove tunnel and table."""
    dp.ensure_interface()
    threads = [threading.Thread(target=f, args=(stop,), name=f.__name__, daemon=True) for f in loops]
    for t in threads:
        t.start()
    try:
        follow(stop)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
        if not keep_on_exit:
            with lock:
                dp.teardown()
            log.info("%s stopped; tunnel %s and table inet zerogate removed", role, dp.interface)


def guard_firewalld(
    interface: str, udp_ports: tuple[int, int] | None, stop: threading.Event
) -> threading.Thread | None:
    """On a host running firewalld, keep it letting our tunnel (and ports) through,
    also across ``firewall-cmd --reload`` and firewalld restarts; None without firewalld."""
    from zerogate.netops.firewalld import FirewalldIntegration

    fw = FirewalldIntegration(interface, udp_ports)
    if not fw.available():
        return None
    log.info("firewalld is running: keeping %s (and UDP %s) open through its D-Bus API", interface, udp_ports)
    thread = threading.Thread(target=fw.run_watch, args=(stop,), name="firewalld", daemon=True)
    thread.start()
    return thread


def run_until_signalled(
    identity: DeviceIdentity,
    build: Callable[[DeviceIdentity], Daemon],
    keep_on_exit: bool,
    metrics_listen: str = "",
) -> None:
    """Build the daemon and run it until SIGTERM/SIGINT; its errors propagate.

    With ``metrics_listen`` (a checked setting, see agent/settings.py) the daemon's own
    ``/metrics`` is served there while it runs (:mod:`zerogate.agent.metrics_local`),
    from its ``report()`` when it has one (gateway, connector) and from the process.
    Here rather than in :func:`serve`: every daemon comes through this function,
    the segment server too, which has no snapshot follower for :func:`serve`.
    """
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        # The main thread may sit in a 25-s long-poll: interrupt it, once.
        if not stop.is_set():
            stop.set()
            raise StopRequested

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    daemon = build(identity)
    logging.getLogger("zerogate").info(
        "%s %s (device %d) starting; controller %s",
        identity.role,
        identity.name,
        identity.device_id,
        identity.controller_url,
    )
    listen = metrics_address(metrics_listen)
    metrics = None
    if listen is not None:
        report = getattr(daemon, "report", None)
        metrics = start_local_metrics(
            listen, identity.role, identity.name, __version__, report if callable(report) else None
        )
    try:
        daemon.run(stop, keep_on_exit=keep_on_exit)
    except StopRequested:
        pass
    finally:
        if metrics is not None:
            metrics.stop()
