"""``zerogate connector run``: dial out to the gateway and forward into the site."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from zerogate import __version__
from zerogate.connector.plan import ConnectorPlan, plan_connector
from zerogate.netops import links
from zerogate.netops.agent import Backoff, DeviceIdentity, SnapshotFollower, report_loop
from zerogate.netops.dataplane import Dataplane, guard_firewalld, serve

log = logging.getLogger(__name__)

REJECT_AFTER = 180.0  # WireGuard drops a session whose handshake is older than this
SILENT_AFTER = 3.0  # the gateway probes every 0.2 s: this long without a byte means the path is gone


class ConnectorDaemon:
    def __init__(self, identity: DeviceIdentity, interface: str, listen_port: int) -> None:
        self.identity = identity
        self.listen_port = listen_port
        self.dp = Dataplane(interface, identity.wg_private_key)
        self.lock = threading.RLock()
        self.plan: ConnectorPlan | None = None
        self.snapshot: dict[str, Any] | None = None
        self.follower = SnapshotFollower(identity, self.apply)
        self.tunnel_up = False

    def apply(self, snapshot: dict[str, Any]) -> None:
        with self.lock:
            if snapshot.get("revoked"):
                log.error("this connector was revoked or removed: tunnel and forwarding rules removed")
                self.dp.teardown()
                self.plan = self.snapshot = None
                return
            plan = plan_connector(snapshot, interface=self.dp.interface, listen_port=self.listen_port)
            links.enable_forwarding()
            self.dp.apply(
                listen_port=self.listen_port,
                peers=plan.peers,
                addresses=(plan.address,),
                routes=plan.routes,
                nft_body=plan.nft_body,
            )
            if self.plan is None or plan.gateway != self.plan.gateway:
                log.info("dialling gateway %s", plan.gateway or "(none enrolled yet)")
            self.plan, self.snapshot = plan, snapshot
            log.info(
                "applied revision %s: fronting %s (SNAT %s)",
                snapshot.get("revision"),
                ", ".join(snapshot["connector_group"].get("subnets", [])) or "nothing",
                "on" if snapshot["connector_group"].get("snat") else "off",
            )

    def tunnel_loop(self, stop: threading.Event) -> None:
        """Say clearly when the tunnel goes down and why; re-dial with jittered backoff."""
        backoff = Backoff(cap=60)
        next_redial = 0.0
        last_rx, last_rx_at = -1, 0.0
        while not stop.wait(1.0):
            with self.lock:
                plan = self.plan
                if plan is None or not plan.peers:
                    continue
                try:
                    _, peers = self.dp.status()
                except Exception as exc:
                    log.warning("cannot read the tunnel state: %s", exc)
                    continue
            hs = max((p.latest_handshake for p in peers), default=0)
            rx = sum(p.rx_bytes for p in peers)
            now = time.monotonic()
            if rx != last_rx:
                last_rx, last_rx_at = rx, now
            # The gateway probes us several times a second, so a live tunnel always
            # receives; a handshake older than WireGuard's reject-after time is dead.
            age = time.time() - hs if hs else None
            up = age is not None and age < REJECT_AFTER and now - last_rx_at < SILENT_AFTER
            if up and not self.tunnel_up:
                log.info("tunnel to gateway %s is up", plan.gateway)
                backoff.reset()
            if not up:
                if self.tunnel_up:
                    log.warning(
                        "tunnel to gateway %s is down: nothing received for %.0f s "
                        "(gateway down, or UDP to %s blocked on the way)",
                        plan.gateway,
                        now - last_rx_at,
                        plan.peers[0].endpoint,
                    )
                if time.monotonic() >= next_redial:
                    with self.lock:
                        try:
                            self.dp.wg.sync(self.identity.wg_private_key, self.listen_port, plan.peers)
                        except Exception as exc:
                            log.warning("re-dial failed: %s", exc)
                    next_redial = time.monotonic() + backoff.next()
            self.tunnel_up = up

    def report(self) -> dict[str, Any]:
        with self.lock:
            _, peers = self.dp.status()
        return {
            "version": __version__,
            "interface": self.dp.interface,
            "peers": [{"role": "gateway"} | p.as_report() for p in peers],
            "details": {
                "revision": (self.snapshot or {}).get("revision"),
                "tunnel_up": self.tunnel_up,
                "wireguard": self.dp.wg.implementation,
            },
        }

    def run(self, stop: threading.Event, keep_on_exit: bool = False) -> None:
        # replies to our own dialling need no open port; firewalld must only let the tunnel forward
        guard_firewalld(self.dp.interface, None, stop)
        serve(
            "connector",
            self.dp,
            self.lock,
            self.follower.run,
            [self.tunnel_loop, lambda ev: report_loop(self.identity, self.report, ev)],
            stop,
            keep_on_exit,
        )
