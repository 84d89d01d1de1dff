"""Benchmark: the data plane -- throughput and round trips, policy apply, change to enforcement.

Run (as root): .venv/bin/python bench/dataplane.py [--seconds S] [--rr-iterations N] [--pings N]
     [--users N] [--apps N] [--groups N] [--policies N] [--seed N] [--changes N]
     [--only throughput|policy|propagation ...]

Needs root (network namespaces), iperf3, wireguard-go, wg, nft, ping and unshare.
Every part has its baselines measured in the same invocation:

1. throughput: client namespace -> gateway -> connector -> app through a real
   zerogate deployment (testbed Lab: controller, gateway, one connector, clients,
   all over wireguard-go), against (a) a direct veth between the same client and
   app namespaces and (b) one plain wireguard-go tunnel over that veth, set up by
   hand with ``wg``. iperf3 TCP single stream for --seconds; a 64-byte TCP
   request/response loop (a Python client and echo server inside the namespaces,
   Nagle off) and ping, as p50/p99.
2. policy apply: the real compiler on the synthetic org of bench/policy_compile.py
   (imported), grants as the controller's snapshot carries them (set elements, cut by
   the controller's ``gateway_grants``), ``render_gateway_nft``,
   then ``nft -f`` of the gateway's replace-table script in a throwaway network
   namespace (``unshare --net``): first load, removing one source as the element
   update the gateway applies, and the same change as a full reload. Baselines: the same renderer for 1% of
   the devices, and one flat set of expanded src . dst . proto . port elements
   loaded for 1% and 5% of the devices and extrapolated to all of them (loading
   millions of interval elements does not fit the time budget).
3. change to enforcement: with the Lab deployed, the app "iperf" is removed from and
   added back to alice's policy --changes times; a poller inside the client
   namespace opens a fresh TCP connection every few milliseconds and timestamps
   when the result flips. Baseline: the controller's own propagation (write ->
   a long-polling watcher holds the new revision), measured on the same writes
   with the watcher of bench/controller_propagation.py (imported).

The run takes about two to three minutes on two cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from _common import Poller, percentile, unwind_on_sigterm
from controller_propagation import GROUP as WATCH_GROUP
from controller_propagation import Watcher, enroll_connector
from policy_compile import NOW, make_inputs

from zerogate.controller.policy_cache import gateway_grants
from zerogate.gateway.plan import render_gateway_nft, render_gateway_table
from zerogate.model.snapshot import GatewayGrant
from zerogate.netops import netns, nftables
from zerogate.netops.command import stop as stop_processes
from zerogate.policy.compiler import CompiledPolicy, PolicyGrant, compile_policy
from zerogate.policy.intervals import disjoint
from zerogate.testbed.lab import Lab, wait_for
from zerogate.testbed.topology import Topology

PARTS = ("throughput", "policy", "propagation")
IPERF_PORT = 5201
RR_PORT = 5202  # echo server: request/response and the propagation poller
MESSAGE = 64  # bytes per request and per response
BENCH_APP = "iperf"  # TCP 5201 (iperf3) and 5202 (echo), ICMP: added to alice's policy
POLICY = "eng-apps"  # alice (client 1) is in group eng
WG_MTU = 1420  # what zerogate's own interfaces use
WG_PORTS = (41001, 41002)
POLL_INTERVAL = 0.005  # seconds between the poller's connection attempts
PROBE_TIMEOUT = 0.3  # a refused connection returns at once; a dropped SYN would wait this long
CHANGE_TIMEOUT = 10.0  # a change that is not enforced within this is an error
FLAT_PERCENTS = (1.0, 5.0)
DAEMON_GRACE = 2.0  # seconds the Lab's daemons get to stop on SIGTERM before SIGKILL
NFT_INTERFACE = "zgbench0"  # the gateway interface name the rendered ruleset matches on

# -- small programs run inside namespaces (standard library only, started with -I) -----------

ECHO_SERVER = r"""
import socket, sys, threading
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])), backlog=256)
def serve(conn):
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

RR_CLIENT = r"""
import json, socket, sys, time
host, port, size, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
limit = float(sys.argv[5])
s = socket.create_connection((host, port), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
msg = b"z" * size
def once():
    s.sendall(msg)
    got = 0
    while got < size:
        chunk = s.recv(size - got)
        if not chunk:
            raise SystemExit("the echo server closed the connection")
        got += len(chunk)
for _ in range(min(50, count)):
    once()
samples = []
deadline = time.monotonic() + limit
while len(samples) < count and time.monotonic() < deadline:
    t = time.perf_counter()
    once()
    samples.append(time.perf_counter() - t)
s.close()
print(json.dumps(samples))
"""

NFT_LOADER = r"""
import json, subprocess, sys, time
results = {}
for step in json.load(open(sys.argv[1])):
    started = time.perf_counter()
    r = subprocess.run(step["argv"], capture_output=True, text=True)
    took = time.perf_counter() - started
    if (r.returncode == 0) != step["expect_ok"]:
        want = "succeed" if step["expect_ok"] else "fail"
        print(json.dumps({"error": f"{step['what']}: expected {' '.join(step['argv'][:3])} to {want}, "
                          f"got exit status {r.returncode}: {r.stderr.strip()[:400]}"}))
        sys.exit(1)
    if step["label"]:
        results[step["label"]] = took
print(json.dumps({"results": results}))
"""


