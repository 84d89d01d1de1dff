"""Network namespace primitives on top of iproute2: namespaces, veth pairs,
bridges, addresses, routes, links, and running programs inside a namespace.

Each change is first rendered by a pure ``cmd_*`` function as the argument list
of one ``ip`` command (without the leading ``ip``), then applied either alone
(``ip -n NS ...``) or together with others as one ``ip -batch`` run per
namespace: a whole testbed topology takes a handful of processes.

Errors: a failing ``ip`` command raises :class:`NetnsError`, whose message names
the command, its exit status and ip's own complaint. Names that the kernel or
``ip -batch`` would reject (interface names over 15 characters, whitespace,
slashes) raise ``ValueError`` before anything runs.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

__all__ = [
    "IFNAME_MAX",
    "CommandFailed",
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


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message includes ip's own error output."""


class CommandFailed(subprocess.CalledProcessError):
    """A program run inside a namespace exited non-zero; ``str()`` includes its stderr."""

    def __str__(self) -> str:
        err = self.stderr if isinstance(self.stderr, str) else ""
        out = self.output if isinstance(self.output, str) else ""
        detail = " ".join((err or out).split())[-800:] or "no output"
        return f"'{' '.join(map(str, self.cmd))}' exited with status {self.returncode}: {detail}"


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


def _env() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C"}


def _fail(argv: Sequence[str], returncode: int, output: str) -> NetnsError:
    detail = " ".join(output.split())[-600:] or "no error output"
    return NetnsError(f"'{' '.join(argv)}' failed with exit status {returncode}: {detail}")


def run_ip(args: Sequence[str], ns: str | None = None, *, timeout: float = _IP_TIMEOUT) -> str:
    """Run one ``ip`` command (in ``ns`` when given); return its standard output."""
    return _run_ip_argv(ip_argv(args, ns), None, timeout)


def _run_ip_argv(argv: list[str], stdin: str | None, timeout: float) -> str:
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, env=_env(), timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise NetnsError("the 'ip' program was not found; install the Debian package 'iproute2'") from None
    except subprocess.TimeoutExpired:
        raise NetnsError(f"'{' '.join(argv)}' did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        raise _fail(argv, done.returncode, done.stderr or done.stdout)
    return done.stdout


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
                env=_env(),
            )
            procs.append((argv, proc, stdin))
    except FileNotFoundError as e:
        for _, proc, _ in procs:
            proc.kill()  # our own children, started just above
            proc.wait()
        raise NetnsError(f"{e.filename!r} was not found; install iproute2 and procps") from None
    failures: list[NetnsError] = []
    for argv, proc, stdin in procs:
        try:
            output, _ = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            failures.append(NetnsError(f"'{' '.join(argv)}' did not finish within {timeout:g} s"))
            continue
        if proc.returncode != 0:
            failures.append(_fail(argv, proc.returncode, output))
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
    done = subprocess.run(argv, capture_output=True, env=_env(), timeout=_IP_TIMEOUT, check=False)
    return done.returncode == 0


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

    With ``check`` a non-zero exit raises ``subprocess.CalledProcessError``
    whose message includes the program's error output.
    """
    full = exec_argv(ns, argv)
    done = subprocess.run(
        full,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        env=dict(env) if env is not None else _env(),
        check=False,
    )
    if check and done.returncode != 0:
        raise CommandFailed(done.returncode, full, done.stdout, done.stderr)
    return done
