"""``zerogate connector run``: dial out to the gateway and forward into the site.

The data plane is injected (:class:`~zerogate.agent.backend.DataplaneBackend`):
the real adapter in production, an in-memory fake in tests/connector/test_daemon.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from zerogate import __version__
from zerogate.agent.backend import DataplaneBackend
from zerogate.agent.backoff import Backoff
from zerogate.agent.follower import SnapshotFollower
from zerogate.agent.reporting import report_loop
from zerogate.agent.runtime import guard_firewalld, serve
from zerogate.agent.state import DeviceIdentity
from zerogate.connector.plan import KEEPALIVE_SECONDS, ConnectorPlan, forwarding_notice, plan_connector
from zerogate.connector.vrrp import VrrpOptions
from zerogate.connector.vrrp_agent import VrrpAgent
from zerogate.model.snapshot import ConnectorSnapshot, GatewayEntry, RevokedSnapshot
from zerogate.netops import links
from zerogate.netops.wireguard import REJECT_AFTER

log = logging.getLogger(__name__)

SILENT_AFTER = 3.0  # the gateway probes every 0.2 s: this long without a byte means the path is gone
NOT_UP_AFTER = 10.0  # no working tunnel this long after the plan (or going down): say what to check
NOT_UP_REPEAT = 300.0  # ... and again at most this often while it lasts
FRESH_HANDSHAKE = 3.0  # a session this new gets a moment to carry traffic before a re-dial drops it
REDIAL_CAP = 5.0  # WireGuard retries a handshake every 5 s by itself; re-adding a peer is cheap


@dataclass
class TunnelWatch:
    """What :meth:`ConnectorDaemon.tunnel_loop` carries between rounds (monotonic times)."""

    last_rx: int = -1
    last_rx_at: float = 0.0
    down_since: float | None = None  # None while up, or before the first round with a plan
    warned_at: float | None = None
    next_redial: float = 0.0
    was_up: bool = False
    backoff: Backoff = field(default_factory=lambda: Backoff(first=1.0, cap=REDIAL_CAP))


class ConnectorDaemon:
    strict: bool | None = None  # forward only tunnel -> subnets (policy drop); None: not decided yet

    def __init__(
        self,
        identity: DeviceIdentity,
        dp: DataplaneBackend,
        listen_port: int,
        *,
        keepalive: int = KEEPALIVE_SECONDS,
        watch_seconds: float | None = None,
        report_interval: float | None = None,
        vrrp: VrrpOptions | None = None,
    ) -> None:
        self.identity = identity
        self.listen_port = listen_port
        self.keepalive = keepalive
        self.dp = dp
        self.report_interval = report_interval
        self.lock = threading.RLock()
        self.plan: ConnectorPlan | None = None
        self.snapshot: ConnectorSnapshot | None = None
        self.follower = SnapshotFollower(identity, ConnectorSnapshot, self.apply, watch_seconds=watch_seconds)
        self.tunnel_up = False
        self.tunnel_hint: str | None = None  # what to check while the tunnel is not up
        self.vrrp_options = vrrp or VrrpOptions()
        self.vrrp = VrrpAgent(identity.state_dir, self.vrrp_options)  # keepalived, when the group has a VIP

    def apply(self, snapshot: ConnectorSnapshot | RevokedSnapshot) -> None:
        with self.lock:
            if isinstance(snapshot, RevokedSnapshot):
                log.error("this connector was revoked or removed: tunnel and forwarding rules removed")
                self.release_forwarding()
                self.vrrp.release()
                self.dp.teardown()
                self.plan = self.snapshot = None
                return
            subnets = [str(n) for n in snapshot.connector_group.subnets]
            if self.strict is None:
                # before forwarding goes on: the record must hold the host's own setting
                before, docker = links.forwarded_before(self.identity.state_dir), links.docker_present()
                self.strict = not (before or docker)
                notice = forwarding_notice(forwarded_before=before, docker=docker, subnets=subnets)
                (log.info if self.strict else log.warning)("%s", notice)
            plan = plan_connector(
                snapshot,
                interface=self.dp.interface,
                listen_port=self.listen_port,
                strict=self.strict,
                vrrp_peers=[str(p) for p in self.vrrp_options.peers],
            )
            if self.keepalive != KEEPALIVE_SECONDS:  # the settings' keepalive for the gateway peer
                plan = replace(plan, peers=tuple(replace(p, keepalive=self.keepalive) for p in plan.peers))
            self.dp.apply(
                listen_port=self.listen_port,
                peers=plan.peers,
                addresses=(plan.address,),
                routes=plan.routes,
                nft_body=plan.nft_body,
            )
            links.enable_forwarding()  # after the table is in place, never before
            if self.plan is None or plan.gateway != self.plan.gateway:
                log.info("dialling gateway %s", plan.gateway or "(none enrolled yet)")
            self.plan, self.snapshot = plan, snapshot
            gateway_addresses = tuple(g.tunnel_address for g in snapshot.gateways if g.tunnel_address)
            group = snapshot.connector_group
            self.vrrp.configure(group.name, group.vrrp_virtual_ip, snapshot.address, gateway_addresses)
            log.info(
                "applied revision %s: fronting %s (SNAT %s)",
                snapshot.revision,
                ", ".join(subnets) or "nothing",
                "on" if snapshot.connector_group.snat else "off",
            )

    def tunnel_loop(self, stop: threading.Event) -> None:
        """Say clearly when the tunnel goes down or never comes up, and what to check;
        while it is down, re-dial with a fresh peer every few seconds."""
        w = TunnelWatch()
        while not stop.wait(1.0):
            self.watch_tunnel(w, time.monotonic())

    def watch_tunnel(self, w: TunnelWatch, now: float) -> None:
        """One round of :meth:`tunnel_loop` at monotonic time ``now``."""
        with self.lock:
            plan = self.plan
            if plan is None or not plan.peers:
                w.down_since = None
                return
            try:
                _, peers = self.dp.status()
            except Exception as exc:
                log.warning("cannot read the tunnel state: %s", exc)
                return
        hs = max((p.latest_handshake for p in peers), default=0)
        rx = sum(p.rx_bytes for p in peers)
        if rx != w.last_rx:
            w.last_rx, w.last_rx_at = rx, now
        # The gateway probes us several times a second, so a live tunnel always
        # receives; a handshake older than WireGuard's reject-after time is dead.
        age = time.time() - hs if hs else None
        up = age is not None and age < REJECT_AFTER and now - w.last_rx_at < SILENT_AFTER
        if up:
            self._tunnel_is_up(plan, w, now, hs)
        else:
            self._tunnel_is_down(plan, w, now, age)
        self.tunnel_up = up
        self.vrrp.set_tunnel(up)  # a connector without its tunnel must not hold the VIP

    def _tunnel_is_up(self, plan: ConnectorPlan, w: TunnelWatch, now: float, hs: int) -> None:
        if not self.tunnel_up:
            at = handshake_time(hs) or "never"
            if w.was_up and w.down_since is not None:
                log.info(
                    "tunnel to gateway %s is up again after %.0f s (handshake at %s)",
                    plan.gateway,
                    now - w.down_since,
                    at,
                )
            else:
                log.info("tunnel to gateway %s is up (handshake at %s)", plan.gateway, at)
        w.was_up, w.down_since, w.warned_at, w.next_redial = True, None, None, 0.0
        w.backoff.reset()
        self.tunnel_hint = None

    def _tunnel_is_down(self, plan: ConnectorPlan, w: TunnelWatch, now: float, age: float | None) -> None:
        endpoint = plan.peers[0].endpoint
        if w.down_since is None:
            w.down_since = w.last_rx_at if self.tunnel_up else now
            if self.tunnel_up:
                log.warning(
                    "tunnel to gateway %s is down: nothing received for %.0f s (gateway restarting "
                    "or down, or UDP to %s blocked on the way): re-dialling",
                    plan.gateway,
                    now - w.last_rx_at,
                    endpoint,
                )
        self.tunnel_hint = tunnel_hint(self.snapshot.gateways if self.snapshot else (), endpoint)
        down_for = now - w.down_since
        if down_for >= NOT_UP_AFTER and (w.warned_at is None or now - w.warned_at >= NOT_UP_REPEAT):
            w.warned_at = now
            answered = age is not None and age < down_for
            log.warning(
                "tunnel to gateway %s (endpoint %s) is not up after %.0f s: %s. %s",
                plan.gateway,
                endpoint,
                down_for,
                "handshakes complete but nothing arrives from the gateway"
                if answered
                else "no WireGuard handshake answer",
                self.tunnel_hint[0].upper() + self.tunnel_hint[1:],
            )
        if now >= w.next_redial and (age is None or age > FRESH_HANDSHAKE):
            self._redial()
            w.next_redial = now + w.backoff.next()

    def _redial(self) -> None:
        """Drop the gateway peer and add it back. A fresh peer has no session, so
        WireGuard handshakes at once (and retries every 5 s) instead of sending
        on a session the gateway may have lost in a restart."""
        with self.lock:
            plan = self.plan
            if plan is None or not plan.peers:
                return
            try:
                self.dp.redial(self.listen_port, plan.peers)
            except Exception as exc:
                log.warning("re-dial failed: %s", exc)
            else:
                log.debug("re-dialled gateway %s with a fresh peer", plan.gateway)

    def report(self) -> dict[str, Any]:
        with self.lock:
            _, peers = self.dp.status()
        hs = max((p.latest_handshake for p in peers), default=0)
        return {
            "version": __version__,
            "interface": self.dp.interface,
            "peers": [{"role": "gateway"} | p.as_report() for p in peers],
            "details": {
                "revision": self.snapshot.revision if self.snapshot else None,
                "tunnel_up": self.tunnel_up,
                "last_handshake_at": handshake_time(hs, iso=True),
                "tunnel_hint": None if self.tunnel_up else self.tunnel_hint,
                "wireguard": self.dp.implementation,
            }
            | ({"vrrp": vrrp} if (vrrp := self.vrrp.report()) else {}),
        }

    def release_forwarding(self) -> None:
        """Put ip_forward back as it was before zerogate (clean stop, revocation)."""
        with self.lock:
            self.strict = None
            try:
                if links.restore_forwarding(self.identity.state_dir):
                    log.info("IPv4 forwarding turned off again, as it was before zerogate")
            except OSError as exc:
                log.error("could not put net.ipv4.ip_forward back as it was before zerogate: %s", exc)

    def report_loop(self, stop: threading.Event) -> None:
        report_loop(self.identity, self.report, stop, self.report_interval)

    def run(self, stop: threading.Event, keep_on_exit: bool = False) -> None:
        # replies to our own dialling need no open port; firewalld must only let the tunnel forward
        guard_firewalld(self.dp.interface, None, stop)

        def follow(ev: threading.Event) -> None:
            try:
                self.follower.run(ev)
            finally:
                self.vrrp.shutdown()  # keepalived is our child: it never outlives us
                if not keep_on_exit:  # before serve() removes the table: no forwarding without it
                    self.release_forwarding()

        serve(
            "connector",
            self.dp,
            self.lock,
            follow,
            [self.tunnel_loop, self.report_loop, self.vrrp.run],
            stop,
            keep_on_exit,
        )


def handshake_time(unix: int, *, iso: bool = False) -> str | None:
    """A WireGuard handshake time (0 = never) as ISO 8601 UTC or HH:MM:SS UTC."""
    if not unix:
        return None
    at = datetime.fromtimestamp(unix, UTC)
    return at.isoformat() if iso else at.strftime("%H:%M:%S UTC")


def tunnel_hint(gateways: Sequence[GatewayEntry], endpoint: str | None) -> str:
    """What to check when the tunnel does not come up: UDP out to the gateway's ports."""
    g = gateways[0] if gateways else None
    first = (g.port_first or g.port) if g else None
    last = (g.port_last or first) if g else None
    ports = f"{first}-{last}" if last != first else f"{first}"
    return (
        f"check that this host may send UDP to {endpoint or 'the gateway'} (the gateway's UDP port "
        f"range is {ports}) through any egress firewall"
    )