class BenchError(RuntimeError):
    """A measurement could not be made; the message says which and why."""


# -- pure helpers: parsing, rendering, formatting ----------------------------------------------


def parse_iperf(text: str) -> float:
    """Received bits per second from ``iperf3 -J`` output."""
    try:
        data = json.loads(text)
    except ValueError:
        raise BenchError(f"iperf3 printed no JSON: {text.strip()[:300]!r}") from None
    if data.get("error"):
        raise BenchError(f"iperf3 failed: {data['error']}")
    return float(data["end"]["sum_received"]["bits_per_second"])


_PING_TIME = re.compile(r"\btime[=<]([0-9.]+) ms")


def parse_ping(text: str) -> list[float]:
    """Round-trip times in seconds, one per echo reply line of ``ping`` output."""
    return [float(m.group(1)) / 1000 for m in _PING_TIME.finditer(text)]


def snapshot_grants(compiled: CompiledPolicy) -> list[GatewayGrant]:
    """``policy.grants`` exactly as the controller's gateway snapshot carries them
    (the controller's own function: rules cut into disjoint set elements)."""
    return list(gateway_grants(compiled))


def keep_sources(compiled: CompiledPolicy, keep: set[IPv4Address]) -> CompiledPolicy:
    """The same policy restricted to the devices in ``keep`` (their tuples are unchanged)."""
    policies: dict[int, PolicyGrant] = {}
    for pid, g in compiled.policies.items():
        sources = tuple(s for s in g.sources if s in keep)
        if sources:
            policies[pid] = PolicyGrant(g.policy_id, g.name, sources, g.rules)
    return CompiledPolicy(policies, compiled.next_change)


def _ports(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def flat_elements(compiled: CompiledPolicy) -> tuple[list[str], int]:
    """Every allow tuple as one ``src . dst . proto . port`` interval element; (elements, tuples).

    Overlapping destinations of one source are cut apart with the gateway's own
    ``disjoint`` (nftables refuses overlapping interval elements). ICMP and
    "any" match every port value; "any" matches every protocol number.
    """
    elements: list[str] = []
    tuples = 0
    by_proto: dict[str, list[tuple[IPv4Network, int, int]]] = defaultdict(list)
    current: IPv4Address | None = None

    def flush() -> None:
        for proto in ("tcp", "udp"):
            for e in disjoint(by_proto.get(proto, [])):
                elements.extend(
                    f"{current} . {e.address_text()} . {proto} . {_ports(lo, hi)}" for lo, hi in e.ports
                )
        for proto, number in (("icmp", "icmp"), ("any", "0-255")):
            for e in disjoint([(n, 0, 0) for n, _, _ in by_proto.get(proto, [])]):
                elements.append(f"{current} . {e.address_text()} . {number} . 0-65535")
        by_proto.clear()

    for t in compiled.expand():  # sorted by source
        if t.source != current:
            if current is not None:
                flush()
            current = t.source
        tuples += 1
        if isinstance(t.destination, IPv4Network):
            by_proto[t.protocol].append((t.destination, t.first_port, t.last_port))
    if current is not None:
        flush()
    return elements, tuples


_LIVE_RULE = '    ip saddr != @clients drop comment "only live client peers open flows"\n'


def render_flat_nft(interface: str, live_clients: Sequence[str], elements: Sequence[str]) -> str:
    """The gateway's table with the per-grant sets and rules replaced by one flat set and one rule."""
    body = render_gateway_nft(interface, live_clients, [])
    if _LIVE_RULE not in body:
        raise BenchError(
            "render_gateway_nft changed its live-client rule; update _LIVE_RULE in bench/dataplane.py"
        )
    flat_set = (
        "  set allow { type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval;"
        f" elements = {{ {', '.join(elements)} }}; }}\n"
    )
    rule = "    ip saddr . ip daddr . meta l4proto . th dport @allow accept\n"
    return flat_set + body.replace(_LIVE_RULE, _LIVE_RULE + rule)


def count_ruleset(body: str) -> tuple[int, int]:
    """(rules, set elements) in a table body rendered like render_gateway_nft's."""
    rules = elements = 0
    in_chain = False
    for line in body.splitlines():
        word = line.strip()
        if word.startswith("set ") and "elements = {" in word:
            inner = word.split("elements = {", 1)[1].rsplit("}", 2)[0].strip()
            elements += inner.count(",") + 1 if inner else 0
        elif word.startswith("chain "):
            in_chain = True
        elif word == "}":
            in_chain = False
        elif in_chain and word and not word.startswith("type "):
            rules += 1
    return rules, elements


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.3g}x" if a is not None and b else "-"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """First column left-aligned, the others right-aligned, a dashed rule under the header."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        out = [f"{cells[0]:<{widths[0]}}"] + [f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(out).rstrip()

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def print_notes(notes: Iterable[str]) -> None:
    for note in notes:
        print(f"  - {note}")
    print(flush=True)


