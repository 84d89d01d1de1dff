"""``zerogate firewall``: render host/cloud firewall rules and apply them safely.

The sub-commands live in :mod:`zerogate.cli.firewall_render` and
:mod:`zerogate.cli.firewall_apply`; this module builds :data:`app` and registers
them (they do not import it, so there is no import cycle).
"""

from __future__ import annotations

import typer

from zerogate.cli import firewall_apply, firewall_render

app = typer.Typer(
    help="Render firewall rules for a role (nftables, iptables, firewalld, cloud) and apply them "
    "with commit-confirm rollback, here or on a host reached over SSH.",
    no_args_is_help=True,
)
app.command(
    "apply",
    help=firewall_apply.APPLY_HELP,
    short_help="Apply a ruleset; it rolls back unless confirmed or if SSH breaks.",
)(firewall_apply.apply_cmd)
app.command("confirm")(firewall_apply.confirm_cmd)
app.command("rollback")(firewall_apply.rollback_cmd)
app.command("status")(firewall_apply.status_cmd)
app.command("render", epilog=firewall_render.EPILOG)(firewall_render.render_command)
