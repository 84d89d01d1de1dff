"""Network namespace primitives on top of iproute2: namespaces, veth pairs,
bridges, addresses, routes, links, and running programs inside a namespace.

Each change is first rendered by a pure ``cmd_*`` function as the argument list
of one ``ip`` command (without the leading ``ip``), then applied either alone
(``ip -n NS ...``) or together with others as one ``ip -batch`` run per
namespace: a whole testbed topology takes a handful of processes.

Errors: a failing ``ip`` command raises :class:`NetnsError` (a
:class:`~zerogate.netops.command.CommandError`), whose message names the
command, its exit status and ip's own complaint; a program run inside a
namespace with ``check`` raises ``CommandError``. Everything runs through
:mod:`zerogate.netops.command` (argv, ``LC_ALL=C``, a timeout). Names that the kernel or
``ip -batch`` would reject (interface names over 15 characters, whitespace,
slashes) raise ``ValueError`` before anything runs.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from zerogate.netops.command import CommandError, command_env, run

__all__ = [
    "IFNAME_MAX",
    "NetnsError",
    "add_address",
    "add_bridge",
    "add_namespace",
    "add_veth",
    "cmd_add_address",
    "cmd_add_bridge",
    "cmd_add_namespace",
    "cmd_add_veth",
    "cmd_delete_link",
    "cmd_delete_namespace",
    "cmd_delete_route",
    "cmd_replace_route",
    "cmd_set_link",
    "cmd_set_master",
    "delete_link",
    "delete_namespace",
    "delete_route",
    "exec_argv",
    "ip_argv",
    "link_exists",
    "list_namespaces",
    "namespace_pids",
    "parse_namespace_list",
    "parse_pids",
    "render_batch",
    "replace_route",
    "run_batch",
    "run_in",
    "run_ip",
    "run_parallel",
    "set_link",
    "set_master",
    "validate_ifname",
    "validate_nsname",
]

IP = "ip"
IFNAME_MAX = 15  # IFNAMSIZ - 1
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_NSNAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_BATCH_WORD = re.compile(r"[^\s\"'\\#]+")
_IP_TIMEOUT = 15.0

Address = IPv4Address | str
Network = IPv4Network | str


class NetnsError(CommandError):
    """An ``ip`` command failed; the message includes ip's own error output."""


# -- names ----------------------------------------------------------------


def validate_ifname(name: str) -> str:
    """Return ``name`` if the kernel accepts it as an interface name, else raise ValueError."""
    if not _IFNAME.fullmatch(name) or name in {".", ".."}:
        raise ValueError(
            f"invalid interface name {name!r}: use 1-{IFNAME_MAX} characters from [A-Za-z0-9_.-]"
        )
    return name


def validate_nsname(name: str) -> str:
    """Return ``name`` if it is a usable namespace name (a file in /run/netns), else raise ValueError."""
    if not _NSNAME.fullmatch(name) or name in {".", ".."}:
        raise ValueError(f"invalid network namespace name {name!r}: use 1-64 characters from [A-Za-z0-9_.-]")
    return name


# -- rendering (pure) -----------------------------------------------------


def cmd_add_namespace(name: str) -> list[str]:
    return ["netns", "add", validate_nsname(name)]


def cmd_delete_namespace(name: str) -> list[str]:
    return ["netns", "delete", validate_nsname(name)]


def cmd_add_veth(name: str, peer: str, *, ns: str | None = None, peer_ns: str | None = None) -> list[str]:
    """A veth pair; each end is created directly in its namespace (None: where ip runs)."""
    argv = ["link", "add", validate_ifname(name)]
    if ns is not None:
        argv += ["netns", validate_nsname(ns)]
    argv += ["type", "veth", "peer", "name", validate_ifname(peer)]
    if peer_ns is not None:
        argv += ["netns", validate_nsname(peer_ns)]
    return argv


def cmd_add_bridge(name: str) -> list[str]:
    # STP is off by default, so ports forward as soon as they are up.
    return ["link", "add", validate_ifname(name), "type", "bridge"]


def cmd_set_master(ifname: str, bridge: str) -> list[str]:
    return ["link", "set", "dev", validate_ifname(ifname), "master", validate_ifname(bridge)]


def cmd_set_link(ifname: str, up: bool) -> list[str]:
    return ["link", "set", "dev", validate_ifname(ifname), "up" if up else "down"]


def cmd_delete_link(ifname: str) -> list[str]:
    return ["link", "delete", "dev", validate_ifname(ifname)]


def cmd_add_address(ifname: str, address: IPv4Interface | str) -> list[str]:
    """``address`` with its prefix length, e.g. ``198.18.7.1/24``."""
    return ["address", "add", str(IPv4Interface(address)), "dev", validate_ifname(ifname)]


def cmd_replace_route(destination: Network, via: Address) -> list[str]:
    return ["route", "replace", str(IPv4Network(destination)), "via", str(IPv4Address(via))]


def cmd_delete_route(destination: Network) -> list[str]:
    return ["route", "delete", str(IPv4Network(destination))]


def ip_argv(args: Sequence[str], ns: str | None = None) -> list[str]:
    """The full command line running ``ip args`` (inside ``ns`` when given)."""
    prefix = [IP] if ns is None else [IP, "-n", validate_nsname(ns)]
    return [*prefix, *args]


def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """The command line running ``argv`` inside namespace ``ns`` (``ip netns exec`` execs it: same PID)."""
    if not argv:
        raise ValueError("exec_argv needs a program to run")
    return [IP, "netns", "exec", validate_nsname(ns), *argv]