@dataclass
class Report:
    """Warnings for results that look wrong; errors make the exit status non-zero."""

    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def expect(self, ok: bool, message: str, *, hard: bool = False) -> None:
        if not ok:
            (self.errors if hard else self.warnings).append(message)


# -- part 2: policy apply -------------------------------------------------------------------


@dataclass(frozen=True)
class NftStep:
    what: str
    argv: list[str]
    label: str = ""  # timed when set
    expect_ok: bool = True


def run_nft_steps(steps: Sequence[NftStep], workdir: Path) -> dict[str, float]:
    """Run the steps in order inside a fresh network namespace that vanishes with the loader."""
    plan = workdir / "steps.json"
    plan.write_text(
        json.dumps(
            [{"what": s.what, "argv": s.argv, "label": s.label, "expect_ok": s.expect_ok} for s in steps]
        )
    )
    argv = ["unshare", "--net", "--", sys.executable, "-I", "-c", NFT_LOADER, str(plan)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    try:
        out = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(f"the nft loader failed ({r.returncode}): {r.stderr.strip()[-600:]}") from None
    if "error" in out:
        raise BenchError(str(out["error"]))
    return {str(k): float(v) for k, v in out["results"].items()}


def policy_part(args: argparse.Namespace, report: Report, workdir: Path) -> None:
    started = time.perf_counter()
    inputs = make_inputs(args.users, args.apps, args.groups, args.policies, args.seed)
    t = time.perf_counter()
    compiled = compile_policy(inputs, now=NOW)
    compile_s = time.perf_counter() - t
    live = [str(d.address) for d in inputs.devices]  # every device is a live client peer
    t = time.perf_counter()
    grants = snapshot_grants(compiled)
    grant_elements_s = time.perf_counter() - t
    t = time.perf_counter()
    table_full = render_gateway_table(NFT_INTERFACE, live, grants)
    render_s = time.perf_counter() - t
    body = table_full.text

    # The small change: the lowest policy loses its first source (one user's device).
    changed = next((g for g in sorted(grants, key=lambda g: g.policy_id) if len(g.sources) > 1), None)
    if changed is None:
        raise BenchError("no grant has two sources; raise --users or lower --groups")
    removed = sorted(changed.sources, key=lambda a: IPv4Address(a))[0]
    src_set = f"p{changed.policy_id}_src"
    smaller = [
        g.model_copy(update={"sources": tuple(s for s in g.sources if s != removed)}) if g is changed else g
        for g in grants
    ]
    table2 = render_gateway_table(NFT_INTERFACE, live, smaller)
    body2 = table2.text
    diff = nftables.update_script("inet", nftables.TABLE, table_full, table2)
    if not diff:
        raise BenchError("removing one source did not render as an element update")

    # Baselines on a prefix of the devices: group memberships are random, so a prefix is a fair sample.
    samples: dict[float, CompiledPolicy] = {}
    for pct in sorted({*FLAT_PERCENTS, 1.0}):
        n = max(1, round(len(inputs.devices) * pct / 100))
        samples[pct] = keep_sources(compiled, {d.address for d in inputs.devices[:n]})
    small = samples[1.0]
    small_live = sorted({str(s) for g in small.policies.values() for s in g.sources})
    body_small = render_gateway_nft(NFT_INTERFACE, small_live, snapshot_grants(small))
    flat: dict[float, tuple[str, int, int, int]] = {}  # pct -> (body, elements, tuples, devices)
    for pct in FLAT_PERCENTS:
        flat_els, tuples = flat_elements(samples[pct])
        sample_live = sorted({str(s) for g in samples[pct].policies.values() for s in g.sources})
        flat[pct] = (
            render_flat_nft(NFT_INTERFACE, sample_live, flat_els),
            len(flat_els),
            tuples,
            len(sample_live),
        )
    total_tuples = compiled.count_tuples()

    scripts: dict[str, str] = {
        "full": nftables.replace_table_script("inet", nftables.TABLE, body),
        "full2": nftables.replace_table_script("inet", nftables.TABLE, body2),
        "small": nftables.replace_table_script("inet", nftables.TABLE, body_small),
        **{
            f"flat{pct:g}": nftables.replace_table_script("inet", nftables.TABLE, flat[pct][0])
            for pct in flat
        },
    }
    paths = {}
    for name, text in scripts.items():
        paths[name] = workdir / f"{name}.nft"
        paths[name].write_text(text)
    add = workdir / "diff.nft"
    add.write_text(diff)
    get = ["nft", "get", "element", "inet", nftables.TABLE, src_set, f"{{ {removed} }}"]
    flush = ["nft", "flush", "ruleset"]
    steps = [
        NftStep("first load", ["nft", "-f", str(paths["full"])], "full"),
        NftStep("the source is in its set after the first load", get),
        NftStep("element update", ["nft", "-f", str(add)], "diff"),
        NftStep("the removed source is gone after the element update", get, expect_ok=False),
        NftStep("reload", ["nft", "-f", str(paths["full2"])], "reload"),
        NftStep("the removed source is still gone after the reload", get, expect_ok=False),
        NftStep("empty the namespace", flush),
        NftStep("1% per-grant load", ["nft", "-f", str(paths["small"])], "small"),
    ]
    for pct in flat:
        steps += [
            NftStep("empty the namespace", flush),
            NftStep(f"flat {pct:g}% load", ["nft", "-f", str(paths[f"flat{pct:g}"])], f"flat{pct:g}"),
        ]
    times = run_nft_steps(steps, workdir)
    for path in [*paths.values(), add]:
        path.unlink()

    def mb(text: str) -> str:
        return f"{len(text.encode()) / 1e6:.1f}"

    rules, elements = count_ruleset(body)
    rules2, elements2 = count_ruleset(body2)
    rules_s, elements_s = count_ruleset(body_small)
    rows = [
        [
            f"per-grant table, {args.users} users x {args.apps} apps: first load",
            f"{times['full']:.3f}",
            str(rules),
            str(elements),
            mb(scripts["full"]),
        ],
        [
            "  same table, the same change as a full reload (rule changes still do this)",
            f"{times['reload']:.3f}",
            str(rules2),
            str(elements2),
            mb(scripts["full2"]),
        ],
        [
            "  same table, that source removed as an element update (the gateway now)",
            f"{times['diff']:.3f}",
            "-",
            "1",
            f"{len(diff.encode()) / 1e6:.4f}",
        ],
        [
            f"baseline: per-grant table, 1% of devices ({len(small_live)})",
            f"{times['small']:.3f}",
            str(rules_s),
            str(elements_s),
            mb(scripts["small"]),
        ],
    ]
    biggest = max(flat)
    for pct in sorted(flat):
        text, n_el, _, devices = flat[pct]
        r, e = count_ruleset(text)
        rows.append(
            [
                f"baseline: one flat set, {pct:g}% of devices ({devices})",
                f"{times[f'flat{pct:g}']:.3f}",
                str(r),
                str(e),
                mb(scripts[f"flat{pct:g}"]),
            ]
        )
        report.expect(  # the table's elements: the flat set plus the live-clients set
            e == n_el + devices,
            f"flat set {pct:g}%: rendered {e} elements, built {n_el} + {devices}",
            hard=True,
        )
    _, big_elements, big_tuples, _ = flat[biggest]
    per_element = {pct: times[f"flat{pct:g}"] / max(1, flat[pct][1]) for pct in flat}
    est_elements = round(total_tuples * big_elements / max(1, big_tuples))
    est_seconds = per_element[biggest] * est_elements
    rows.append(
        [
            f"baseline: one flat set, all devices (linear from {biggest:g}%)",
            f"~{est_seconds:.1f}",
            "-",
            f"~{est_elements}",
            "-",
        ]
    )

    print_table(
        ["policy apply: nft -f in a private namespace", "seconds", "rules", "set elements", "MB"], rows
    )
    full_s = times["full"]
    report.expect(
        full_s > 0 and times["reload"] > 0 and times["diff"] > 0, "nft load times must be positive", hard=True
    )
    report.expect(
        times["small"] < full_s,
        f"the 1% table ({times['small']:.3f} s) did not load faster than the full one ({full_s:.3f} s)",
    )
    report.expect(
        est_seconds > full_s,
        f"the flat set for all devices (~{est_seconds:.1f} s) would load faster than the per-grant table",
    )
    marginal = (full_s - times["small"]) / max(1, elements - elements_s)
    growth = ", ".join(f"{per_element[p] * 1e6:.0f} us at {p:g}%" for p in sorted(flat))
    print_notes(
        [
            f"inputs: policy_compile.make_inputs(users={args.users}, apps={args.apps}, groups={args.groups}, "
            f"policies={args.policies}, seed={args.seed}); real compiler {compile_s:.2f} s, "
            f"{len(grants)} grants; their set elements (controller, once per revision) {grant_elements_s:.2f} s; "
            f"render_gateway_nft {render_s:.2f} s",
            "seconds = wall time of 'nft -f' of the replace-table script the gateway applies "
            "(parse, netlink, kernel commit) in a namespace of its own; 'rules' counts every rule of the "
            "table, the chains' "
            "fixed ones included; 'set elements' counts the live-clients set too",
            "element update = what the gateway applies when only who may connect changed (sources, live "
            "clients): nftables.update_script's deletes/adds in one transaction; full reload = what a change "
            "of rules or destinations still costs (the whole table replaced in one transaction)",
            "per-grant at 1% of the devices: the per-policy sets and rules dominate, sources are cheap: "
            f"{marginal * 1e6:.1f} us per additional source element between 1% and all devices",
            f"flat set: one element per expanded (src . dst . proto . port) tuple, {total_tuples} tuples "
            f"for all devices, too many to load in the time budget; measured at "
            f"{', '.join(f'{p:g}%' for p in sorted(flat))} of the devices ({growth} per element) and "
            f"extrapolated linearly from {biggest:g}%: a lower bound when the cost per element grows "
            "with the set",
            f"whole part took {time.perf_counter() - started:.0f} s",
        ]
    )


# -- part 1 and 3: the Lab ----------------------------------------------------------------------


def wait_listening(topo: Topology, ns: str, port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    def listening() -> bool:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode}; see its log in {topo.tmp}")
        return bool(topo.run(ns, ["ss", "-Hltn", f"sport = :{port}"], check=False).stdout.strip())

    wait_for(listening, 10, f"{what} listening on port {port} in {ns}")


def tcp_connects(topo: Topology, ns: str, host: str, port: int) -> bool:
    script = f"exec 3<>/dev/tcp/{host}/{port}"
    return topo.run(ns, ["timeout", str(PROBE_TIMEOUT), "bash", "-c", script], check=False).returncode == 0


def _link_exists(ns: str, ifname: str) -> Callable[[], bool]:
    return lambda: netns.link_exists(ns, ifname)


@dataclass
class Baselines:
    """A direct veth between the client and app namespaces and a plain wireguard-go tunnel over it."""

    topo: Topology
    client: str = "cl1"
    server: str = "app"
    made: list[tuple[str, str]] = field(default_factory=list)  # (short ns, ifname), deleted in reverse

    @property
    def k(self) -> int:
        return self.topo.index

    @property
    def veth(self) -> tuple[str, str]:
        return f"{self.topo.prefix}bv1", f"{self.topo.prefix}bv2"

    @property
    def wg(self) -> tuple[str, str]:
        # zg{k}<role>: the testbed's sweep removes left-over sockets of this shape after a crash
        return f"{self.topo.prefix}bwa", f"{self.topo.prefix}bwb"

    def direct_addresses(self) -> tuple[str, str]:
        return f"172.30.{self.k}.1", f"172.30.{self.k}.2"

    def wg_addresses(self) -> tuple[str, str]:
        return f"172.31.{self.k}.1", f"172.31.{self.k}.2"

    def up(self) -> None:
        t = self.topo
        a, b = self.veth
        netns.add_veth(a, b, ns=t.ns(self.client), peer_ns=t.ns(self.server))
        self.made.append((self.client, a))  # deleting one end deletes the pair
        for side, ifname, address in zip(
            (self.client, self.server), self.veth, self.direct_addresses(), strict=True
        ):
            netns.add_address(t.ns(side), ifname, f"{address}/30")
            netns.set_link(t.ns(side), ifname, True)
        keys = []
        for _ in range(2):
            private = subprocess.run(
                ["wg", "genkey"], capture_output=True, text=True, check=True
            ).stdout.strip()
            public = subprocess.run(
                ["wg", "pubkey"], input=private, capture_output=True, text=True, check=True
            ).stdout.strip()
            keys.append((private, public))
        env = {k: v for k, v in os.environ.items() if k not in ("WG_PROCESS_FOREGROUND", "LOG_LEVEL")}
        sides = (self.client, self.server)
        for i, side in enumerate(sides):
            ifname, peer = self.wg[i], 1 - i
            r = t.run(side, ["wireguard-go", ifname], check=False, env=env, timeout=30)
            if r.returncode != 0:
                raise BenchError(f"wireguard-go {ifname} in {side} failed: {(r.stderr or r.stdout).strip()}")
            self.made.append((side, ifname))
            wait_for(_link_exists(t.ns(side), ifname), 5, f"{ifname} to appear in {side}")
            key_file = t.tmp / f"{ifname}.key"
            key_file.touch(mode=0o600)
            key_file.write_text(keys[i][0] + "\n")
            t.run(
                side,
                [
                    "wg",
                    "set",
                    ifname,
                    "listen-port",
                    str(WG_PORTS[i]),
                    "private-key",
                    str(key_file),
                    "peer",
                    keys[peer][1],
                    "allowed-ips",
                    f"{self.wg_addresses()[peer]}/32",
                    "endpoint",
                    f"{self.direct_addresses()[peer]}:{WG_PORTS[peer]}",
                ],
            )
            netns.add_address(t.ns(side), ifname, f"{self.wg_addresses()[i]}/30")
            t.run(side, ["ip", "link", "set", "dev", ifname, "mtu", str(WG_MTU), "up"])

    def down(self) -> None:
        """Delete our links, WireGuard first (its wireguard-go exits with it); ignore errors."""
        for side, ifname in reversed(self.made):
            try:
                if netns.link_exists(self.topo.ns(side), ifname):
                    netns.delete_link(self.topo.ns(side), ifname)
            except Exception as e:
                print(f"warning: could not delete {ifname} in {side}: {e}", file=sys.stderr)
        self.made.clear()


@dataclass
class PathResult:
    bits_per_second: float
    rr: list[float]
    ping: list[float]


def measure_path(topo: Topology, host: str, args: argparse.Namespace, what: str) -> PathResult:
    ns = "cl1"
    r = topo.run(ns, ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", host], check=False, timeout=20)
    if r.returncode != 0:  # also completes the WireGuard handshakes before anything is timed
        raise BenchError(f"{what}: {host} does not answer ping from {ns}:\n{r.stdout}{r.stderr}")
    iperf = topo.run(
        ns,
        [
            "iperf3",
            "-c",
            host,
            "-p",
            str(IPERF_PORT),
            "-t",
            str(args.seconds),
            "-J",
            "--connect-timeout",
            "3000",
        ],
        check=False,
        timeout=args.seconds + 30,
    )
    bps = parse_iperf(iperf.stdout)
    limit = max(10.0, args.rr_iterations * 0.01)
    rr = topo.run(
        ns,
        [
            sys.executable,
            "-I",
            "-c",
            RR_CLIENT,
            host,
            str(RR_PORT),
            str(MESSAGE),
            str(args.rr_iterations),
            str(limit),
        ],
        check=False,
        timeout=limit + 20,
    )
    if rr.returncode != 0:
        raise BenchError(f"{what}: request/response client failed: {rr.stderr.strip()[-400:]}")
    samples = [float(x) for x in json.loads(rr.stdout)]
    ping = topo.run(
        ns,
        ["ping", "-n", "-c", str(args.pings), "-i", "0.01", "-W", "1", host],
        check=False,
        timeout=args.pings * 0.05 + 20,
    )
    rtts = parse_ping(ping.stdout)
    if not samples or not rtts:
        raise BenchError(f"{what}: no round trips measured (ping said: {ping.stdout.strip()[-300:]})")
    return PathResult(bps, samples, rtts)


def throughput_part(lab: Lab, args: argparse.Namespace, report: Report) -> None:
    topo = lab.topo
    started = time.perf_counter()
    baselines = Baselines(topo)
    try:
        baselines.up()
        results = {
            "direct": measure_path(topo, baselines.direct_addresses()[1], args, "direct veth"),
            "wg": measure_path(topo, baselines.wg_addresses()[1], args, "plain wireguard-go"),
            "zerogate": measure_path(topo, str(topo.app_address), args, "zerogate"),
        }
    finally:
        baselines.down()

    order = ("zerogate", "direct", "wg")

    def row(name: str, values: dict[str, float], fmt: str) -> list[str]:
        z, d, w = (values[k] for k in order)
        return [name, *(format(values[k], fmt) for k in order), ratio(z, d), ratio(z, w)]

    mbps = {k: r.bits_per_second / 1e6 for k, r in results.items()}
    rows = [row(f"TCP throughput, 1 stream, {args.seconds:g} s (Mbit/s)", mbps, ".0f")]
    for p in (50, 99):
        rows.append(
            row(
                f"TCP {MESSAGE} B request/response p{p} (us)",
                {k: percentile(r.rr, p) * 1e6 for k, r in results.items()},
                ".0f",
            )
        )
    for p in (50, 99):
        rows.append(
            row(f"ping RTT p{p} (us)", {k: percentile(r.ping, p) * 1e6 for k, r in results.items()}, ".0f")
        )
    print_table(["client -> app", "zerogate", "direct veth", "plain wg-go", "zg/direct", "zg/wg-go"], rows)

    for k, r in results.items():
        report.expect(r.bits_per_second > 0, f"{k}: throughput is zero", hard=True)
    rr50 = {k: percentile(r.rr, 50) for k, r in results.items()}
    report.expect(mbps["direct"] > mbps["wg"], "the direct veth was not faster than plain wireguard-go")
    report.expect(mbps["zerogate"] < mbps["direct"], "zerogate was faster than the direct veth: suspicious")
    report.expect(
        rr50["direct"] < rr50["zerogate"], "zerogate round trips were shorter than the direct veth's"
    )
    report.expect(
        rr50["wg"] <= rr50["zerogate"] * 1.1, "zerogate round trips were well below one plain tunnel's"
    )
    print_notes(
        [
            "zerogate path: client ns -wg-> gateway ns (nftables policy) -wg-> connector ns (SNAT) -> "
            "app ns, two wireguard-go hops and two bridges; baselines run between the same client and "
            "app namespaces "
            "over a veth of their own, plain wg-go over that veth (MTU 1420 like zerogate's)",
            f"throughput: iperf3 -t {args.seconds:g}, one TCP stream, receiver's rate; ratios are zerogate / "
            "baseline, so below 1 is slower for throughput and above 1 is slower for round trips",
            f"request/response: one TCP connection, {MESSAGE} B each way, Nagle off, "
            f"{min(len(r.rr) for r in results.values())} timed iterations after 50 warm-up ones "
            "(a Python client: ~10-20 us of the figure is the interpreter, the same on every path)",
            f"ping: {args.pings} echoes 10 ms apart; percentiles are nearest-rank; "
            "on 2 shared cores every wireguard-go hop competes with iperf3 for the CPU",
            f"whole part took {time.perf_counter() - started:.0f} s",
        ]
    )


_APPLIED = re.compile(r"applied revision (\d+): .*\(nft (?:full|elements|unchanged) (\d+) ms\)")


def gateway_nft_ms(log: str, revisions: set[int]) -> list[float]:
    """The gateway's own 'nft -f' time for each of ``revisions`` it logged."""
    return [float(m.group(2)) / 1000 for m in _APPLIED.finditer(log) if int(m.group(1)) in revisions]


def propagation_part(lab: Lab, args: argparse.Namespace, report: Report, base_apps: list[str]) -> None:
    topo, admin = lab.topo, lab.admin
    started = time.perf_counter()
    admin.post("/v1/connector-groups", {"name": WATCH_GROUP, "subnets": ["10.250.0.0/24"]})
    credential = enroll_connector(lab.controller, admin)
    watcher: Watcher | None = None
    poller: Poller | None = None
    writes: list[float] = []
    watched: list[float] = []
    cut: list[float] = []
    restored: list[float] = []
    revisions: set[int] = set()
    try:
        deadline = time.monotonic() + CHANGE_TIMEOUT
        revision = int(admin.get("/v1/health")["revision"])
        watcher = Watcher(lab.controller, credential, revision=-1)
        watcher.start()
        if not watcher.wait_past(revision - 1, deadline):
            raise BenchError(f"the revision watcher never received its first snapshot: {watcher.errors}")
        limit = args.changes * 2 * (CHANGE_TIMEOUT + 1) + 30
        poller = Poller.start(
            topo.ns(lab.client_ns("alice")),
            str(topo.app_address),
            RR_PORT,
            every=POLL_INTERVAL,
            attempt=PROBE_TIMEOUT,
            limit=limit,
        )
        if poller.wait_flip(True, 0.0, CHANGE_TIMEOUT) is None:
            raise BenchError(f"the poller in the client namespace never reached the app {BENCH_APP!r}")
        for i in range(args.changes):
            for up, apps in ((False, base_apps), (True, [*base_apps, BENCH_APP])):
                what = f"change {i + 1} ({'restore' if up else 'cut'})"
                t0, p0 = time.monotonic(), time.perf_counter()
                admin.patch(f"/v1/policies/{POLICY}", {"applications": apps})
                writes.append(time.perf_counter() - p0)
                produced = int(admin.get("/v1/health")["revision"])
                revisions.add(produced)
                end = poller.wait_flip(up, t0, CHANGE_TIMEOUT)
                if end is None:
                    raise BenchError(
                        f"{what}: the client's connections did not {'resume' if up else 'stop'} "
                        f"within {CHANGE_TIMEOUT:g} s"
                    )
                (restored if up else cut).append(end - t0)
                if not watcher.wait_past(produced - 1, time.monotonic() + CHANGE_TIMEOUT):
                    raise BenchError(
                        f"{what}: revision {produced} did not reach the watcher: {watcher.errors}"
                    )
                seen = watcher.first_at_or_after(produced)
                assert seen is not None
                watched.append(seen - p0)
                time.sleep(0.05)  # let the gateway finish logging before the next write
                if poller.state() is not up:
                    raise BenchError(f"{what}: the client's access flipped back by itself")
    finally:
        if poller is not None:
            poller.stop()
        if watcher is not None:
            watcher.close()
    if watcher.errors:
        raise BenchError(f"the revision watcher failed: {watcher.errors}")
    nft_ms = gateway_nft_ms(lab.log("gw"), revisions)

    def row(name: str, samples: list[float]) -> list[str]:
        if not samples:
            return [name, "0", "-", "-", "-"]
        return [
            name,
            str(len(samples)),
            *(f"{v * 1e3:.1f}" for v in (percentile(samples, 50), percentile(samples, 99), max(samples))),
        ]

    rows = [
        row(f"PATCH /v1/policies/{POLICY} (the write alone)", writes),
        row("baseline: write -> revision watcher holds it", watched),
        row("write -> gateway enforces: access cut", cut),
        row("write -> gateway enforces: access restored", restored),
        row("  gateway's own nft -f per apply (its log)", nft_ms),
    ]
    print_table(
        [f"policy change -> effect ({args.changes} changes each way)", "n", "p50 ms", "p99 ms", "max ms"],
        rows,
    )
    both = cut + restored
    report.expect(all(v > 0 for v in both), "a change took effect before it was written", hard=True)
    report.expect(
        statistics.median(both) >= statistics.median(watched) * 0.8,
        "enforcement was faster than the controller's own propagation: the poller or watcher is off",
    )
    report.expect(
        len(nft_ms) >= len(revisions) // 2,
        f"the gateway log shows only {len(nft_ms)} of {len(revisions)} applies",
    )
    print_notes(
        [
            f"each change PATCHes the applications of policy {POLICY} (alice's), removing or adding the "
            f"app {BENCH_APP!r} (TCP {IPERF_PORT},{RR_PORT} + ICMP); the gateway follows the snapshot "
            "by long-poll",
            f"enforcement: a poller inside alice's namespace opens a fresh TCP connection to port {RR_PORT} "
            f"every {POLL_INTERVAL * 1e3:.0f} ms (refused at once by the gateway's reject when cut); the "
            "figure is write start -> end of the first attempt with the new result, an upper bound within "
            "one interval",
            "baseline: a connector credential long-polls GET /v1/snapshot like "
            "bench/controller_propagation.py (same Watcher class), timed on the same writes: the part of "
            "the delay that is the controller's",
            "percentiles are nearest-rank: below 100 samples p99 is the maximum; whole part took "
            f"{time.perf_counter() - started:.0f} s",
        ]
    )


def stop_daemons(lab: Lab, grace: float) -> None:
    """SIGTERM the Lab's daemons at once; SIGKILL (by PID: our own children) what runs after ``grace``.

    A daemon parked in its snapshot long-poll only notices SIGTERM when the poll
    returns (up to 25 s); its namespace is about to be deleted, so nothing is lost.
    """
    stop_processes(list(lab.daemons.values()), grace)


def delete_links(topo: Topology) -> None:
    """Delete every link but lo in the topology's namespaces (a wireguard-go exits with its interface)."""
    for name in topo.namespaces:
        ns = topo.ns(name)
        try:
            links = json.loads(netns.run_ip(["-j", "link", "show"], ns) or "[]")
        except (netns.NetnsError, ValueError):
            continue
        for link in links:
            ifname = str(link.get("ifname", ""))
            if ifname and ifname != "lo":
                try:
                    netns.delete_link(ns, ifname)
                except netns.NetnsError:
                    pass  # e.g. the peer of a veth already deleted from the other side


def close_lab(lab: Lab, topo: Topology) -> None:
    """Tear the bench's Lab down whatever happened: stop the daemons, delete the links, and
    close the Lab (the controller lives in the root namespace, where the topology's cleanup
    does not reach). A failed step is reported and the next one still runs."""
    steps: list[Callable[[], None]] = [lambda: stop_daemons(lab, DAEMON_GRACE), lambda: delete_links(topo)]
    for step in steps:
        try:
            step()
        except Exception as e:
            print(f"warning: cleanup step failed: {e}", file=sys.stderr)
    lab.close()


def lab_parts(args: argparse.Namespace, report: Report, parts: set[str]) -> None:
    started = time.perf_counter()
    with Topology(clients=2, connectors=1, attacker=False) as topo:
        lab = Lab(topo)
        try:
            iperf = topo.popen("app", ["iperf3", "-s", "-p", str(IPERF_PORT)], log=topo.tmp / "iperf3.log")
            echo = topo.popen(
                "app", [sys.executable, "-I", "-c", ECHO_SERVER, str(RR_PORT)], log=topo.tmp / "echo.log"
            )
            wait_listening(topo, "app", IPERF_PORT, iperf, "iperf3 server")
            wait_listening(topo, "app", RR_PORT, echo, "echo server")
            lab.deploy(connectors=1)
            app = str(topo.app_address)
            lab.admin.post(
                "/v1/applications",
                {
                    "name": BENCH_APP,
                    "connector_group": "site",
                    "destinations": [
                        {"address": f"{app}/32", "protocol": "tcp", "ports": [str(IPERF_PORT), str(RR_PORT)]},
                        {"address": f"{app}/32", "protocol": "icmp"},
                    ],
                },
            )
            base_apps = [a for a in lab.admin.get(f"/v1/policies/{POLICY}")["applications"] if a != BENCH_APP]
            lab.admin.patch(f"/v1/policies/{POLICY}", {"applications": [*base_apps, BENCH_APP]})
            wait_for(
                lambda: tcp_connects(topo, "cl1", app, RR_PORT), 15, f"alice reaching the app {BENCH_APP!r}"
            )
            print(
                f"(lab deployed in {time.perf_counter() - started:.0f} s: topology slot {topo.index}, "
                "controller, gateway, 1 connector, 2 clients)\n",
                flush=True,
            )
            if "throughput" in parts:
                throughput_part(lab, args, report)
            if "propagation" in parts:
                propagation_part(lab, args, report, base_apps)
        except BaseException:
            for role in ("gw", "cn1"):
                print(f"--- {role} log (tail) ---\n{lab.log(role)[-2000:]}", file=sys.stderr)
            raise
        finally:
            close_lab(lab, topo)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each iperf3 run (default 5)")
    parser.add_argument(
        "--rr-iterations",
        type=int,
        default=2000,
        help="timed 64-byte request/response round trips per path (default 2000)",
    )
    parser.add_argument("--pings", type=int, default=200, help="pings per path, 10 ms apart (default 200)")
    parser.add_argument("--users", type=int, default=10_000, help="policy part: users, one device each")
    parser.add_argument("--apps", type=int, default=1_000, help="policy part: applications")
    parser.add_argument("--groups", type=int, default=200, help="policy part: groups (default 200)")
    parser.add_argument("--policies", type=int, default=2_000, help="policy part: policies (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="policy part: generator seed")
    parser.add_argument("--changes", type=int, default=20, help="policy changes each way (default 20)")
    parser.add_argument(
        "--only", action="append", choices=PARTS, default=[], help="run only this part (repeatable)"
    )
    args = parser.parse_args(argv)
    for name in ("seconds", "rr_iterations", "pings", "users", "apps", "groups", "policies", "changes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if os.geteuid() != 0:
        print("error: the data-plane benchmark creates network namespaces; run it as root", file=sys.stderr)
        return 2
    parts = set(args.only or PARTS)
    unwind_on_sigterm()
    report = Report()
    began = time.perf_counter()
    try:
        if "policy" in parts:
            with tempfile.TemporaryDirectory(prefix="zg-bench-dataplane-") as tmp:
                policy_part(args, report, Path(tmp))
        if parts & {"throughput", "propagation"}:
            lab_parts(args, report, parts)
    except KeyboardInterrupt:
        print("interrupted; namespaces, processes and temporary files removed", file=sys.stderr)
        return 130
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for w in report.warnings:
        print(f"warning: {w}")
    for message in report.errors:
        print(f"error: {message}")
    verdict = "FAILED" if report.errors else "ok"
    print(
        f"dataplane benchmark: {verdict} in {time.perf_counter() - began:.0f} s "
        f"({len(report.warnings)} warning(s))"
    )
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
