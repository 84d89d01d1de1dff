"""Load nftables rulesets atomically (``nft -f``) and remove our own table."""

from __future__ import annotations

from zerogate.model import nft
from zerogate.model.dataplane import TableBody
from zerogate.netops.command import CommandError, require, run

TABLE = "zerogate"


def replace_table_script(family: str, name: str, body: str) -> str:
    """A script that swaps table ``family name`` for ``body`` in one transaction
    (see :func:`zerogate.model.nft.replace_table`)."""
    return nft.replace_table(family, name, body)


def update_script(family: str, name: str, old: TableBody | None, new: TableBody) -> str | None:
    """The element deletes and adds that turn ``old`` into ``new`` (one transaction),
    "" when nothing changed, or None when more than elements changed (reload instead)."""
    if old is None or old.skeleton != new.skeleton or old.elements.keys() != new.elements.keys():
        return None
    lines = []
    for set_name in sorted(new.elements):
        before, after = old.elements[set_name], new.elements[set_name]
        for verb, items in (("delete", before - after), ("add", after - before)):
            if items:
                lines.append(nft.element_update(verb, family, name, set_name, sorted(items)) + "\n")
    return "".join(lines)


def check(script: str) -> None:
    """Validate without changing anything (``nft -c``)."""
    run([require("nft", "nftables"), "-c", "-f", "-"], input=script, timeout=300)


def apply(script: str) -> None:
    """Apply atomically: on any error the previous ruleset stays in place."""
    run([require("nft", "nftables"), "-f", "-"], input=script, timeout=300)


def delete_table(family: str, name: str) -> bool:
    """Remove a table if present; True when it was there."""
    try:
        run([require("nft", "nftables"), "delete", "table", family, name])
    except CommandError as exc:
        if "No such file or directory" in exc.stderr:
            return False
        raise
    return True


def list_table(family: str, name: str) -> str | None:
    r = run([require("nft", "nftables"), "list", "table", family, name], check=False)
    return r.stdout if r.returncode == 0 else None
