"""The firewall tool a ruleset is applied with, run on a target: nftables now.

``RulesetBackend`` is the seam for iptables-restore files later. Paths are paths on
the target (the engine writes the files there first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from zerogate.deploy.firewall.errors import BackendError, FirewallApplyError, RulesetError
from zerogate.deploy.firewall.scope import (
    RulesetScope,
    TableRef,
    nft_scope,
    parse_nft_tables,
    render_nft_restore,
)
from zerogate.deploy.firewall.targets import Target


class RulesetBackend(Protocol):
    """One firewall tool: nftables now, iptables-restore later."""

    name: str

    def scope(self, text: str) -> RulesetScope: ...
    def validate(self, path: str) -> None: ...
    def snapshot(self, scope: RulesetScope, header: str) -> str: ...
    def load(self, path: str) -> None: ...


class NftBackend:
    name = "nftables"

    def __init__(self, target: Target) -> None:
        self.target = target
        self.nft = target.nft

    def _run(self, *args: str) -> str:
        r = self.target.run([self.nft, *args])
        if r.returncode != 0:
            lines = [ln.strip() for ln in r.stderr.splitlines() if ln.strip(" \t^~")]  # drop caret lines
            first = " | ".join(lines[:3])
            raise BackendError(f"nft {' '.join(args)} failed: {first or f'exit {r.returncode}'}")
        return r.stdout

    def scope(self, text: str) -> RulesetScope:
        return nft_scope(text)

    def validate(self, path: str) -> None:
        try:
            self._run("-c", "-f", path)
        except BackendError as exc:
            raise RulesetError(f"{exc}; nothing was changed") from None

    def snapshot(self, scope: RulesetScope, header: str) -> str:
        if scope.whole_ruleset:
            return render_nft_restore(scope, {TableRef("", ""): self._run("list", "ruleset")}, header)
        existing = parse_nft_tables(self._run("list", "tables"))
        listings = {
            ref: self._run("list", "table", ref.family, ref.name) if ref in existing else None
            for ref in scope.tables
        }
        return render_nft_restore(scope, listings, header)

    def load(self, path: str) -> None:
        self._run("-f", path)


BACKENDS: dict[str, Callable[[Target], RulesetBackend]] = {"nftables": NftBackend}


def backend_for(name: str, target: Target) -> RulesetBackend:
    if name not in BACKENDS:
        raise FirewallApplyError(f"unknown firewall backend {name!r} (known: {', '.join(BACKENDS)})")
    return BACKENDS[name](target)
