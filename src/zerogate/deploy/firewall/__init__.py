"""Host and cloud firewall rules for a zerogate role, and commit-confirmed apply to a target.

Rendering (pure): :func:`parse_spec` validates the options once, :func:`role_ruleset`
says what the role needs (:mod:`zerogate.model.firewall`), and :func:`render` turns it
into one output format; each format has its own module (``nftables``, ``iptables``,
``firewalld``, ``aws``, ``azure``, ``terraform``).

Applying: :mod:`.commit` applies an nftables file commit-confirmed to a
:class:`~.targets.Target` (this host, or another over SSH with a pinned host key),
with the rollback armed on the target before the change.
"""

from __future__ import annotations

from zerogate.deploy.firewall.aws import render_aws
from zerogate.deploy.firewall.azure import render_azure
from zerogate.deploy.firewall.commit import (
    MAX_CONFIRM_WINDOW,
    ApplyResult,
    apply_ruleset,
    confirm,
    rollback,
    status,
)
from zerogate.deploy.firewall.errors import CheckFailedRolledBack, FirewallApplyError, RollbackLeftToTarget
from zerogate.deploy.firewall.firewalld import render_firewalld
from zerogate.deploy.firewall.iptables import render_iptables
from zerogate.deploy.firewall.nftables import render_nftables
from zerogate.deploy.firewall.rendering import Rendering
from zerogate.deploy.firewall.roles import role_ruleset
from zerogate.deploy.firewall.spec import (
    CLOUD_FORMATS,
    DEFAULT_PORT_RANGE,
    NFT_TABLE,
    RFC1918,
    FirewallSpecError,
    Format,
    check_combination,
    parse_spec,
)
from zerogate.deploy.firewall.state import DEFAULT_STATE_DIR, StateStore
from zerogate.deploy.firewall.targets import Target, open_target
from zerogate.deploy.firewall.terraform import render_terraform
from zerogate.model.firewall import FirewallSpec, Role, Ruleset

__all__ = [
    "CLOUD_FORMATS",
    "DEFAULT_PORT_RANGE",
    "DEFAULT_STATE_DIR",
    "MAX_CONFIRM_WINDOW",
    "NFT_TABLE",
    "RFC1918",
    "ApplyResult",
    "CheckFailedRolledBack",
    "FirewallApplyError",
    "FirewallSpec",
    "FirewallSpecError",
    "Format",
    "Rendering",
    "Role",
    "RollbackLeftToTarget",
    "Ruleset",
    "StateStore",
    "Target",
    "apply_ruleset",
    "confirm",
    "open_target",
    "parse_spec",
    "render",
    "role_ruleset",
    "rollback",
    "status",
]

_RENDERERS = {
    Format.NFTABLES: render_nftables,
    Format.IPTABLES: render_iptables,
    Format.FIREWALLD: render_firewalld,
    Format.AWS_SG: render_aws,
    Format.AZURE_NSG: render_azure,
    Format.TERRAFORM: render_terraform,
}


def render(spec: FirewallSpec, fmt: Format) -> Rendering:
    """Render ``spec``'s role for ``fmt``; raises :class:`FirewallSpecError` for a senseless pair."""
    check_combination(spec.role, fmt)
    return _RENDERERS[fmt](role_ruleset(spec))
