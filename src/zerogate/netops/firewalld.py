"""Make firewalld let zerogate's traffic through, and keep it that way.

Gateways and connectors filter in their own nftables table (``inet zerogate``).
On a host that also runs firewalld (nftables backend), firewalld's table
``inet firewalld`` hooks the same input and forward paths, and netfilter keeps a
packet only if *every* base chain on a hook accepts it: an accept in our table
cannot overrule a reject in firewalld's. So firewalld itself has to let the
traffic pass. We ask it to over its D-Bus API (never by touching its table),
with two objects named after us, zone ``zerogate`` and policy ``zerogate-wg``
(what they hold and why: :mod:`zerogate.netops.firewalld_plan`, which computes
their settings without I/O).

Both objects go into the permanent configuration (so reloads and reboots keep
them) and into the runtime. firewalld can create zones and policies only in the
permanent configuration; when one is missing at runtime :meth:`ensure` asks
firewalld to reload once. That is the one intrusive step (a reload drops other
programs' runtime-only changes until they re-apply them on ``Reloaded``, as
libvirt, podman and we do); it happens on first setup or after someone deleted
our objects, never when everything is in place. Several zerogate roles on one
host share the objects: :meth:`ensure` only adds its own interface and ports,
:meth:`remove` only takes away its own and deletes an object once it is empty.

:meth:`run_watch` follows firewalld's ``Reloaded`` signal and its bus name
changing owner (a restart) and runs :meth:`ensure` again, which repairs what a
reload or restart from an edited permanent configuration lost (configuration
management rewriting ``/etc/firewalld`` is the usual culprit). firewalld with
the nftables backend only ever deletes and recreates its own table, so our
table survives reloads and restarts (tests check this); the ``on_reapplied``
callback is still there so a daemon can re-assert its table after the event.

One module, a little over the house's 500 lines: the D-Bus wrapper, ensure,
remove and the watch share the bus calls and the object names, and split apart
they would be harder to follow; the pure settings computations live apart.

Errors::

    FirewalldError(Exception)
    ├── FirewalldUnavailable   no system bus, or firewalld is not on it
    └── FirewalldCallFailed    firewalld refused or failed a call
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from jeepney import (  # type: ignore[import-untyped]
    DBusAddress,
    HeaderFields,
    MatchRule,
    Message,
    MessageFlag,
    MessageType,
    new_method_call,
)
from jeepney.bus_messages import message_bus  # type: ignore[import-untyped]
from jeepney.io.blocking import DBusConnection, open_dbus_connection  # type: ignore[import-untyped]

from zerogate.netops.firewalld_plan import (
    POLICY,
    ZONE,
    Settings,
    close_port,
    plan_policy,
    plan_zone,
    plan_zone_removal,
    port_spec,
    reload_needed_for,
    setting,
)

__all__ = [
    "FirewalldCallFailed",
    "FirewalldError",
    "FirewalldIntegration",
    "FirewalldUnavailable",
    "classify_signal",
    "system_bus_address",
]

log = logging.getLogger(__name__)

BUS_NAME = "org.fedoraproject.FirewallD1"
_PATH = "/org/fedoraproject/FirewallD1"
_CONFIG_PATH = "/org/fedoraproject/FirewallD1/config"
_IF = "org.fedoraproject.FirewallD1"
_IF_ZONE = "org.fedoraproject.FirewallD1.zone"
_IF_POLICY = "org.fedoraproject.FirewallD1.policy"
_IF_CONFIG = "org.fedoraproject.FirewallD1.config"
_IF_CONFIG_ZONE = "org.fedoraproject.FirewallD1.config.zone"
_IF_CONFIG_POLICY = "org.fedoraproject.FirewallD1.config.policy"
_DEFAULT_SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"
_UNKNOWN_NAME_ERRORS = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
)
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # fullmatch only: match + '$' accepts "wg0\n"

CALL_TIMEOUT = 30.0
RELOAD_TIMEOUT = 90.0  # a reload rebuilds firewalld's whole table


class FirewalldError(Exception):
    """firewalld could not be configured; the message says what failed."""


class FirewalldUnavailable(FirewalldError):
    """There is no system bus, or firewalld is not running on it."""


class FirewalldCallFailed(FirewalldError):
    """firewalld answered a call with an error."""

    def __init__(self, method: str, error_name: str, detail: str) -> None:
        self.method = method
        self.error_name = error_name
        self.detail = detail
        super().__init__(f"firewalld {method} failed: {detail or error_name}")


# -- pure: where the bus is, what a signal means ---------------------------------


def system_bus_address() -> str:
    """``DBUS_SYSTEM_BUS_ADDRESS`` if set, else the standard socket."""
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or _DEFAULT_SYSTEM_BUS


def classify_signal(interface: str | None, member: str | None, body: Sequence[Any]) -> str | None:
    """``"reloaded"``, ``"started"``, ``"stopped"`` or None for any other message."""
    if interface == _IF and member == "Reloaded":
        return "reloaded"
    if member == "NameOwnerChanged" and len(body) == 3 and body[0] == BUS_NAME:
        return "started" if body[2] else "stopped"
    return None


# -- D-Bus adapter ---------------------------------------------------------------


class _Bus:
    """One connection to the bus, with calls that raise our errors."""

    def __init__(self, address: str) -> None:
        try:
            self.conn: DBusConnection = open_dbus_connection(bus=address, auth_timeout=5.0)
        except (OSError, TimeoutError, RuntimeError, ValueError) as exc:
            raise FirewalldUnavailable(
                f"cannot connect to the system bus at {address}: {exc}; is dbus running?"
            ) from None

    def close(self) -> None:
        self.conn.close()

    def call(
        self,
        path: str,
        interface: str,
        method: str,
        signature: str | None = None,
        body: tuple[Any, ...] = (),
        *,
        destination: str = BUS_NAME,
        timeout: float = CALL_TIMEOUT,
    ) -> tuple[Any, ...]:
        msg = new_method_call(
            DBusAddress(path, bus_name=destination, interface=interface), method, signature, body
        )
        # Never let a call start firewalld through bus activation: that is the admin's decision.
        msg.header.flags |= MessageFlag.no_auto_start
        try:
            reply: Message = self.conn.send_and_get_reply(msg, timeout=timeout)
        except TimeoutError:
            raise FirewalldCallFailed(method, "timeout", f"no answer within {timeout:.0f} s") from None
        except OSError as exc:
            raise FirewalldUnavailable(f"lost the system bus during {method}: {exc}") from None
        if reply.header.message_type == MessageType.error:
            name = str(reply.header.fields.get(HeaderFields.error_name, ""))
            detail = str(reply.body[0]) if reply.body else ""
            if name in _UNKNOWN_NAME_ERRORS:
                raise FirewalldUnavailable("firewalld is not running (not on the system bus)")
            raise FirewalldCallFailed(method, name, detail)
        return tuple(reply.body)

    def has_firewalld(self) -> bool:
        (owned,) = self.call(
            "/org/freedesktop/DBus", "org.freedesktop.DBus", "NameHasOwner", "s", (BUS_NAME,),
            destination="org.freedesktop.DBus",
        )  # fmt: skip
        return bool(owned)

    # runtime
    def main(
        self, method: str, signature: str | None = None, *args: Any, timeout: float = CALL_TIMEOUT
    ) -> Any:
        return _single(self.call(_PATH, _IF, method, signature, args, timeout=timeout))

    def zone(self, method: str, signature: str | None = None, *args: Any) -> Any:
        return _single(self.call(_PATH, _IF_ZONE, method, signature, args))

    def policy(self, method: str, signature: str | None = None, *args: Any) -> Any:
        return _single(self.call(_PATH, _IF_POLICY, method, signature, args))

    # permanent
    def config(self, method: str, signature: str | None = None, *args: Any) -> Any:
        return _single(self.call(_CONFIG_PATH, _IF_CONFIG, method, signature, args))

    def config_object(
        self, path: str, interface: str, method: str, signature: str | None = None, *args: Any
    ) -> Any:
        return _single(self.call(path, interface, method, signature, args))


def _single(body: tuple[Any, ...]) -> Any:
    return body[0] if len(body) == 1 else body if body else None


# -- the integration -------------------------------------------------------------


class FirewalldIntegration:
    """Keep firewalld open for one tunnel interface and (optionally) a UDP port range.

    ``bus_address`` None means the system bus (``DBUS_SYSTEM_BUS_ADDRESS`` or
    ``/run/dbus/system_bus_socket``). Every method opens its own connection, so
    one instance can be used from several threads.
    """

    def __init__(
        self, interface: str, udp_ports: tuple[int, int] | None, bus_address: str | None = None
    ) -> None:
        if not _IFNAME.fullmatch(interface):
            raise ValueError(
                f"interface name {interface!r} is not valid: use 1-15 letters, digits, '-', '_' or '.'"
            )
        if udp_ports is not None:
            low, high = udp_ports
            if not (1 <= low <= high <= 65535):
                raise ValueError(f"UDP ports {low}-{high}: need 1 <= first <= last <= 65535")
        self.interface = interface
        self.udp_ports = udp_ports
        self.bus_address = bus_address or system_bus_address()
        self.watching = threading.Event()  # set while run_watch() is subscribed to firewalld's signals

    def _open(self) -> _Bus:
        return _Bus(self.bus_address)

    def available(self) -> bool:
        """True when firewalld is running on the bus."""
        try:
            bus = self._open()
        except FirewalldUnavailable:
            return False
        try:
            return bus.has_firewalld()
        except FirewalldError:
            return False
        finally:
            bus.close()

    def ensure(self) -> list[str]:
        """Make firewalld accept our traffic, permanently and now; return what was changed."""
        bus = self._open()
        try:
            if not bus.has_firewalld():
                raise FirewalldUnavailable("firewalld is not running (not on the system bus)")
            changes = self._ensure_permanent(bus)
            stale = self._runtime_needs_reload(bus)
            if stale:
                bus.main("reload", timeout=RELOAD_TIMEOUT)
                changes.append(f"reloaded firewalld to load {stale} from the permanent configuration")
                still = self._runtime_needs_reload(bus)
                if still:
                    raise FirewalldError(f"after a reload firewalld still lacks {still}; see its log")
            changes += self._ensure_runtime(bus)
        finally:
            bus.close()
        for change in changes:
            log.info("firewalld: %s", change, extra={"component": "firewalld"})
        return changes

    # -- permanent -----------------------------------------------------------

    def _ensure_permanent(self, bus: _Bus) -> list[str]:
        changes: list[str] = []
        owner = str(bus.config("getZoneOfInterface", "s", self.interface)).split(" ")[0]
        if owner and owner != ZONE:
            # An interface may be in one permanent zone only: take ours back.
            path = bus.config("getZoneByName", "s", owner)
            bus.config_object(path, _IF_CONFIG_ZONE, "removeInterface", "s", self.interface)
            changes.append(f"permanent: moved interface {self.interface} out of zone {owner}")
        changes += self._ensure_permanent_object(
            bus, ZONE, "zone", lambda current: plan_zone(current, self.interface)
        )
        if self.udp_ports is not None:
            ports = self.udp_ports
            changes += self._ensure_permanent_object(
                bus, POLICY, "policy", lambda current: plan_policy(current, ports)
            )
        return changes

    def _ensure_permanent_object(
        self, bus: _Bus, name: str, kind: str, plan: Callable[[Settings | None], Settings | None]
    ) -> list[str]:
        names = "getZoneNames" if kind == "zone" else "getPolicyNames"
        if name not in bus.config(names):
            settings = plan(None)
            assert settings is not None
            bus.config("addZone2" if kind == "zone" else "addPolicy", "sa{sv}", name, settings)
            return [f"permanent: created {kind} {name}"]
        path = bus.config("getZoneByName" if kind == "zone" else "getPolicyByName", "s", name)
        iface, getter, setter = (
            (_IF_CONFIG_ZONE, "getSettings2", "update2")
            if kind == "zone"
            else (_IF_CONFIG_POLICY, "getSettings", "update")
        )
        wanted = plan(dict(bus.config_object(path, iface, getter)))
        if wanted is None:
            return []
        bus.config_object(path, iface, setter, "a{sv}", wanted)
        return [f"permanent: updated {kind} {name}"]

    # -- runtime -------------------------------------------------------------

    def _runtime_needs_reload(self, bus: _Bus) -> str:
        """What the runtime lacks that only a reload can bring (empty: nothing)."""
        zone = dict(bus.zone("getZoneSettings2", "s", ZONE)) if ZONE in bus.zone("getZones") else None
        if self.udp_ports is None:
            return reload_needed_for(zone)
        policies = bus.policy("getPolicies")
        policy = dict(bus.policy("getPolicySettings", "s", POLICY)) if POLICY in policies else None
        return reload_needed_for(zone, policy, policy_wanted=True)

    def _ensure_runtime(self, bus: _Bus) -> list[str]:
        changes: list[str] = []
        owner = str(bus.zone("getZoneOfInterface", "s", self.interface))
        if owner != ZONE:
            if owner:
                bus.zone("changeZoneOfInterface", "ss", ZONE, self.interface)
                changes.append(f"runtime: moved interface {self.interface} from zone {owner} to {ZONE}")
            else:
                bus.zone("addInterface", "ss", ZONE, self.interface)
                changes.append(f"runtime: added interface {self.interface} to zone {ZONE}")
        zone = dict(bus.zone("getZoneSettings2", "s", ZONE))
        if not setting(zone, "forward", False):
            bus.zone("setZoneSettings2", "sa{sv}", ZONE, {"forward": ("b", True)})
            changes.append(f"runtime: enabled forwarding in zone {ZONE}")
        if self.udp_ports is not None:
            current = dict(bus.policy("getPolicySettings", "s", POLICY))
            wanted = plan_policy(current, self.udp_ports)
            if wanted is not None:
                # Runtime policy changes accept only list settings; target and priority need a reload.
                delta = {k: wanted[k] for k in ("ports", "ingress_zones", "egress_zones")}
                bus.policy("setPolicySettings", "sa{sv}", POLICY, delta)
                changes.append(f"runtime: opened UDP {port_spec(self.udp_ports)[0]} in policy {POLICY}")
        return changes

    # -- removal -------------------------------------------------------------

    def remove(self) -> list[str]:
        """Take our interface and ports away again (permanent and runtime); return what changed.

        A zone or policy left empty is deleted from the permanent configuration;
        its empty runtime copy, which opens nothing, goes at the next reload.
        """
        bus = self._open()
        changes: list[str] = []
        try:
            if not bus.has_firewalld():
                raise FirewalldUnavailable("firewalld is not running (not on the system bus)")
            if ZONE in bus.config("getZoneNames"):
                path = bus.config("getZoneByName", "s", ZONE)
                settings = dict(bus.config_object(path, _IF_CONFIG_ZONE, "getSettings2"))
                removal = plan_zone_removal(settings, self.interface)
                if removal == "delete":
                    bus.config_object(path, _IF_CONFIG_ZONE, "remove")
                    changes.append(f"permanent: deleted zone {ZONE}")
                elif removal == "remove-interface":
                    bus.config_object(path, _IF_CONFIG_ZONE, "removeInterface", "s", self.interface)
                    changes.append(f"permanent: removed interface {self.interface} from zone {ZONE}")
            if bus.zone("getZoneOfInterface", "s", self.interface) == ZONE:
                bus.zone("removeInterface", "ss", ZONE, self.interface)
                changes.append(f"runtime: removed interface {self.interface} from zone {ZONE}")
            if self.udp_ports is not None:
                changes += self._remove_ports(bus, port_spec(self.udp_ports))
        finally:
            bus.close()
        return changes

    def _remove_ports(self, bus: _Bus, spec: tuple[str, str]) -> list[str]:
        changes: list[str] = []
        if POLICY in bus.config("getPolicyNames"):
            path = bus.config("getPolicyByName", "s", POLICY)
            settings = dict(bus.config_object(path, _IF_CONFIG_POLICY, "getSettings"))
            left = close_port(settings, spec)
            if left:
                settings["ports"] = ("a(ss)", left)
                bus.config_object(path, _IF_CONFIG_POLICY, "update", "a{sv}", settings)
                changes.append(f"permanent: closed UDP {spec[0]} in policy {POLICY}")
            elif left is not None:
                bus.config_object(path, _IF_CONFIG_POLICY, "remove")
                changes.append(f"permanent: deleted policy {POLICY}")
        if POLICY in bus.policy("getPolicies"):
            left = close_port(dict(bus.policy("getPolicySettings", "s", POLICY)), spec)
            if left is not None:
                bus.policy("setPolicySettings", "sa{sv}", POLICY, {"ports": ("a(ss)", left)})
                changes.append(f"runtime: closed UDP {spec[0]} in policy {POLICY}")
        return changes

    # -- following reloads and restarts --------------------------------------

    def run_watch(
        self,
        stop: threading.Event,
        on_reapplied: Callable[[], None] | None = None,
        *,
        poll_seconds: float = 0.5,
    ) -> None:
        """Until ``stop`` is set: ensure() now, and again after every reload or restart of firewalld.

        ``on_reapplied`` runs after each successful ensure() made here. Errors
        are logged and retried with backoff (1 s doubling to 30 s); a lost bus
        connection is re-opened. Safe to run in a thread.
        """
        while not stop.is_set():
            try:
                bus = self._open()
            except FirewalldUnavailable as exc:
                log.warning("firewalld watch: %s; retrying in 5 s", exc)
                stop.wait(5.0)
                continue
            try:
                self._watch(bus, stop, on_reapplied, poll_seconds)
            finally:
                self.watching.clear()
                bus.close()

    def _subscribe(self, bus: _Bus) -> None:
        reloaded = MatchRule(type="signal", interface=_IF, member="Reloaded", path=_PATH)
        owner = MatchRule(
            type="signal",
            sender="org.freedesktop.DBus",
            interface="org.freedesktop.DBus",
            member="NameOwnerChanged",
            path="/org/freedesktop/DBus",
        )
        owner.add_arg_condition(0, BUS_NAME)
        for rule in (reloaded, owner):
            msg = message_bus.AddMatch(rule)
            reply = bus.conn.send_and_get_reply(msg, timeout=CALL_TIMEOUT)
            if reply.header.message_type == MessageType.error:
                raise FirewalldCallFailed(
                    "AddMatch", str(reply.header.fields.get(HeaderFields.error_name)), ""
                )

    def _watch(
        self, bus: _Bus, stop: threading.Event, on_reapplied: Callable[[], None] | None, poll_seconds: float
    ) -> None:
        try:
            self._subscribe(bus)
        except FirewalldError as exc:
            log.warning("firewalld watch: cannot subscribe: %s; retrying in 5 s", exc)
            stop.wait(5.0)
            return
        self.watching.set()
        # Checked after subscribing (and on another connection, whose replies cannot swallow a
        # signal), so a start or reload in between is never missed.
        pending = self.available()
        retry_at = time.monotonic()
        delay = 1.0
        while not stop.is_set():
            if pending and time.monotonic() >= retry_at:
                try:
                    self.ensure()
                except FirewalldUnavailable as exc:
                    # Stopped again, or the bus is gone: the next 'started' signal brings us back.
                    log.warning("firewalld watch: %s", exc)
                    pending = False
                except FirewalldError as exc:
                    log.error("firewalld watch: re-apply failed: %s; retrying in %.0f s", exc, delay)
                    retry_at, delay = time.monotonic() + delay, min(delay * 2, 30.0)
                else:
                    pending, delay = False, 1.0
                    if on_reapplied is not None:
                        try:
                            on_reapplied()
                        except Exception:
                            log.exception("firewalld watch: the on_reapplied callback failed")
                continue
            timeout = (
                poll_seconds if not pending else max(0.0, min(poll_seconds, retry_at - time.monotonic()))
            )
            try:
                msg = bus.conn.receive(timeout=timeout)
            except TimeoutError:
                continue
            except OSError as exc:
                log.warning("firewalld watch: lost the system bus (%s); reconnecting", exc)
                stop.wait(1.0)
                return
            fields = msg.header.fields
            kind = classify_signal(
                fields.get(HeaderFields.interface), fields.get(HeaderFields.member), msg.body
            )
            if kind == "stopped":
                log.warning("firewalld stopped; will re-apply when it is back")
            elif kind is not None:
                log.info("firewalld %s: re-applying", kind)
                # Let a burst of signals (restart, then reload) settle into one ensure().
                pending, retry_at = True, time.monotonic() + 0.2
