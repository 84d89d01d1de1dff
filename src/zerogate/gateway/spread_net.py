"""Active-active groups on the gateway host: apply a :class:`~zerogate.gateway.spread.SpreadPlan`.

Per active-active connector: its WireGuard interface (same private key as the
main one, its own port), its tunnel address routed there in the main table,
its group's subnets in its own routing table, and ``ip rule fwmark
SLOT/0xff000000 lookup TABLE``; then the small ``inet zerogate_spread`` table
that marks flows. Bringing up goes interfaces, routes, rules, marks; taking
down the other way, so a mark never points at a table that is not there.

Idempotent across restarts: the first apply removes interfaces of the same
pattern (``<main>a<slot>``), rules in our priority range and the table left by
an earlier run that the plan no longer has; everything planned is re-created
or kept. :meth:`SpreadNet.teardown` removes all of it.
"""

from __future__ import annotations

import json
import logging
from typing import Protocol

from zerogate.gateway.spread import (
    ROUTE_TABLE_BASE,
    RULE_PRIORITY_BASE,
    SLOT_MASK,
    TABLE,
    SpreadLink,
    SpreadPlan,
    link_name,
    slot_mark,
)
from zerogate.netops import nftables
from zerogate.netops.command import CommandError, run
from zerogate.netops.dataplane import Dataplane
from zerogate.netops.wireguard import PeerStatus

log = logging.getLogger(__name__)


class SpreadBackend(Protocol):
    """What the gateway daemon needs for active-active groups (the real one: :class:`SpreadNet`)."""

    def apply(self, plan: SpreadPlan) -> None: ...

    def status(self) -> list[PeerStatus]: ...

    def teardown(self) -> None: ...


def _ip_json(*args: str) -> list[dict[str, object]]:
    data = json.loads(run(["ip", "-j", *args]).stdout or "[]")
    return data if isinstance(data, list) else []


class SpreadNet:
    """The real :class:`SpreadBackend`: interfaces, routing tables, rules and marks."""

    def __init__(self, main: str, private_key: str) -> None:
        self.main = main
        self.private_key = private_key
        self._links: dict[str, tuple[Dataplane, SpreadLink]] = {}
        self._nft = ""
        self._swept = False
        self._own = {link_name(main, slot) for slot in range(1, 256)}

    def apply(self, plan: SpreadPlan) -> None:
        if not self._swept:
            self._sweep(set(plan.interfaces))
            self._swept = True
        for link in plan.links:
            dp, _ = self._links.get(link.interface) or (Dataplane(link.interface, self.private_key), link)
            dp.apply(
                listen_port=link.listen_port,
                peers=(link.peer,),
                addresses=link.addresses,
                routes=link.host_routes,
                nft_body=None,
            )
            self._links[link.interface] = (dp, link)
            self._table_routes(link)
        self._rules({link.slot: link.route_table for link in plan.links})
        if plan.nft_text != self._nft:
            if plan.nft_text:
                nftables.apply(nftables.replace_table_script("inet", TABLE, plan.nft_text))
            else:
                nftables.delete_table("inet", TABLE)
            self._nft = plan.nft_text
        for name in sorted(set(self._links) - set(plan.interfaces)):
            dp, link = self._links.pop(name)
            dp.remove_interface()  # its routes go with it
            log.info("removed active-active interface %s (connector %s)", name, link.connector)

    def status(self) -> list[PeerStatus]:
        out: list[PeerStatus] = []
        for dp, _ in self._links.values():
            try:
                out += dp.status()[1]
            except CommandError as exc:
                log.debug("no status of %s: %s", dp.interface, exc)
        return out

    def teardown(self) -> None:
        """Remove the marks, the rules, the tables' routes and every interface of ours."""
        try:
            nftables.delete_table("inet", TABLE)
        finally:
            self._nft = ""
            self._rules({})
            for dp, _ in self._links.values():
                dp.remove_interface()
            self._links.clear()
            self._sweep(set())

    # -- pieces

    def _sweep(self, keep: set[str]) -> None:
        """Interfaces named like ours but not planned (left by an earlier run)."""
        for link in _ip_json("link", "show", "type", "wireguard"):
            name = str(link.get("ifname", ""))
            if name in self._own and name not in keep and name != self.main:
                run(["ip", "link", "delete", "dev", name], check=False)
                log.info("removed left-over active-active interface %s", name)

    @staticmethod
    def _table_routes(link: SpreadLink) -> None:
        table = str(link.route_table)
        listed = run(["ip", "-j", "-4", "route", "show", "table", table], check=False)  # none yet: fails
        routes = json.loads(listed.stdout or "[]") if listed.returncode == 0 else []
        have = {str(r.get("dst")) for r in routes if isinstance(r, dict)}
        for stale in sorted(have - set(link.subnets)):
            run(["ip", "route", "del", stale, "table", table], check=False)
        for subnet in link.subnets:
            run(["ip", "route", "replace", subnet, "dev", link.interface, "table", table])

    @staticmethod
    def _rules(want: dict[int, int]) -> None:
        """``ip rule`` per slot (priority RULE_PRIORITY_BASE + slot): exactly ``want`` (slot -> table)."""
        have: dict[int, object] = {}
        for rule in _ip_json("rule", "show"):
            prio = rule.get("priority")
            if isinstance(prio, int) and RULE_PRIORITY_BASE < prio <= RULE_PRIORITY_BASE + 255:
                have[prio - RULE_PRIORITY_BASE] = rule.get("table")
        for slot, table in have.items():
            if want.get(slot) is None or str(table) != str(want[slot]):
                run(["ip", "rule", "del", "priority", str(RULE_PRIORITY_BASE + slot)], check=False)
                if slot not in want:
                    run(["ip", "route", "flush", "table", str(ROUTE_TABLE_BASE + slot)], check=False)
        for slot, table in sorted(want.items()):
            if str(have.get(slot)) == str(table):
                continue
            mark = f"{slot_mark(slot):#x}/{SLOT_MASK:#x}"
            prio = str(RULE_PRIORITY_BASE + slot)
            run(["ip", "rule", "add", "priority", prio, "fwmark", mark, "lookup", str(table)])
