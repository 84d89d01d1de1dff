"""A disposable network of namespaces on one machine, for end-to-end tests, the demo and benchmarks.

Topology number k (1..250, unique among running processes) looks like this::

    root ns: zg{k}host 198.18.k.254 ──┐
    gw   198.18.k.1 ──────────────────┤
    cl1..clN  198.18.k.10.. ──────────┤ bridge in "inet"   ("the internet", 198.18.k.0/24)
    cn1..cnN  198.18.k.20.. ──────────┤
    atk  198.18.k.66 ─────────────────┘   (route to 10.99.k.0/24 via cn1: it tries to get in)
    cn1..cnN  10.99.k.1.. ────────────┐ bridge in "lan"    (the private site, 10.99.k.0/24)
    app  10.99.k.10 ──────────────────┘   (nginx, sshd, PostgreSQL: see apps.py)

No namespace forwards packets (ip_forward is set to 0 in every host namespace); the gateway
and connector daemons turn forwarding on in their own namespace.

:class:`Layout` is the pure part (names and addresses of topology k) and
:func:`plan_topology` renders the ``ip`` commands that build it; both are
tested as text. :class:`Topology` applies the plan and owns everything it made:

- it runs in slot k (:mod:`zerogate.testbed.slots`): the first free k is
  locked for the topology's lifetime, and left-overs of a crashed earlier
  holder of k (namespaces ``zg{k}-*``, the root veth, its temp dir) are
  removed first;
- ``close()`` stops the processes started through ``popen`` (SIGTERM, then
  SIGKILL), kills whatever else still runs inside its namespaces, deletes the
  namespaces and the root veth and the temp dir, and releases the slot. It never
  raises, may be called again, and also runs at interpreter exit;
- the slot's watchdog process cleans up the same way if this process ends
  without ``close()`` (SIGKILL, ``os._exit``, a crashed xdist worker).

Set ``ZEROGATE_KEEP_TESTBED=1`` to keep the temp dir (logs, configs) after close.

Errors: :class:`TestbedError` (not root, no free slot, used before build);
``ip`` failures surface as :class:`zerogate.netops.netns.NetnsError`; ``run``
with ``check`` raises :class:`zerogate.netops.command.CommandError`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import TracebackType
from typing import Self

from zerogate.netops import netns
from zerogate.netops.command import spawn
from zerogate.testbed import slots

__all__ = [
    "CLIENT_NETWORK",
    "Layout",
    "Plan",
    "TestbedError",
    "Topology",
    "plan_topology",
]

log = logging.getLogger(__name__)

MAX_HOSTS = 9  # clients .10-.18, connectors .20-.28 (WAN) and .1-.9 (LAN)
CLIENT_NETWORK = IPv4Network("100.64.0.0/10")
STOP_GRACE = 5.0  # seconds a tracked process gets between its stop signal and SIGKILL
_ROLE = re.compile(r"[a-z][a-z0-9]*")


class TestbedError(RuntimeError):
    """The testbed cannot be built or used as asked; the message says what to do."""

    __test__ = False  # not a pytest test class, despite the name


# -- names and addresses (pure) ---------------------------------------------


class Layout:
    """Names and addresses of topology number ``index``; no I/O."""

    def __init__(self, index: int, *, clients: int = 2, connectors: int = 2, attacker: bool = True) -> None:
        for what, count in (("clients", clients), ("connectors", connectors)):
            if not 0 <= count <= MAX_HOSTS:
                raise ValueError(f"{what}={count}: a topology has 0 to {MAX_HOSTS} {what}")
        if index != 0 and not 1 <= index <= slots.MAX_INDEX:
            raise ValueError(f"topology index {index} is outside 1..{slots.MAX_INDEX}")
        self.index = index
        self.clients = clients
        self.connectors = connectors
        self.attacker = attacker

    def _k(self) -> int:
        if self.index == 0:
            raise TestbedError(
                "the topology is not built yet: use 'with Topology() as topo:' or call build()"
            )
        return self.index

    @property
    def prefix(self) -> str:
        return f"zg{self._k()}"

    # namespaces

    @property
    def hosts(self) -> list[str]:
        """Short names of the namespaces that play a machine: gw, cl*, cn*, app, atk."""
        names = ["gw"]
        names += [f"cl{i}" for i in range(1, self.clients + 1)]
        names += [f"cn{i}" for i in range(1, self.connectors + 1)]
        names.append("app")
        if self.attacker:
            names.append("atk")
        return names

    @property
    def namespaces(self) -> list[str]:
        """Short names of all namespaces, the two bridge holders first."""
        return ["inet", "lan", *self.hosts]

    def ns(self, name: str) -> str:
        """Full namespace name: ``ns("gw")`` -> ``"zg7-gw"``."""
        if name not in self.namespaces:
            raise ValueError(f"topology has no namespace {name!r}; it has {', '.join(self.namespaces)}")
        return f"{self.prefix}-{name}"

    # interface names (all <= 15 characters and unique per k)

    def wg_interface(self, role: str) -> str:
        """Machine-wide unique WireGuard interface name, e.g. ``zg7gw``, ``zg7cn1``."""
        if not _ROLE.fullmatch(role):
            raise ValueError(
                f"WireGuard role {role!r} must be lowercase letters and digits, starting with a letter"
            )
        return netns.validate_ifname(f"{self.prefix}{role}")

    def wan_interface(self, role: str) -> str:
        """The veth end of ``role`` (gw, clN, cnN, atk) on the internet segment, e.g. ``zg7cn1w``."""
        if role not in self.hosts or role == "app":
            raise ValueError(f"{role!r} has no interface on the internet segment")
        return f"{self.prefix}{role}w"

    def lan_interface(self, role: str) -> str:
        """The veth end of ``role`` (cnN, app) on the LAN segment, e.g. ``zg7cn1l``."""
        if role != "app" and not (role.startswith("cn") and role in self.hosts):
            raise ValueError(f"{role!r} has no interface on the LAN segment")
        return f"{self.prefix}{role}l"

    @property
    def host_interface(self) -> str:
        """The veth end in the root namespace, attached to the internet bridge."""
        return f"{self.prefix}host"

    @property
    def internet_bridge(self) -> str:
        return f"{self.prefix}inet"

    @property
    def lan_bridge(self) -> str:
        return f"{self.prefix}lan"

    # addresses

    @property
    def internet(self) -> IPv4Network:
        return IPv4Network(f"198.18.{self._k()}.0/24")

    @property
    def lan(self) -> IPv4Network:
        return IPv4Network(f"10.99.{self._k()}.0/24")

    def _host(self, net: IPv4Network, n: int) -> IPv4Address:
        return net.network_address + n

    @property
    def host_address(self) -> IPv4Address:
        """The root namespace's address on the internet segment (where the controller listens)."""
        return self._host(self.internet, 254)

    @property
    def gateway_address(self) -> IPv4Address:
        return self._host(self.internet, 1)

    def client_address(self, i: int) -> IPv4Address:
        return self._host(self.internet, 9 + self._check("client", i, self.clients))

    def connector_wan(self, i: int) -> IPv4Address:
        return self._host(self.internet, 19 + self._check("connector", i, self.connectors))

    @property
    def attacker_address(self) -> IPv4Address:
        return self._host(self.internet, 66)

    def connector_lan(self, i: int) -> IPv4Address:
        return self._host(self.lan, self._check("connector", i, self.connectors))

    @property
    def app_address(self) -> IPv4Address:
        return self._host(self.lan, 10)

    @property
    def virtual_ip(self) -> IPv4Address:
        """An address on the LAN for a VRRP pair of connectors (connector group virtual IP)."""
        return self._host(self.lan, 100)

    @staticmethod
    def _check(what: str, i: int, count: int) -> int:
        if not 1 <= i <= count:
            raise ValueError(
                f"{what} {i} does not exist: the topology has {count} {what}(s), numbered from 1"
            )
        return i


