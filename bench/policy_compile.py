"""Benchmark: policy compiler (per-policy grants) against naive per-device evaluation.

Run: .venv/bin/python bench/policy_compile.py [--users N] [--apps N] [--groups N]
     [--policies N] [--seed N]

Inputs are random but seeded, so every run compiles the same policy. The
baseline is evaluated in the same run: for every device, every policy and
every application destination is checked directly (what a compiler that
expands every device would do). The table shows the size of what a gateway
renders (grants: one source set and a few rules per policy) next to the size
of the fully expanded per-device form. When the full baseline would take longer than
--naive-budget seconds it is measured on a prefix of the devices and
extrapolated linearly; the table says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import resource
import statistics
import sys
import time
from collections import defaultdict
from ipaddress import IPv4Address, IPv4Network

from zerogate.model.policy import (
    AppSpec,
    ClientDevice,
    Destination,
    PolicyInputs,
    PolicySpec,
    PortRange,
    Protocol,
    TimeWindow,
    UserSpec,
)
from zerogate.policy.compiler import compile_policy, merge_port_ranges

NOW = dt.datetime(2024, 1, 3, 10, tzinfo=dt.UTC)  # a Wednesday morning
OFFICE_HOURS = TimeWindow(frozenset(range(5)), dt.time(8), dt.time(18))
PROTOCOLS: tuple[Protocol, ...] = ("tcp", "tcp", "tcp", "udp", "icmp", "any")
COMMON_PORTS = (22, 53, 80, 443, 1433, 3306, 3389, 5432, 6379, 8080, 8443, 9000)


def make_inputs(users: int, apps: int, groups: int, policies: int, seed: int) -> PolicyInputs:
    rng = random.Random(seed)
    app_specs = []
    for app_id in range(1, apps + 1):
        destinations = []
        for _ in range(rng.randint(1, 3)):
            prefixlen = rng.choice((32, 32, 32, 28, 24))
            net = IPv4Network((rng.randrange(10 << 24, 11 << 24), prefixlen), strict=False)
            protocol = rng.choice(PROTOCOLS)
            ports: tuple[PortRange, ...] = ()
            if protocol in ("tcp", "udp") and rng.random() < 0.9:
                ports = tuple(
                    PortRange(p, p + rng.choice((0, 0, 0, 10)))
                    for p in sorted(rng.sample(COMMON_PORTS, rng.randint(1, 3)))
                )
            destinations.append(Destination(net, protocol, ports))
        app_specs.append(AppSpec(app_id, f"app-{app_id}", rng.randint(1, 20), tuple(destinations)))
    user_specs = tuple(
        UserSpec(
            uid,
            f"user-{uid}",
            frozenset(rng.sample(range(1, groups + 1), rng.randint(1, 4))),
            enabled=rng.random() > 0.02,
        )
        for uid in range(1, users + 1)
    )
    policy_specs = tuple(
        PolicySpec(
            pid,
            f"policy-{pid}",
            frozenset(rng.sample(range(1, groups + 1), rng.randint(1, 3))),
            frozenset(rng.sample(range(1, apps + 1), min(apps, rng.randint(1, 10)))),
            require_mfa=rng.random() < 0.2,
            window=OFFICE_HOURS if rng.random() < 0.1 else None,
            enabled=rng.random() > 0.03,
        )
        for pid in range(1, policies + 1)
    )
    devices = tuple(
        ClientDevice(uid, uid, IPv4Address((100 << 24) + (64 << 16) + uid + 1), rng.random() < 0.9)
        for uid in range(1, users + 1)
    )
    return PolicyInputs(user_specs, tuple(app_specs), policy_specs, devices)


def naive_device_tuples(
    inputs: PolicyInputs,
    users: dict[int, UserSpec],
    apps: dict[int, AppSpec],
    device: ClientDevice,
) -> int:
    """Brute force for one device: check every policy and destination directly."""
    user = users.get(device.user_id)
    if user is None or not user.enabled:
        return 0
    spans: dict[tuple[object, str], list[tuple[int, int]]] = defaultdict(list)
    for policy in inputs.policies:
        if not policy.enabled or not policy.group_ids & user.group_ids:
            continue
        if policy.require_mfa and not device.mfa:
            continue
        if policy.window is not None and not policy.window.contains(NOW):
            continue
        for app_id in policy.app_ids:
            app = apps.get(app_id)
            if app is None:
                continue
            for dest in app.destinations:
                ranges = spans[(dest.prefix, dest.protocol)]
                if dest.ports:
                    ranges.extend((r.first, r.last) for r in dest.ports)
                else:
                    ranges.append((0, 65535))
    return sum(len(merge_port_ranges(r)) for r in spans.values())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--apps", type=int, default=1_000)
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--policies", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--naive-budget", type=float, default=20.0, help="seconds")
    args = parser.parse_args(argv)

    inputs = make_inputs(args.users, args.apps, args.groups, args.policies, args.seed)

    timings = []
    for _ in range(3):
        started = time.perf_counter()
        compiled = compile_policy(inputs, now=NOW)
        timings.append(time.perf_counter() - started)
    compile_s = statistics.median(timings)
    grants = compiled.policies.values()
    rules = sum(len(g.rules) for g in grants)
    memberships = sum(len(g.sources) for g in grants)
    with_access = len({source for g in grants for source in g.sources})

    # Naive baseline, same inputs. Probe for a quarter of the budget, then
    # either finish all devices or extrapolate from the probe.
    users = {u.id: u for u in inputs.users}
    apps = {a.id: a for a in inputs.apps}
    devices = inputs.devices
    done = 0
    naive_tuples = 0
    started = time.perf_counter()
    while done < len(devices):
        naive_tuples += naive_device_tuples(inputs, users, apps, devices[done])
        done += 1
        elapsed = time.perf_counter() - started
        if elapsed >= args.naive_budget / 4:
            if elapsed / done * len(devices) > args.naive_budget:
                break
            args.naive_budget = float("inf")  # projected to fit: run them all
    naive_measured = time.perf_counter() - started
    naive_s = naive_measured / done * len(devices)
    extrapolated = done < len(devices)

    # Stream the expansion once (never held in memory); cross-check the
    # tuples of the devices the baseline measured.
    sample = {d.address for d in devices[:done]}
    tuples = compiled_sample = 0
    started = time.perf_counter()
    for allow in compiled.expand():
        tuples += 1
        if allow.source in sample:
            compiled_sample += 1
    expand_s = time.perf_counter() - started
    check = "ok" if compiled_sample == naive_tuples else f"MISMATCH {compiled_sample}"
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    naive_label = (
        f"{naive_s:.2f} s (extrapolated from {done} of {len(devices)} devices"
        f" measured in {naive_measured:.1f} s)"
        if extrapolated
        else f"{naive_s:.2f} s (all {len(devices)} devices)"
    )
    rows = [
        (
            "inputs",
            f"{args.users} users, {len(inputs.apps)} apps, {args.groups} groups, "
            f"{args.policies} policies, {len(devices)} devices (seed {args.seed})",
        ),
        (
            "compile time (median of 3)",
            f"{compile_s:.3f} s  [{', '.join(f'{t:.3f}' for t in timings)}]",
        ),
        ("grants (policies in force)", f"{len(compiled.policies)}"),
        ("rules (sum over grants)", f"{rules}"),
        ("source memberships (sum over grants)", f"{memberships}"),
        ("devices with access", f"{with_access}"),
        ("expanded allow tuples", f"{tuples}  (streamed in {expand_s:.2f} s)"),
        ("expanded / (rules + memberships)", f"{tuples / max(1, rules + memberships):.1f}x"),
        ("naive per-device evaluation", naive_label),
        ("naive / compile", f"{naive_s / compile_s:.1f}x"),
        ("peak RSS of the whole run", f"{peak_mb:.0f} MB"),
        ("cross-check on measured devices", f"{check} ({naive_tuples} tuples)"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'policy compile benchmark':<{width}}  value")
    print(f"{'-' * width}  {'-' * 40}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0 if check == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