def render_batch(commands: Iterable[Sequence[str]]) -> str:
    """The input of ``ip -batch -``: one command per line.

    Words are written unquoted, so words that ip's batch parser would split or
    treat specially (whitespace, quotes, backslash, '#') are refused.
    """
    lines = []
    for command in commands:
        for word in command:
            if not _BATCH_WORD.fullmatch(word):
                raise ValueError(
                    f"cannot put {word!r} into an ip batch: it is empty or has special characters"
                )
        lines.append(" ".join(command))
    return "".join(line + "\n" for line in lines)


def parse_namespace_list(text: str) -> list[str]:
    """Names from ``ip netns list`` output (lines like ``zg7-gw (id: 3)``)."""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def parse_pids(text: str) -> list[int]:
    """PIDs from ``ip netns pids`` output (one per line)."""
    return [int(line) for line in text.split() if line.isdigit()]


# -- applying (I/O) -------------------------------------------------------


def run_ip(args: Sequence[str], ns: str | None = None, *, timeout: float = _IP_TIMEOUT) -> str:
    """Run one ``ip`` command (in ``ns`` when given); return its standard output."""
    return _run_ip_argv(ip_argv(args, ns), None, timeout)


def _run_ip_argv(argv: list[str], stdin: str | None, timeout: float) -> str:
    try:
        return run(argv, input=stdin, timeout=timeout).stdout
    except CommandError as e:
        if e.returncode == 127:
            raise NetnsError(
                argv, 127, "the 'ip' program was not found; install the Debian package 'iproute2'"
            ) from None
        raise NetnsError(argv, e.returncode, e.stderr, e.stdout) from None


def run_batch(
    commands: Sequence[Sequence[str]],
    ns: str | None = None,
    *,
    force: bool = False,
    timeout: float = _IP_TIMEOUT,
) -> None:
    """Run several ``ip`` commands in one process (in ``ns`` when given).

    Without ``force`` the batch stops at the first failing command and raises;
    with ``force`` every command is tried and the errors of all failed ones are
    raised together at the end.
    """
    if not commands:
        return
    argv = ip_argv(["-force", "-batch", "-"] if force else ["-batch", "-"], ns)
    _run_ip_argv(argv, render_batch(commands), timeout)


def run_parallel(jobs: Sequence[tuple[Sequence[str], str | None]], *, timeout: float = _IP_TIMEOUT) -> None:
    """Run several commands (argv, standard input) at the same time; raise for the first that failed.

    Used to configure all namespaces of a topology at once: each job is an
    ``ip -n NS -batch -`` or an ``ip netns exec NS sysctl`` command line.
    """
    procs: list[tuple[Sequence[str], subprocess.Popen[str], str | None]] = []
    try:
        for argv, stdin in jobs:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=command_env(),
            )
            procs.append((argv, proc, stdin))
    except FileNotFoundError as e:
        for _, proc, _ in procs:
            proc.kill()  # our own children, started just above
            proc.wait()
        raise NetnsError([str(e.filename)], 127, "not found; install iproute2 and procps") from None
    failures: list[NetnsError] = []
    for argv, proc, stdin in procs:
        try:
            output, _ = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            failures.append(NetnsError(argv, -1, f"timed out after {timeout:g} s"))
            continue
        if proc.returncode != 0:
            failures.append(NetnsError(argv, proc.returncode, output))
    if failures:
        raise failures[0]


def add_namespace(name: str) -> None:
    run_ip(cmd_add_namespace(name))


def delete_namespace(name: str) -> None:
    run_ip(cmd_delete_namespace(name))


def list_namespaces() -> list[str]:
    return parse_namespace_list(run_ip(["netns", "list"]))


def namespace_pids(name: str) -> list[int]:
    """PIDs of the processes whose network namespace is ``name``."""
    return parse_pids(run_ip(["netns", "pids", validate_nsname(name)]))


def add_veth(name: str, peer: str, *, ns: str | None = None, peer_ns: str | None = None) -> None:
    run_ip(cmd_add_veth(name, peer, ns=ns, peer_ns=peer_ns))


def add_bridge(ns: str | None, name: str) -> None:
    run_ip(cmd_add_bridge(name), ns)


def set_master(ns: str | None, ifname: str, bridge: str) -> None:
    run_ip(cmd_set_master(ifname, bridge), ns)


def set_link(ns: str | None, ifname: str, up: bool) -> None:
    run_ip(cmd_set_link(ifname, up), ns)


def delete_link(ns: str | None, ifname: str) -> None:
    run_ip(cmd_delete_link(ifname), ns)


def link_exists(ns: str | None, ifname: str) -> bool:
    argv = ip_argv(["-o", "link", "show", "dev", validate_ifname(ifname)], ns)
    return run(argv, timeout=_IP_TIMEOUT, check=False).returncode == 0


def add_address(ns: str | None, ifname: str, address: IPv4Interface | str) -> None:
    run_ip(cmd_add_address(ifname, address), ns)


def replace_route(ns: str | None, destination: Network, via: Address) -> None:
    run_ip(cmd_replace_route(destination, via), ns)


def delete_route(ns: str | None, destination: Network, *, missing_ok: bool = True) -> None:
    try:
        run_ip(cmd_delete_route(destination), ns)
    except NetnsError as e:
        if not (missing_ok and "No such process" in str(e)):
            raise


def run_in(
    ns: str,
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside ``ns`` and capture its output as text.

    With ``check`` a non-zero exit raises :class:`CommandError`, whose
    message includes the program's error output.
    """
    return run(exec_argv(ns, argv), check=check, timeout=timeout, input=input, env=env)