# -- the plan: ip commands that build a layout (pure) ------------------------


@dataclass(frozen=True)
class Plan:
    """``ip`` commands building a topology: ``root`` runs first (in the root namespace,
    creating namespaces and veth pairs), then every namespace's batch, all at once."""

    root: list[list[str]]
    namespaces: dict[str, list[list[str]]] = field(default_factory=dict)
    sysctls: dict[str, dict[str, str]] = field(default_factory=dict)


def plan_topology(layout: Layout) -> Plan:
    """Render the commands that build ``layout`` from nothing."""
    ns = layout.ns
    net_bits = f"/{layout.internet.prefixlen}"
    lan_bits = f"/{layout.lan.prefixlen}"
    root: list[list[str]] = [netns.cmd_add_namespace(ns(name)) for name in layout.namespaces]
    per_ns: dict[str, list[list[str]]] = {
        ns(name): [netns.cmd_set_link("lo", True)] for name in layout.namespaces
    }

    def attach(bridge_ns: str, bridge: str, port: str) -> None:
        per_ns[ns(bridge_ns)] += [netns.cmd_set_master(port, bridge), netns.cmd_set_link(port, True)]

    for bridge_ns, bridge in (("inet", layout.internet_bridge), ("lan", layout.lan_bridge)):
        per_ns[ns(bridge_ns)] += [netns.cmd_add_bridge(bridge), netns.cmd_set_link(bridge, True)]

    # The root namespace's leg on the internet segment.
    host_if = layout.host_interface
    root.append(netns.cmd_add_veth(host_if, host_if + "b", peer_ns=ns("inet")))
    root.append(netns.cmd_add_address(host_if, f"{layout.host_address}{net_bits}"))
    root.append(netns.cmd_set_link(host_if, True))
    attach("inet", layout.internet_bridge, host_if + "b")

    def leg(role: str, ifname: str, bridge_ns: str, bridge: str, address: str) -> None:
        root.append(netns.cmd_add_veth(ifname, ifname + "b", ns=ns(role), peer_ns=ns(bridge_ns)))
        per_ns[ns(role)] += [netns.cmd_add_address(ifname, address), netns.cmd_set_link(ifname, True)]
        attach(bridge_ns, bridge, ifname + "b")

    wan: list[tuple[str, IPv4Address]] = [("gw", layout.gateway_address)]
    wan += [(f"cl{i}", layout.client_address(i)) for i in range(1, layout.clients + 1)]
    wan += [(f"cn{i}", layout.connector_wan(i)) for i in range(1, layout.connectors + 1)]
    if layout.attacker:
        wan.append(("atk", layout.attacker_address))
    for role, address in wan:
        leg(role, layout.wan_interface(role), "inet", layout.internet_bridge, f"{address}{net_bits}")
    lan: list[tuple[str, IPv4Address]] = [
        (f"cn{i}", layout.connector_lan(i)) for i in range(1, layout.connectors + 1)
    ]
    lan.append(("app", layout.app_address))
    for role, address in lan:
        leg(role, layout.lan_interface(role), "lan", layout.lan_bridge, f"{address}{lan_bits}")

    if layout.attacker:
        # It sends LAN-bound packets to the connector, hoping the connector forwards them.
        per_ns[ns("atk")].append(netns.cmd_replace_route(layout.lan, layout.connector_wan(1)))

    # New namespaces may inherit ip_forward=1 from the host; nothing here forwards by default.
    sysctls = {ns(name): {"net.ipv4.ip_forward": "0"} for name in layout.hosts}
    return Plan(root=root, namespaces=per_ns, sysctls=sysctls)


