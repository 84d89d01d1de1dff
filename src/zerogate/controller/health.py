"""Is a component online, and what needs the operator's attention: pure functions.

A gateway or connector reports every ``report_interval`` seconds (5 by default;
it says its interval in each report). It is **offline** once its last report is
older than :data:`MISSED_REPORTS` intervals, so a component that stops turns
offline within three of its own intervals, whatever they are set to.

Clients and segment servers are judged by ``last_seen_at``: a client's
long-poll refreshes it (written at most every 30 s, see
:data:`zerogate.controller.services.devices.LAST_SEEN_EVERY`), a segment
server's report every 30 s by default; both go offline after three of those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from zerogate.controller.reports import StoredReport

MISSED_REPORTS = 3
DAEMON_REPORT_INTERVAL = 5.0  # a gateway's or connector's default (agent.reporting.REPORT_INTERVAL)
SEEN_INTERVAL = 30.0  # clients (last_seen_at granularity) and segment servers (report interval)


@dataclass(frozen=True)
class Health:
    online: bool
    age_seconds: float | None  # since the last report or sign of life; None: never
    attention: tuple[str, ...] = field(default=())


def component_health(
    role: str, last_seen_at: datetime | None, report: StoredReport | None, problem: str | None, now: datetime
) -> Health:
    """Online/offline and the reasons to look, for one active device."""
    attention: list[str] = []
    if role in ("gateway", "connector"):
        interval = (report.details.report_interval if report else None) or DAEMON_REPORT_INTERVAL
        last = report.at if report else None
        if problem:
            attention.append(problem)
    else:
        interval, last = SEEN_INTERVAL, last_seen_at
    if last is None:
        return Health(False, None, (*attention, "has never reported since it enrolled"))
    age = max(0.0, (now - last).total_seconds())
    online = age <= MISSED_REPORTS * interval
    if not online:
        attention.append(f"offline: nothing heard for {_age(age)} (expected every {interval:g} s)")
    elif report is not None:
        attention += _report_attention(role, report)
    return Health(online, age, tuple(attention))


def _report_attention(role: str, report: StoredReport) -> list[str]:
    d = report.details
    out: list[str] = []
    if role == "connector" and d.tunnel_up is False:
        out.append("tunnel down" + (f": {d.tunnel_hint}" if d.tunnel_hint else ""))
    if role == "gateway":
        if d.controller_connected is False:
            out.append("not connected to the controller (serving its last snapshot)")
        down = sorted(p.name or p.public_key for p in report.peers if p.role == "connector" and p.up is False)
        if down:
            out.append("connectors not answering probes: " + ", ".join(down))
    return out


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
