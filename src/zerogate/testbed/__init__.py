"""Testbed: a topology of network namespaces with real apps, for tests, the demo and benchmarks.

``with Topology() as topo: apps = start_apps(topo)`` builds client, gateway,
connector, attacker and app namespaces (see :mod:`.topology`) and starts nginx,
OpenSSH and PostgreSQL in the app namespace (see :mod:`.apps`). Everything is
removed again when the ``with`` block ends.
"""

from __future__ import annotations

from zerogate.testbed.apps import (
    Apps,
    AppStartError,
    Nginx,
    Postgres,
    Sshd,
    start_apps,
    start_nginx,
    start_postgres,
    start_sshd,
)
from zerogate.testbed.topology import CLIENT_NETWORK, Layout, TestbedError, Topology

__all__ = [
    "CLIENT_NETWORK",
    "AppStartError",
    "Apps",
    "Layout",
    "Nginx",
    "Postgres",
    "Sshd",
    "TestbedError",
    "Topology",
    "start_apps",
    "start_nginx",
    "start_postgres",
    "start_sshd",
]