# -- the topology -----------------------------------------------------------------


@dataclass
class _Tracked:
    proc: subprocess.Popen[bytes]
    stop_signal: signal.Signals
    what: str


def _temp_parent() -> Path:
    """A directory other users can traverse (PostgreSQL runs as 'postgres' below tmp)."""
    path = Path(tempfile.gettempdir()).resolve()
    for p in (path, *path.parents):
        if not p.stat().st_mode & stat.S_IXOTH:
            return Path("/tmp")  # noqa: S108 - only the parent of a private mkdtemp dir
    return path


class Topology(Layout):
    """A running topology; ``with Topology() as topo: ...`` (see the module docstring)."""

    def __init__(self, *, clients: int = 2, connectors: int = 2, attacker: bool = True) -> None:
        super().__init__(0, clients=clients, connectors=connectors, attacker=attacker)
        self._tmp: Path | None = None
        self._lock_fd: int | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._tracked: list[_Tracked] = []
        self._guard = threading.Lock()
        self._state = "new"  # new -> building -> built -> closed
        self.build_seconds: float | None = None

    @property
    def tmp(self) -> Path:
        """This topology's temp dir (logs, configs); removed at close unless ZEROGATE_KEEP_TESTBED=1."""
        if self._tmp is None:
            raise TestbedError(
                "the topology is not built yet: use 'with Topology() as topo:' or call build()"
            )
        return self._tmp

    # -- lifecycle

    def __enter__(self) -> Self:
        return self.build()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def build(self) -> Self:
        """Take a slot, clear its left-overs, create namespaces, links and addresses."""
        if self._state != "new":
            raise TestbedError(f"this topology is {self._state}; create a new Topology for another run")
        if os.geteuid() != 0:
            raise TestbedError("the testbed creates network namespaces and needs root; run as root")
        began = time.monotonic()
        self._state = "building"
        _live.add(self)
        try:
            slot = slots.claim_slot(lambda k: Layout(k).internet)
            if slot is None:
                raise TestbedError(
                    f"all {slots.MAX_INDEX} testbed slots are in use (locks in {slots.LOCK_DIR}); "
                    "close some topologies first"
                )
            k, self._lock_fd, self._watchdog = slot
            self.index = k
            self._tmp = Path(tempfile.mkdtemp(prefix=f"{slots.TMP_PREFIX}{k}-", dir=_temp_parent()))
            self._tmp.chmod(0o711)  # traversable: the PostgreSQL app runs as 'postgres' inside
            slots.write_record(self._lock_fd, {"pid": str(os.getpid()), "tmp": str(self._tmp)})
            self._apply(plan_topology(self))
        except BaseException:
            self.close()
            raise
        self._state = "built"
        self.build_seconds = time.monotonic() - began
        return self

    def _apply(self, plan: Plan) -> None:
        netns.run_batch(plan.root)
        jobs: list[tuple[list[str], str | None]] = [
            (netns.ip_argv(["-batch", "-"], name), netns.render_batch(commands))
            for name, commands in plan.namespaces.items()
        ]
        for name, settings in plan.sysctls.items():
            words = [f"{key}={value}" for key, value in settings.items()]
            jobs.append((netns.exec_argv(name, ["sysctl", "-q", "-w", *words]), None))
        netns.run_parallel(jobs)

    def close(self) -> None:
        """Stop processes, delete namespaces, the root veth and the temp dir; release the slot.

        Never raises (problems are logged as warnings); calling it again does nothing.
        """
        if self._state == "closed":
            return
        self._state = "closed"
        try:
            self._stop_tracked()
        except Exception as e:
            log.warning("testbed: stopping processes failed: %s", e)
        if self.index:
            try:
                for warning in slots.sweep_slot(
                    self.index, tmp=self._tmp, keep_tmp=slots.keep_tmp_requested()
                ):
                    log.warning("testbed slot %d: %s", self.index, warning)
            except Exception as e:
                log.warning("testbed slot %d: cleanup failed: %s", self.index, e)
            if self._tmp is not None and slots.keep_tmp_requested():
                log.warning("testbed slot %d: kept %s (%s is set)", self.index, self._tmp, slots.KEEP_ENV)
        if self._lock_fd is not None:
            slots.release_slot(self._lock_fd, self._watchdog)
            self._lock_fd, self._watchdog = None, None
        _live.discard(self)

    # -- processes

    def _resolve(self, ns: str) -> str:
        """Accept a short name ("gw") or this topology's full name ("zg7-gw")."""
        if ns.startswith(f"{self.prefix}-") and ns[len(self.prefix) + 1 :] in self.namespaces:
            return ns
        return self.ns(ns)

    def run(
        self,
        ns: str,
        argv: list[str],
        *,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside namespace ``ns`` and capture its text output.

        ``check``: a non-zero exit raises ``CommandError`` (its message includes
        stderr). ``env`` defaults to ours; ``LC_ALL=C`` is always set.
        """
        self._k()
        return netns.run_in(self._resolve(ns), argv, check=check, timeout=timeout, input=input, env=env)

    def popen(
        self,
        ns: str,
        argv: list[str],
        *,
        log: Path,
        env: dict[str, str] | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``ns`` in the background, output appended to ``log``.

        The process is tracked: ``close()`` sends it ``stop_signal``, then SIGKILL
        after a grace period. Its PID is the program's own (``ip netns exec`` execs it).
        """
        full_ns = self._resolve(ns)
        if self._state != "built":
            raise TestbedError(f"cannot start {argv[0]!r}: the topology is {self._state}")
        with open(log, "ab") as out:
            proc = spawn(netns.exec_argv(full_ns, argv), stdout=out, env=env)
        with self._guard:
            self._tracked.append(_Tracked(proc, stop_signal, f"{argv[0]} in {full_ns}"))
        return proc

    def _stop_tracked(self) -> None:
        with self._guard:
            tracked, self._tracked = self._tracked, []
        for t in tracked:
            if t.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    t.proc.send_signal(t.stop_signal)  # our own child, by PID
        deadline = time.monotonic() + STOP_GRACE
        for t in tracked:
            try:
                t.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "testbed: %s (pid %d) ignored %s; killing it", t.what, t.proc.pid, t.stop_signal.name
                )
                t.proc.kill()
                t.proc.wait(timeout=10)

    # -- network changes used by tests

    def app_route_clients(self, via_connector: int = 1, *, via: IPv4Address | None = None) -> None:
        """Route the client pool 100.64.0.0/10 from the app via connector ``via_connector``'s LAN address,
        or via ``via`` (e.g. ``virtual_ip``): the return route a LAN needs when the connector does not masquerade."""
        netns.replace_route(self.ns("app"), CLIENT_NETWORK, via or self.connector_lan(via_connector))

    def app_route_clients_remove(self) -> None:
        netns.delete_route(self.ns("app"), CLIENT_NETWORK, missing_ok=True)

    def set_link(self, ns: str, ifname: str, up: bool) -> None:
        """Bring an interface up or down, e.g. ``set_link("cn1", topo.wan_interface("cn1"), False)``."""
        netns.set_link(self._resolve(ns), ifname, up)


# -- safety net at interpreter exit ----------------------------------------------

_live: set[Topology] = set()


def _close_all() -> None:
    for topo in list(_live):
        topo.close()


atexit.register(_close_all)
