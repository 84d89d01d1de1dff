"""``zerogate firewall``: render host/cloud firewall rules and apply them safely.

The sub-commands live in their own modules (``firewall_render``,
``firewall_apply``), which register themselves on :data:`app`; this module
imports them at the bottom so that ``zerogate firewall --help`` lists all.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Render firewall rules for a role (nftables, iptables, firewalld, cloud) and apply them "
    "with commit-confirm rollback.",
    no_args_is_help=True,
)
from zerogate.cli import firewall_apply  # noqa: E402,F401,I001
from zerogate.cli import firewall_render  # noqa: E402,F401
