"""Load nftables rulesets atomically (``nft -f``) and remove our own table."""

from __future__ import annotations

from zerogate.netops.command import CommandError, require, run

TABLE = "zerogate"


def replace_table_script(family: str, name: str, body: str) -> str:
    """A script that swaps table ``family name`` for ``body`` in one transaction.

    Declaring the table first makes the delete valid when it does not exist yet;
    nft applies the whole file or nothing.
    """
    return f"table {family} {name} {{}}\ndelete table {family} {name}\ntable {family} {name} {{\n{body}}}\n"


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
